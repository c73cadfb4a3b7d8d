"""Stream one result file to disk: into ``<file>.part``, verified, then renamed.

A file at its final name is always whole (invariant 5): bytes land in
``<dest>.part``, are hashed as they stream, checked against the announced
length and the MP4 ``ftyp`` box, fsynced, and only then renamed over ``dest``.

A dropped connection keeps what arrived and resumes it with an HTTP Range
request; a ``.part`` left by a crashed run is re-hashed and resumed the same
way. Memory stays bounded (a few chunks) whatever the file size.

Disk work runs in worker threads, and as few hops there as possible: the last
batch is written together with the fsync and the rename. A ``fresh`` download
(the caller knows no ``.part`` is worth resuming) does not touch the disk
before the body is in: a file smaller than ``chunk_size`` lands in one hop.

Result URLs live on APIXO's file host, not the API: requests carry no
Authorization header, and a session that would add one is refused. Signed URLs
may hold tokens in their query string, so messages and logs name the URL
without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from .clock import Clock
from .defaults import DOWNLOAD_BACKOFF
from .errors import DownloadError, IntegrityError, ResultExpired
from .retry import Backoff, parse_retry_after

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["Downloaded", "download_file"]

log = logging.getLogger(__name__)

# No total limit: a large file on a slow link may take long. A stalled socket
# (nothing read for a minute) is what counts as a timeout, and is resumed.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=60.0)
_EXPIRED = frozenset({403, 404, 410})
_RETRY_STATUSES = frozenset({408, 425, 429})
# An ftyp box holds at least a major brand and a minor version; real ones are
# a few dozen bytes. Anything outside this is not the start of an MP4.
_FTYP_MIN, _FTYP_MAX = 16, 4096
_HEAD = 8
_WRITEBACK_EVERY = 8 << 20
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_QUERY = re.compile(r"\?[^\s'\"<>]*")


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A file that landed whole at its final path."""

    path: Path
    bytes: int
    sha256: str
    resumed: int  # how many times a Range resume was used


class _Retry(Exception):
    """Transient trouble: keep the .part, wait, and try again."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


async def download_file(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    clock: Clock,
    backoff: Backoff | None = None,
    chunk_size: int = 1 << 20,
    fresh: bool = False,
) -> Downloaded:
    """Download ``url`` to ``dest`` through ``dest.part``; resume, verify, rename atomically.

    Raises :class:`ResultExpired` (403/404/410: the URL is gone) or
    :class:`IntegrityError` (empty, wrong length, not an MP4), both after
    deleting the ``.part``; :class:`DownloadError` once ``backoff`` gives up on
    5xx/429/transport trouble (or at once on another 4xx, or when the disk
    refuses), keeping the ``.part`` for a later resume. Waits run on ``clock``.
    An existing ``dest`` is overwritten. ``session`` must carry no credentials
    (ValueError otherwise): result URLs never get the API key.

    ``fresh=True`` promises that no ``.part`` from an earlier run is worth
    resuming (the result was produced in this very run): nothing is read
    before the request, and a ``.part`` in the way is overwritten, not continued.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    _refuse_credentials(session)
    dest = Path(dest)
    try:
        return await _download(
            session,
            url,
            dest,
            clock,
            backoff if backoff is not None else DOWNLOAD_BACKOFF,
            chunk_size,
            fresh,
        )
    except OSError as exc:
        # Our own disk (full, read-only, permissions): the caller sees one error family.
        raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from None


async def _download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    clock: Clock,
    policy: Backoff,
    chunk_size: int,
    fresh: bool,
) -> Downloaded:
    path = dest.with_name(dest.name + ".part")
    part = _Part.fresh(path, chunk_size) if fresh else await _Part.open(path, chunk_size)
    transfer = _Transfer(session, url, part, chunk_size)
    try:
        failures = 0
        while True:
            before = part.size
            try:
                await transfer.attempt()
                break
            except _Retry as trouble:
                # Patience is for trouble that makes no progress: a flaky link
                # that still delivers bytes each time is followed to the end.
                failures = 1 if part.size > before else failures + 1
                if policy.gives_up(failures):
                    kept = f"; {part.size} bytes kept for a later resume" if part.size else ""
                    raise DownloadError(
                        f"{transfer.where}: gave up after {failures} attempts "
                        f"({trouble.reason}){kept}"
                    ) from None
                wait = policy.delay(failures, trouble.retry_after)
                log.debug("download %s: %s; retrying in %.1fs", transfer.where, trouble, wait)
                await clock.sleep(wait)
        transfer.verify_complete()
        # One hop: the last batch, fsync, rename, fsync of the folder.
        await asyncio.to_thread(part.commit, dest)
    except (ResultExpired, IntegrityError):
        part.discard()
        raise
    except BaseException:
        part.close_keeping_bytes()
        raise
    return Downloaded(path=dest, bytes=part.size, sha256=part.hexdigest, resumed=transfer.resumed)


