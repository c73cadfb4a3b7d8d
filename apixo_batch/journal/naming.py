"""File names of results, and the one registry of which job holds which name.

A job's results are ``<filename>``, ``<stem>-2<.ext>``, ``<stem>-3<.ext>``...
Names are compared case-folded (a case-insensitive file system would put two
names that differ in case into one file). A name held by another job is never
written over: that would lose a paid result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .rows import OutputRow

__all__ = ["FileRegistry", "NameBook", "hold_name", "name_owners", "result_filename"]


def result_filename(filename: str, n: int) -> str:
    """The file of a job's result number ``n`` (from 0): ``x.mp4``, ``x-2.mp4``, ``x-3.mp4``."""
    if n == 0:
        return filename
    stem, dot, suffix = filename.rpartition(".")
    return f"{stem}-{n + 1}.{suffix}" if dot and stem else f"{filename}-{n + 1}"


def hold_name(owners: dict[str, tuple[str, ...]], name: str, job_id: str) -> None:
    """Record in ``owners`` (see :meth:`Journal.file_owners`) that ``job_id`` holds ``name``."""
    key = name.casefold()
    have = owners.get(key, ())
    if job_id not in have:
        owners[key] = (*have, job_id)


def name_owners(rows: Iterable[OutputRow]) -> dict[str, tuple[str, ...]]:
    """{casefolded file name: the jobs it belongs to} from every job's
    :data:`~.rows.OutputRow` (its take's name, its files and earlier takes'): see
    ``Journal.file_owners``."""
    may_land = ("submitted", "succeeded")
    finished = ("done", "expired")
    owners: dict[str, tuple[str, ...]] = {}
    for job_id, name, files, in_file, state, _ in rows:
        if state in may_land or (in_file and state not in finished):
            hold_name(owners, name, job_id)
        for landed in files:
            hold_name(owners, landed, job_id)
    return owners


class FileRegistry:
    """Who holds each file name (see ``Journal.file_owners``), kept up to date as files land."""

    def __init__(self, owners: dict[str, tuple[str, ...]]) -> None:
        self._owners = owners

    def hold(self, name: str, job_id: str) -> None:
        hold_name(self._owners, name, job_id)

    def clashes(self, job_id: str, filename: str, results: int) -> list[tuple[str, str]]:
        """(file, its holder) for each of ``job_id``'s result names that another job holds.

        Both ways: this job's extra results (``<name>-2.mp4``) against other jobs' names,
        and its own name against what other jobs landed (a job ``a-2`` added after job
        ``a`` landed ``a-2.mp4`` as its second result), in this run or an earlier one.
        """
        found: list[tuple[str, str]] = []
        for name in result_names(filename, results):
            others = [o for o in self._owners.get(name.casefold(), ()) if o != job_id]
            if others:
                found.append((name, others[0]))
        return found


class NameBook(Protocol):
    """Names reserved where every runner of a campaign sees them (several runners on a
    journal in PostgreSQL: ``journal/pg/outputs.SharedNames``)."""

    async def reserve(self, job_id: str, names: Iterable[str]) -> list[tuple[str, str]]:
        """Hold ``names`` (the job's own first) for ``job_id``: (name, holder) of each
        one another job holds, and then none is kept."""
        ...


def result_names(filename: str, results: int) -> Iterable[str]:
    """The names of a job's ``results`` results, in order."""
    return (result_filename(filename, n) for n in range(results))
