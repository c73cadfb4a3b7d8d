"""Paid task ids the journal could not record, kept in a side file until it can.

When the journal refuses a paid task's id (its disk full), the submitter writes one
JSON line to ``<journal>.unrecorded``: job id, task id, request type, time. A run's
start-up creates the file while there is room and reserves ``RESERVED`` bytes of disk
for it (``posix_fallocate``: zeros, on blocks the file system has given it), so that
when the disk is full, keeping an id overwrites reserved zeros and needs no new block:
each line is written in place where the zeros begin (``O_DSYNC``, then ``fsync``), and
a reader stops at the first zero byte. 64 KiB hold about 400 ids; past them the file
grows as it can. A side file of an older version (lines appended, no zeros) reads the
same. The next run's start-up adopts every kept id into the journal (the job becomes
``submitted`` with it: followed and downloaded, never submitted again), then removes
the file once the journal holds them durably. A torn line (a crash mid-write) is
ignored.

:func:`adopt_task` is also what ``apixo-batch adopt`` does with a task id an
operator holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import JournalError
from .states import JobState
from .store import Journal

__all__ = [
    "RESERVED",
    "AdoptRefused",
    "Kept",
    "SideFile",
    "adopt_task",
    "adoptable",
    "side_file_of",
]

S = JobState
SUFFIX = ".unrecorded"
#: bytes of disk reserved for the side file at start-up (a kept id takes about 150)
RESERVED = 64 * 1024
_CHUNK = 64 * 1024


class AdoptRefused(JournalError):
    """A task id that cannot be adopted: the job is not in the journal, or has another."""


@dataclass(frozen=True, slots=True)
class Kept:
    """One paid task id kept outside the journal."""

    job_id: str
    task_id: str
    request_type: str
    at: float


def side_file_of(journal: Path) -> Path:
    """Where the ids a journal refused are kept: beside it, ``<journal>.unrecorded``."""
    return journal.with_name(journal.name + SUFFIX)


class SideFile:
    """The side file of one journal (see the module docstring)."""

    def __init__(self, journal: Path) -> None:
        self.path = side_file_of(journal)
        #: an in-memory journal (tests) has no side file: nothing is kept, nothing read
        self.in_memory = journal.name == ":memory:"

    def reserve(self) -> None:
        """Create the file now and reserve its ``RESERVED`` bytes, while there is room
        (best effort: a failure is no news, ``keep`` then grows the file as it can)."""
        if self.in_memory:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size < RESERVED:
                    _allocate(fd, size, RESERVED)
                    os.fsync(fd)
            finally:
                os.close(fd)
            _sync_dir(self.path.parent)

    def keep(self, job_id: str, task_id: str, request_type: str, at: float) -> None:
        """Write one id where the file's reserved zeros begin, durably (``O_DSYNC`` and
        fsync). Raises OSError if the disk refuses even that."""
        line = json.dumps(
            {"job_id": job_id, "task_id": task_id, "request_type": request_type, "at": at},
            ensure_ascii=False,
        )
        # A leading newline ends a line torn by an earlier crash: this one stays whole.
        # JSON escapes every control character, so a line holds no zero byte.
        data = ("\n" + line + "\n").encode()
        if self.in_memory:
            raise OSError(errno.ENOENT, "an in-memory journal has no side file", str(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_DSYNC, 0o644)
        try:
            offset = _end(fd)
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)

    def _data(self) -> bytes:
        """The bytes kept: the file up to its first zero byte (the reserved space)."""
        with self.path.open("rb") as f:
            data = f.read()
        end = data.find(b"\0")
        return data if end < 0 else data[:end]

    def read(self) -> list[Kept]:
        """Every whole line kept, in order; a torn or foreign line is skipped."""
        if self.in_memory:
            return []
        try:
            text = self._data().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        kept: list[Kept] = []
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                item = Kept(
                    str(raw["job_id"]),
                    str(raw["task_id"]),
                    str(raw.get("request_type") or "async"),
                    float(raw.get("at") or 0.0),
                )
            except (ValueError, TypeError, KeyError):
                continue
            if item.job_id and item.task_id:
                kept.append(item)
        return kept

    def empty(self) -> bool:
        """The file is there and keeps no id (nothing but its reserved zeros)."""
        if self.in_memory:
            return False
        try:
            return not self._data().strip()
        except OSError:
            return False

    def remove(self) -> None:
        """Gone (the journal holds its ids durably); its directory entry synced."""
        if self.in_memory:
            return
        self.path.unlink(missing_ok=True)
        _sync_dir(self.path.parent)


def _allocate(fd: int, start: int, end: int) -> None:
    """Bytes ``start`` to ``end`` of the file given blocks, as zeros."""
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        # A file system without fallocate: zeros written are blocks given all the same.
        zeros = bytes(end - start)
        view = memoryview(zeros)
        while view:
            written = os.pwrite(fd, view, start)
            view, start = view[written:], start + written


def _end(fd: int) -> int:
    """Where the next line goes: the file's first zero byte, or its end."""
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return offset
        zero = chunk.find(b"\0")
        if zero >= 0:
            return offset + zero
        offset += len(chunk)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def adoptable(j: Journal, job_id: str, task_id: str) -> bool:
    """True if ``task_id`` may be adopted as ``job_id``'s task, False if the job already
    has it; :class:`AdoptRefused` if the job is not in the journal or already has another
    task id."""
    row = j.get(job_id)
    if row is None:
        raise AdoptRefused(f"job {job_id!r} is not in the journal")
    if row.task_id == task_id:
        return False
    if row.task_id is not None:
        raise AdoptRefused(
            f"job {job_id!r} already has task {row.task_id} ({row.state}); "
            f"task {task_id} was not adopted"
        )
    return True


def adopt_task(j: Journal, job_id: str, task_id: str, request_type: str, now: float) -> bool:
    """Journal ``task_id`` as ``job_id``'s paid task (``submitted``), in the caller's
    transaction. False if the job already has it; :class:`AdoptRefused` if the job is not
    in the journal or already has another task id."""
    if not adoptable(j, job_id, task_id):
        return False
    row = j.get(job_id)
    assert row is not None
    # A job with no task id is queued, submitting, or failed before any task: through
    # `submitting`, as a submit goes, so the task is also in task_history.
    if row.state is S.FAILED:
        j.transition(job_id, S.QUEUED, now, fail_code=None, fail_msg=None)
    if row.state is not S.SUBMITTING:
        j.transition(job_id, S.SUBMITTING, now)
    j.transition(
        job_id,
        S.SUBMITTED,
        now,
        task_id=task_id,
        submitted_at=now,
        request_type=request_type,
        fail_code=None,
        fail_msg=None,
    )
    return True