class _Transfer:
    """One URL's HTTP side: requests, status handling, Range bookkeeping."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, part: _Part, chunk_size: int
    ) -> None:
        self.session = session
        self.url = url
        self.part = part
        self.chunk_size = chunk_size
        self.resumed = 0
        self.total: int | None = None
        # A strong validator from an earlier answer: resume only the same file.
        self.etag: str | None = None

    @cached_property
    def where(self) -> str:
        # Parsing the URL costs more than the rest of a small download's loop work:
        # only messages need it.
        return _describe(self.url)

    async def attempt(self) -> None:
        """One request; returns when the body is complete, raises _Retry on transient trouble."""
        offset = self.part.size
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the file itself
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.etag:
                headers["If-Range"] = self.etag
        try:
            async with self.session.get(self.url, headers=headers, timeout=_TIMEOUT) as resp:
                if not self._start(resp, offset):
                    return
                await self._stream(resp)
        except aiohttp.InvalidURL:
            raise DownloadError(f"{self.where}: not a usable URL") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(f"{type(exc).__name__}: {_scrub(str(exc))}".rstrip(": ")) from None
        if self.total is not None and self.part.size < self.total:
            raise _Retry(f"body ended at {self.part.size} of {self.total} bytes")

    async def _stream(self, resp: aiohttp.ClientResponse) -> None:
        """Take the body into the part: the loop receives while a thread writes and hashes.

        Pieces are buffered until about ``chunk_size`` bytes are there, then
        handed to a thread as one batch, one batch in flight at most, so the
        event loop never hashes and memory stays at a few chunks. The last
        batch stays buffered for the commit. What arrived before trouble stays
        buffered too, and counts: a resume starts after it.
        """
        part = self.part
        received = part.size
        writing: asyncio.Future[None] | None = None
        try:
            async for piece in resp.content.iter_chunked(self.chunk_size):
                received += len(piece)
                if self.total is not None and received > self.total:
                    raise IntegrityError(
                        f"{self.where}: more bytes than the announced {self.total}"
                    )
                # A full batch goes to disk now, unless it ends the body (the commit writes it).
                if part.add(piece, lambda: self.where) and received != self.total:
                    if writing is not None:
                        # Shielded: cancelling us must not orphan a half-done write.
                        await asyncio.shield(writing)
                    writing = asyncio.ensure_future(asyncio.to_thread(part.write, part.take()))
            if writing is not None:
                await asyncio.shield(writing)
        except BaseException as exc:
            await _settle(writing)
            failed = None if writing is None or writing.cancelled() else writing.exception()
            if failed is not None and not isinstance(exc, asyncio.CancelledError):
                raise failed from None  # the disk refusing outranks a dropped connection
            raise

    def _start(self, resp: aiohttp.ClientResponse, offset: int) -> bool:
        """Judge the status line; False when the part already holds the whole file."""
        status = resp.status
        if status in _EXPIRED:
            raise ResultExpired(
                f"result URL expired or gone (HTTP {status}): {self.where}; "
                "the result can no longer be downloaded"
            )
        if status == 416 and offset:
            # Our part is at least as long as the file: whole if the sizes agree.
            _, total = _content_range(resp.headers.get("Content-Range"))
            if total == offset:
                self.total = total
                return False
            self.part.reset()
            raise _Retry(f"range not satisfiable at {offset} bytes; starting over")
        if status == 206 and offset:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                self.part.reset()
                raise _Retry(f"server resumed at byte {start}, not {offset}; starting over")
            length = resp.content_length
            self.total = (
                total if total is not None else (offset + length if length is not None else None)
            )
            self.resumed += 1
        elif status == 200:
            if offset:
                # Range ignored (or the file changed under If-Range): take it from the top.
                self.part.reset()
            self.total = resp.content_length
        elif status in _RETRY_STATUSES or status >= 500:
            raise _Retry(f"HTTP {status}", parse_retry_after(resp.headers.get("Retry-After")))
        else:
            raise DownloadError(f"{self.where}: unexpected HTTP {status}")
        etag = resp.headers.get("ETag")
        self.etag = etag if etag and not etag.startswith("W/") else None
        return True

    def verify_complete(self) -> None:
        """The whole body is here: refuse an empty, short or non-MP4 one."""
        size = self.part.size
        if self.total is not None and size != self.total:
            raise IntegrityError(f"{self.where}: got {size} bytes, expected {self.total}")
        problem = _ftyp_problem(self.part.head, size)
        if problem:
            raise IntegrityError(f"{self.where}: {problem}")


async def _settle(writing: asyncio.Future[None] | None) -> None:
    """Wait until a write in flight has finished, whatever its outcome."""
    if writing is not None and not writing.done():
        await asyncio.wait([writing])


class _Part:
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
        self._broken = False  # a write failed: the file may end mid-batch

    @classmethod
    def fresh(cls, path: Path, chunk_size: int) -> _Part:
        """A part with nothing on disk yet (no I/O)."""
        return cls(path, chunk_size, None, 0, hashlib.sha256(), b"")

    @classmethod
    async def open(cls, path: Path, chunk_size: int) -> _Part:
        """Open (creating or continuing) ``path``; an existing one is re-hashed first."""
        return await asyncio.to_thread(cls._open_sync, path, chunk_size)

    @classmethod
    def _open_sync(cls, path: Path, chunk_size: int) -> _Part:
        hasher = hashlib.sha256()
        size = 0
        head = b""
        try:
            with path.open("rb") as existing:
                while chunk := existing.read(chunk_size):
                    hasher.update(chunk)
                    if len(head) < _HEAD:
                        head += chunk[: _HEAD - len(head)]
                    size += len(chunk)
        except FileNotFoundError:
            pass
        if size and len(head) >= _HEAD and _ftyp_problem(head, None):
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
        if len(self.head) < _HEAD:
            self.head += piece[: _HEAD - len(self.head)]
            problem = _ftyp_problem(self.head, None) if len(self.head) == _HEAD else None
            if problem:
                raise IntegrityError(f"{where()}: {problem}")
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

    def commit(self, dest: Path) -> None:
        """Write what is buffered, fsync, rename over ``dest``, fsync the folder (blocking)."""
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
        os.replace(self.path, dest)
        _fsync_dir(dest.parent)

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
        an earlier run that a fresh part never got to overwrite).
        """
        with self._lock:
            if self._sealed:
                return  # committed (or committing) already
            self._sealed = True
            pieces = self.take()
            try:
                if pieces and not self._broken:
                    self._write(self._fd if self._fd is not None else self._create(), pieces)
            except OSError as exc:
                # Keep the caller's exception; what is on disk is still a prefix.
                log.debug("cannot keep the last %d bytes of %s: %s", len(pieces), self.path, exc)
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


