"""The ``.part`` file of one download: bytes buffered, written and hashed in worker threads.

Split from :mod:`apixo_batch.outputs.download`, which streams into it: a :class:`PartFile`
holds the bytes not yet written, the file's running SHA-256 and its first bytes
(the MP4 header check), and lands it at its final name only through
:meth:`PartFile.commit` (fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IntegrityError, OutputTaken

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["HEAD", "FileSink", "PartFile", "ftyp_problem", "grow_head"]

log = logging.getLogger(__name__)

#: bytes of a file's start kept for the MP4 header check
HEAD = 8
_WRITEBACK_EVERY = 8 << 20
# An ftyp box holds at least a major brand and a minor version; real ones are
# a few dozen bytes. Anything outside this is not the start of an MP4.
_FTYP_MIN, _FTYP_MAX = 16, 4096


class PartFile:
    """The ``.part`` file, the bytes not yet in it, its running SHA-256 and its first bytes.

    ``size`` counts every byte received (on disk, being written, or still
    buffered); the event loop adds pieces, worker threads write and hash
    them. A fresh part creates its file only when the first batch is written
    (truncating whatever was there), mkdir included.
    """

    def __init__(
        self, path: Path, chunk_size: int, fd: int | None, size: int, hasher: _Hash, head: bytes
    ) -> None:
        self.path = path
        self.size = size
        self.head = head
        self._chunk_size = chunk_size
        self._fd = fd
        self._hasher = hasher
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._written = size  # bytes in the file, all hashed
        self._advised = size
        # Batches are written from a worker thread; closing must never race a write
        # (a closed descriptor's number may already belong to another file).
        self._lock = threading.Lock()
        self._sealed = False  # committed or closed: no more writes
        self._landed = False  # renamed to its final name: the path is no longer ours
        self._broken = False  # a write failed: the file may end mid-batch

    @classmethod
    def fresh(cls, path: Path, chunk_size: int) -> PartFile:
        """A part with nothing on disk yet (no I/O)."""
        return cls(path, chunk_size, None, 0, hashlib.sha256(), b"")

    @classmethod
    async def open(cls, path: Path, chunk_size: int) -> PartFile:
        """Open (creating or continuing) ``path``; an existing one is re-hashed first."""
        return await asyncio.to_thread(cls._open_sync, path, chunk_size)

    @classmethod
    def _open_sync(cls, path: Path, chunk_size: int) -> PartFile:
        hasher = hashlib.sha256()
        size = 0
        head = b""
        try:
            with path.open("rb") as existing:
                while chunk := existing.read(chunk_size):
                    hasher.update(chunk)
                    if len(head) < HEAD:
                        head += chunk[: HEAD - len(head)]
                    size += len(chunk)
        except FileNotFoundError:
            pass
        if size and len(head) >= HEAD and ftyp_problem(head, None):
            # Left by an earlier run but not the start of an MP4: not worth resuming.
            hasher, size, head = hashlib.sha256(), 0, b""
        fd = _open_creating(path, os.O_RDWR | os.O_CREAT)
        try:
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, chunk_size, fd, size, hasher, head)

    @property
    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def add(self, piece: bytes, where: Callable[[], str]) -> bool:
        """Buffer a piece (event loop); True once a batch is ready for :meth:`take`.

        The ftyp box is checked as soon as its first bytes are here, before
        anything is written.
        """
        if len(self.head) < HEAD:
            self.head = grow_head(self.head, piece, where)
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        self.size += len(piece)
        return self._pending_bytes >= self._chunk_size

    def take(self) -> list[bytes]:
        """The buffered pieces, for :meth:`write` (event loop)."""
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        return batch

    def write(self, pieces: list[bytes]) -> None:
        """Write and hash a batch, creating the file if it is not there yet (blocking)."""
        with self._lock:
            if self._sealed:
                raise RuntimeError("the .part file is closed")
            fd = self._fd if self._fd is not None else self._create()
            self._write(fd, pieces)
            if self._written - self._advised >= _WRITEBACK_EVERY:
                self._start_writeback(fd)

    def commit(self, dest: Path, *, guard: bool = False) -> bool:
        """Write what is buffered, fsync, rename over ``dest``, fsync the folder (blocking).

        ``guard``: a file already at ``dest`` is not the journal's (it never recorded this
        name as the job's), so it is replaced by nothing: the same bytes are the job's own
        result renamed before a crash could journal it (kept, the ``.part`` dropped: True);
        other bytes raise :class:`OutputTaken`, the whole ``.part`` kept for a later try.
        False: the ``.part`` became ``dest``."""
        with self._lock:
            if self._sealed:
                raise RuntimeError("the .part file is closed")
            self._sealed = True
            pieces = self.take()
            fd = self._fd if self._fd is not None else self._create()
            try:
                self._write(fd, pieces)
                if self._written != self.size:
                    raise RuntimeError(f"{self._written} bytes written of {self.size}")
                os.fsync(fd)
            finally:
                self._fd = None
                os.close(fd)
        if guard and os.path.lexists(dest):
            if _same_bytes(dest, self.hexdigest, self.size):
                self.path.unlink(missing_ok=True)
                return True
            raise OutputTaken(
                f"{dest} exists and was not written by this campaign (other bytes than the "
                "result); nothing was written over"
            )
        os.replace(self.path, dest)
        self._landed = True
        _fsync_dir(dest.parent)
        return False

    def _create(self) -> int:
        # Lock held. A fresh part's file: whatever an earlier run left is overwritten.
        self._fd = _open_creating(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        return self._fd

    def _write(self, fd: int, pieces: list[bytes]) -> None:
        # Lock held. Bytes counted and hashed are bytes in the file, in order.
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
                self._hasher.update(piece)
                self._written += len(piece)
        except BaseException:
            self._broken = True
            raise

    def _start_writeback(self, fd: int) -> None:
        # Ask the kernel to start writing what we have (and not to keep it
        # cached): the fsync at the end then has little left to wait for.
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            os.posix_fadvise(
                fd, self._advised, self._written - self._advised, os.POSIX_FADV_DONTNEED
            )
        except OSError:
            pass
        self._advised = self._written

    def reset(self) -> None:
        """Start over from byte zero (event loop, no write in flight)."""
        with self._lock:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
            self.take()
            self._hasher = hashlib.sha256()
            self.size = self._written = self._advised = 0
            self.head = b""

    def discard(self) -> None:
        """Close and delete: the bytes are worthless (URL gone, not the promised file)."""
        with self._lock:
            self._sealed = True
            self.take()
            self._close()
        self.path.unlink(missing_ok=True)

    def close_keeping_bytes(self) -> None:
        """Land what is buffered and close, keeping it for a later resume.

        An empty file helps nobody: it is deleted (as is a ``.part`` left by
        an earlier run that a fresh part never got to overwrite, and the one a
        commit that failed left empty: a small file's only write is the commit's,
        and a full disk refuses it after the file was created).
        """
        with self._lock:
            if self._sealed:
                # Committed (or committing) already, or a commit that failed: that one's
                # file is gone only if the disk took none of it (a piece cut short is on
                # disk without being counted in ``_written``).
                empty = not self._landed and self._fd is None and _empty(self.path)
            else:
                self._sealed = True
                pieces = self.take()
                try:
                    if pieces and not self._broken:
                        fd = self._fd if self._fd is not None else self._create()
                        self._write(fd, pieces)
                except OSError as exc:
                    # Keep the caller's exception; what is on disk is still a prefix.
                    log.debug(
                        "cannot keep the last %d bytes of %s: %s", len(pieces), self.path, exc
                    )
                finally:
                    self._close()
                empty = self._written == 0
        if empty:
            self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        # Lock held.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class FileSink:
    """A :class:`PartFile` as a :class:`~apixo_batch.outputs.download.Sink`: batches written and
    hashed in a worker thread, one in flight at most, so the event loop never hashes and
    memory stays at a few chunks; committed by one hop (last batch, fsync, rename)."""

    def __init__(self, part: PartFile, dest: Path, *, guard: bool = False) -> None:
        self._part = part
        self._dest = dest
        self._guard = guard
        #: committed onto the same bytes already at ``dest`` (see :meth:`PartFile.commit`)
        self.found = False
        self._writing: asyncio.Future[None] | None = None

    @property
    def size(self) -> int:
        return self._part.size

    @property
    def head(self) -> bytes:
        return self._part.head

    @property
    def hexdigest(self) -> str:
        return self._part.hexdigest

    def add(self, piece: bytes, where: Callable[[], str]) -> bool:
        return self._part.add(piece, where)

    async def reserve(self, total: int | None) -> None:
        return None  # a file's batches are a few chunks

    async def flush(self) -> None:
        if self._writing is not None:
            # Shielded: cancelling us must not orphan a half-done write.
            await asyncio.shield(self._writing)
        part = self._part
        self._writing = asyncio.ensure_future(asyncio.to_thread(part.write, part.take()))

    async def drain(self) -> None:
        if self._writing is not None:
            await asyncio.shield(self._writing)

    async def quiesce(self) -> BaseException | None:
        writing = self._writing
        if writing is None:
            return None
        if not writing.done():
            await asyncio.wait([writing])
        return None if writing.cancelled() else writing.exception()

    def reset(self) -> None:
        self._part.reset()

    async def commit(self) -> None:
        # One hop: the last batch, fsync, rename, fsync of the folder.
        self.found = await asyncio.to_thread(self._part.commit, self._dest, guard=self._guard)

    async def discard(self) -> None:
        self._part.discard()

    async def keep(self) -> None:
        self._part.close_keeping_bytes()


def _same_bytes(path: Path, sha256: str, size: int) -> bool:
    """``path`` is a regular file of ``size`` bytes whose SHA-256 is ``sha256`` (blocking)."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except OSError:
        return False


