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
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import aiohttp
from yarl import URL

from ..clock import Clock
from ..defaults import DOWNLOAD_BACKOFF
from ..errors import DownloadError, IntegrityError, ResultExpired, connection_trouble
from ..retry import Backoff, parse_retry_after
from .partfile import FileSink, PartFile, ftyp_problem

__all__ = ["Downloaded", "Received", "Sink", "download_file", "download_to"]

log = logging.getLogger(__name__)

# No total limit: a large file on a slow link may take long. A stalled socket
# (nothing read for a minute) is what counts as a timeout, and is resumed.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=60.0)
_EXPIRED = frozenset({403, 404, 410})
_RETRY_STATUSES = frozenset({408, 425, 429})

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_QUERY = re.compile(r"\?[^\s'\"<>]*")


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A file that landed whole at its final path."""

    path: Path
    bytes: int
    sha256: str
    resumed: int  # how many times a Range resume was used
    #: ``guard``: the same bytes were at ``dest`` already (kept; nothing renamed)
    found: bool = False


class _Retry(Exception):
    """Transient trouble: keep the .part, wait, and try again."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, unreachable: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.unreachable = unreachable  # no connection could be made


async def download_file(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    clock: Clock,
    backoff: Backoff | None = None,
    chunk_size: int = 1 << 20,
    fresh: bool = False,
    guard: bool = False,
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

    ``guard=True``: a file at ``dest`` that the caller cannot vouch for is replaced by
    nothing. If it holds the very bytes downloaded it is kept (``found``); else
    :class:`OutputTaken` is raised and the whole ``.part`` is kept (see
    :meth:`PartFile.commit`).
    """
    _check_arguments(session, chunk_size)
    dest = Path(dest)
    try:
        path = dest.with_name(dest.name + ".part")
        part = PartFile.fresh(path, chunk_size) if fresh else await PartFile.open(path, chunk_size)
        sink = FileSink(part, dest, guard=guard)
        got = await _receive(session, url, sink, clock, backoff, chunk_size)
    except OSError as exc:
        # Our own disk (full, read-only, permissions): the caller sees one error family.
        raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}", local=True) from None
    return Downloaded(
        path=dest, bytes=got.bytes, sha256=got.sha256, resumed=got.resumed, found=sink.found
    )


async def download_to(
    session: aiohttp.ClientSession,
    url: str,
    sink: Sink,
    *,
    clock: Clock,
    backoff: Backoff | None = None,
    chunk_size: int = 1 << 20,
) -> Received:
    """Stream ``url`` into ``sink`` (an object upload, say): resumed, verified, committed.

    The same HTTP side as :func:`download_file` (Range resume, statuses,
    ``ftyp`` and length checks), the same errors; the sink decides where bytes
    go and what committing means. ``session`` must carry no credentials.
    """
    _check_arguments(session, chunk_size)
    return await _receive(session, url, sink, clock, backoff, chunk_size)


def _check_arguments(session: aiohttp.ClientSession, chunk_size: int) -> None:
    # Before any I/O.
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    _refuse_credentials(session)


async def _receive(
    session: aiohttp.ClientSession,
    url: str,
    sink: Sink,
    clock: Clock,
    backoff: Backoff | None,
    chunk_size: int,
) -> Received:
    policy = backoff if backoff is not None else DOWNLOAD_BACKOFF
    transfer = _Transfer(session, url, sink, chunk_size)
    try:
        failures = 0
        while True:
            before = sink.size
            try:
                await transfer.attempt()
                break
            except _Retry as trouble:
                # Patience is for trouble that makes no progress: a flaky link
                # that still delivers bytes each time is followed to the end.
                failures = 1 if sink.size > before else failures + 1
                if policy.gives_up(failures):
                    kept = f"; {sink.size} bytes kept for a later resume" if sink.size else ""
                    raise DownloadError(
                        f"{transfer.where}: gave up after {failures} attempts "
                        f"({trouble.reason}){kept}",
                        unreachable=trouble.unreachable,
                    ) from None
                wait = policy.delay(failures, trouble.retry_after)
                log.debug("download %s: %s; retrying in %.1fs", transfer.where, trouble, wait)
                await clock.sleep(wait)
        transfer.verify_complete()
        await sink.commit()
    except (ResultExpired, IntegrityError):
        await sink.discard()
        raise
    except BaseException:
        await sink.keep()
        raise
    return Received(bytes=sink.size, sha256=sink.hexdigest, resumed=transfer.resumed)


class Sink(Protocol):
    """Where a download's bytes go: a ``.part`` file, or an object upload.

    The event loop calls :meth:`add` for each piece received; when it answers
    True (a batch is ready, unless the piece ends the body), :meth:`flush`
    hands the batch on. ``size`` counts every byte received, ``head`` keeps
    the first ones for the MP4 header check.
    """

    @property
    def size(self) -> int: ...

    @property
    def head(self) -> bytes: ...

    @property
    def hexdigest(self) -> str: ...

    def add(self, piece: bytes, where: Callable[[], str]) -> bool: ...

    async def reserve(self, total: int | None) -> None:
        """The body is about to stream (``total`` bytes, if known): take what it needs."""

    async def flush(self) -> None:
        """Hand the ready batch on; may wait for the one before it (or for memory)."""

    async def drain(self) -> None:
        """Wait for every batch handed on; raise the first failure."""

    async def quiesce(self) -> BaseException | None:
        """Wait for batches in flight, whatever their outcome; the first failure, if any."""

    def reset(self) -> None:
        """Start over from byte zero (the server restarted the body)."""

    async def commit(self) -> None:
        """The whole verified body: make it appear at its final name."""

    async def discard(self) -> None:
        """The bytes are worthless (URL gone, not the promised file)."""

    async def keep(self) -> None:
        """Trouble stopped the download: keep what a later resume can use, drop the rest."""


@dataclass(frozen=True, slots=True)
class Received:
    """What a sink got and committed."""

    bytes: int
    sha256: str
    resumed: int


class _Transfer:
    """One URL's HTTP side: requests, status handling, Range bookkeeping."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, part: Sink, chunk_size: int
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
                await self.part.reserve(self.total)
                await self._stream(resp)
        except aiohttp.InvalidURL:
            raise DownloadError(f"{self.where}: not a usable URL") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = _scrub(connection_trouble(exc))
            raise _Retry(
                reason, unreachable=isinstance(exc, aiohttp.ClientConnectorError)
            ) from None
        if self.total is not None and self.part.size < self.total:
            raise _Retry(f"body ended at {self.part.size} of {self.total} bytes")

    async def _stream(self, resp: aiohttp.ClientResponse) -> None:
        """Take the body into the sink, a batch handed on whenever one is ready.

        The last batch stays buffered for the commit. What arrived before trouble
        stays buffered too, and counts: a resume starts after it.
        """
        part = self.part
        received = part.size
        try:
            async for piece in resp.content.iter_chunked(self.chunk_size):
                received += len(piece)
                if self.total is not None and received > self.total:
                    raise IntegrityError(
                        f"{self.where}: more bytes than the announced {self.total}"
                    )
                # A full batch goes on now, unless it ends the body (the commit takes it).
                if part.add(piece, lambda: self.where) and received != self.total:
                    await part.flush()
            await part.drain()
        except BaseException as exc:
            failed = await part.quiesce()
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
        problem = ftyp_problem(self.part.head, size)
        if problem:
            raise IntegrityError(f"{self.where}: {problem}")


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