def _ftyp_problem(head: bytes, size: int | None) -> str | None:
    """Why ``head`` is not the start of an MP4, or None when it is."""
    if len(head) < _HEAD:
        return "empty body" if not head else f"only {len(head)} bytes: not an MP4"
    if head[4:8] != b"ftyp":
        return "not an MP4 (no 'ftyp' box at the start)"
    box = int.from_bytes(head[:4], "big")
    if not _FTYP_MIN <= box <= _FTYP_MAX:
        return f"not an MP4 (implausible 'ftyp' box size {box})"
    if size is not None and box > size:
        return f"only {size} bytes: shorter than its own 'ftyp' box"
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range``; None for what it does not say."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start, _, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _describe(url: str) -> str:
    """The URL without query, fragment or user info: safe to print and log."""
    try:
        return str(URL(url).with_query(None).with_fragment(None).with_user(None))
    except (TypeError, ValueError):
        return "<unparsable URL>"


def _scrub(text: str) -> str:
    # aiohttp messages may quote the URL; its query string may hold a signature.
    return _QUERY.sub("?…", text)


def _refuse_credentials(session: aiohttp.ClientSession) -> None:
    if "Authorization" in session.headers or session.auth is not None:
        raise ValueError(
            "the download session carries credentials; result files must be "
            "fetched without the API key (use a separate session)"
        )


def _open_creating(path: Path, flags: int) -> int:
    """``os.open`` with O_CREAT, making missing parent folders first (blocking)."""
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        # Cheaper than a mkdir before every file: folders are usually there already.
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o666)


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
