"""The files of ``done`` jobs checked against the journal, in an output folder.

:func:`problems` finds, for each ``done`` job, a file gone, files of another total
size than journaled and (``hashed``) a file whose sha256 is not the journaled one.
Without hashing it is one ``stat`` per file (cheap for 100k jobs): what every
``run`` and ``download`` does at start-up. ``verify`` hashes every byte. Both run
off the event loop (the journal's thread, or a thread of their own).

Object storage outputs are not checked (a folder's files only).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..journal import DoneFiles

__all__ = ["Problem", "problems"]

MISSING, SIZE, HASH = "missing", "size", "hash"


@dataclass(frozen=True, slots=True)
class Problem:
    """One ``done`` job's file not on disk as journaled."""

    job_id: str
    path: Path
    #: "missing", "size" or "hash"
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: job {self.job_id}: {self.path}: {self.detail}"


def problems(jobs: Iterable[DoneFiles], folder: Path, *, hashed: bool = False) -> Iterator[Problem]:
    """What is wrong with the files of each ``done`` job in ``jobs``.

    A job's files are stat-ed: any gone is a problem each; if all are there, their
    total size must be the journaled ``bytes`` (one problem, naming the first file);
    then, ``hashed``, each file's sha256 must be the journaled one."""
    for job in jobs:
        if job.files:
            yield from _job(job, folder, hashed=hashed)


def _job(row: DoneFiles, folder: Path, *, hashed: bool) -> list[Problem]:
    found: list[Problem] = []
    total = 0
    paths = [folder / name for name in row.files]
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            why = "not on disk" if isinstance(exc, FileNotFoundError) else exc.strerror
            found.append(Problem(row.id, path, MISSING, why or "cannot be read"))
            continue
        if not stat.S_ISREG(st.st_mode):
            found.append(Problem(row.id, path, MISSING, "not a regular file"))
            continue
        total += st.st_size
    if found:
        return found
    if row.bytes is not None and total != row.bytes:
        what = "" if len(paths) == 1 else f" (with the job's {len(paths) - 1} other file(s))"
        detail = f"{total:,} bytes on disk{what}, {row.bytes:,} journaled"
        return [Problem(row.id, paths[0], SIZE, detail)]
    if hashed:
        for path, want in zip(paths, row.sha256, strict=False):
            try:
                got = _sha256(path)
            except OSError as exc:
                found.append(Problem(row.id, path, MISSING, exc.strerror or "cannot be read"))
                continue
            if got != want:
                found.append(Problem(row.id, path, HASH, "sha256 differs from the journal's"))
    return found


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