def _open_creating(path: Path, flags: int) -> int:
    """``os.open`` with O_CREAT, making missing parent folders first (blocking)."""
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        # Cheaper than a mkdir before every file: folders are usually there already.
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o666)


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False  # not there, or not ours to judge: left as it is


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every platform or filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def grow_head(head: bytes, piece: bytes, where: Callable[[], str]) -> bytes:
    """``head`` with the start of ``piece``, up to :data:`HEAD` bytes; IntegrityError as soon
    as they are there and are not the start of an MP4 (before anything is stored)."""
    head += piece[: HEAD - len(head)]
    problem = ftyp_problem(head, None) if len(head) == HEAD else None
    if problem:
        raise IntegrityError(f"{where()}: {problem}")
    return head


def ftyp_problem(head: bytes, size: int | None) -> str | None:
    """Why ``head`` is not the start of an MP4, or None when it is."""
    if len(head) < HEAD:
        return "empty body" if not head else f"only {len(head)} bytes: not an MP4"
    if head[4:8] != b"ftyp":
        return "not an MP4 (no 'ftyp' box at the start)"
    box = int.from_bytes(head[:4], "big")
    if not _FTYP_MIN <= box <= _FTYP_MAX:
        return f"not an MP4 (implausible 'ftyp' box size {box})"
    if size is not None and box > size:
        return f"only {size} bytes: shorter than its own 'ftyp' box"
    return None
