"""download_file against a real file host on 127.0.0.1 that truncates, ignores Range, expires."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from apixo_batch.errors import DownloadError, IntegrityError, OutputTaken, ResultExpired
from apixo_batch.outputs.download import Downloaded, download_file
from apixo_batch.outputs.partfile import PartFile
from apixo_batch.retry import Backoff

# A real-looking ftyp box (24 bytes: isom, minor 0x200, compatible isom+iso2).
FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
BODY = FTYP + random.Random(4).randbytes(300_000)
TOKEN = "X-Amz-Signature=s3cr3t-sig-token"
PATH = "/results/task_12345678/video.mp4"
CHUNK = 16 * 1024


@dataclass
class FileHost:
    """A scriptable result file host: answers, truncations and Range support per request."""

    body: bytes = BODY
    ranges: bool = True
    #: cut the body after this many bytes, for the first len(cuts) requests
    cuts: list[int] = field(default_factory=list)
    #: status to answer, per request number (from 1); others get the body
    statuses: dict[int, int] = field(default_factory=dict)
    #: status to answer from this request number on (persistent trouble)
    status_from: tuple[int, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    #: when set, the first response sends this many bytes then waits for `release`
    stall_at: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        number = len(self.seen)
        if "Authorization" in request.headers:
            return web.Response(status=400, text="credentials sent to the file host")
        status = self.statuses.get(number)
        if self.status_from and number >= self.status_from[0]:
            status = self.status_from[1]
        if status is not None:
            return web.Response(status=status, text=f"<html>{status}</html>", headers=self.headers)
        start, code, extra = 0, 200, dict(self.headers)
        wanted = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if self.ranges and wanted:
            start = int(wanted[1])
            if start >= len(self.body):
                return web.Response(
                    status=416, headers={"Content-Range": f"bytes */{len(self.body)}"}
                )
            code = 206
            extra["Content-Range"] = f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
        resp = web.StreamResponse(status=code, headers=extra)
        payload = self.body[start:]
        if self.chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(payload)
        await resp.prepare(request)
        if self.stall_at is not None and number == 1:
            await resp.write(payload[: self.stall_at])
            await self.release.wait()
            return resp
        if number <= len(self.cuts):
            await resp.write(payload[: self.cuts[number - 1]])
            assert request.transport is not None
            request.transport.close()  # drop the connection mid-body
            return resp
        await resp.write(payload)
        return resp


class RecordingClock:
    """A Clock that records every wait and returns at once: retries without real sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return 0.0

    def wall(self) -> float:
        return 1_767_965_610.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


BACKOFF = Backoff(base=1.0, factor=2.0, cap=8.0, jitter=0.0, max_attempts=4)


@pytest.fixture
async def host() -> AsyncIterator[tuple[FileHost, str]]:
    """A FileHost served on 127.0.0.1, and a signed-looking URL to its file."""
    files = FileHost()
    app = web.Application()
    app.router.add_get("/{tail:.*}", files.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield files, str(server.make_url(PATH)) + "?" + TOKEN
    finally:
        files.release.set()
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock()


@dataclass
class Hops:
    """What download_file handed to worker threads: one name per hop, and batch sizes."""

    calls: list[str] = field(default_factory=list)
    #: bytes in each batch written before the commit
    batches: list[int] = field(default_factory=list)


_T = TypeVar("_T")


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Hops:
    """Count the download module's asyncio.to_thread hops (they still run for real)."""
    record = Hops()
    real = asyncio.to_thread

    async def counting(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        name = getattr(func, "__qualname__", "")
        if name.startswith("PartFile."):
            record.calls.append(name.removeprefix("PartFile."))
            if name == "PartFile.write":
                record.batches.append(sum(len(piece) for piece in args[0]))
        return await real(func, *args, **kwargs)

    # download.py calls asyncio.to_thread through the module: patched for this test only.
    monkeypatch.setattr(asyncio, "to_thread", counting)
    return record


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    clock: RecordingClock,
    *,
    fresh: bool = False,
    chunk_size: int = CHUNK,
) -> Downloaded:
    return await download_file(
        session, url, dest, clock=clock, backoff=BACKOFF, chunk_size=chunk_size, fresh=fresh
    )


def _range_start(headers: dict[str, str]) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", headers.get("Range", ""))
    assert match, headers.get("Range")
    return int(match[1])


def _assert_whole(result: Downloaded, dest: Path, body: bytes = BODY) -> None:
    assert result.path == dest
    assert dest.read_bytes() == body
    assert result.bytes == len(body)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert not _part(dest).exists()


# --- the happy path ------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_downloads_whole_file(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """A normal body lands byte-exact at dest with its SHA-256; no .part is left."""
    files, url = host
    dest = tmp_path / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=fresh)
    _assert_whole(result, dest)
    assert result.resumed == 0
    assert clock.sleeps == []
    assert len(files.seen) == 1


async def test_never_sends_authorization(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """No request to the file host carries an Authorization header, resumes included."""
    files, url = host
    files.cuts = [50_000]
    await _get(session, url, tmp_path / "video.mp4", clock)
    assert len(files.seen) == 2
    assert all("Authorization" not in headers for headers in files.seen)


@pytest.mark.parametrize(
    "make_session",
    [
        lambda: aiohttp.ClientSession(headers={"Authorization": "Bearer sk-live-secret"}),
        lambda: aiohttp.ClientSession(headers={"authorization": "Basic dXNlcjpzZWNyZXQ="}),
    ],
    ids=["bearer-header", "lowercase-basic-header"],
)
async def test_session_with_credentials_is_refused(
    host: tuple[FileHost, str], clock: RecordingClock, tmp_path: Path, make_session: object
) -> None:
    """A session that would send credentials is refused before any request."""
    files, url = host
    async with make_session() as credentialed:  # type: ignore[operator]
        with pytest.raises(ValueError, match="credentials"):
            await _get(credentialed, url, tmp_path / "video.mp4", clock)
    assert files.seen == []


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_creates_parent_directories(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """Missing folders on the way to dest are created."""
    _, url = host
    dest = tmp_path / "out" / "spring" / "video.mp4"
    _assert_whole(await _get(session, url, dest, clock, fresh=fresh), dest)


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_overwrites_existing_dest(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """An existing file at dest is replaced (skipping is the caller's decision)."""
    _, url = host
    dest = tmp_path / "video.mp4"
    dest.write_bytes(b"an older, different file")
    _assert_whole(await _get(session, url, dest, clock, fresh=fresh), dest)


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_chunked_body_without_length(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """A chunked body (no Content-Length) is taken whole as the server ends it."""
    files, url = host
    files.chunked = True
    dest = tmp_path / "video.mp4"
    _assert_whole(await _get(session, url, dest, clock, fresh=fresh), dest)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1 << 20])
async def test_any_chunk_size_gives_the_same_file(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    chunk_size: int,
) -> None:
    """The ftyp check and the hash do not depend on where chunks split."""
    files, url = host
    files.body = BODY[:2_000]
    dest = tmp_path / "video.mp4"
    result = await download_file(session, url, dest, clock=clock, chunk_size=chunk_size)
    _assert_whole(result, dest, files.body)


# --- resuming ------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_truncated_transfer_resumes_with_range(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """Dropped twice mid-body, the download resumes from where it stopped, byte-exact."""
    files, url = host
    files.cuts = [70_000, 100_000]
    dest = tmp_path / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=fresh)
    _assert_whole(result, dest)
    assert result.resumed == 2
    first, second = (_range_start(h) for h in files.seen[1:])
    # Bytes still in the client's buffer when the link dropped are fetched again.
    assert 0 < first <= 70_000 and first < second <= first + 100_000
    assert "Range" not in files.seen[0]
    assert all(h.get("Accept-Encoding") == "identity" for h in files.seen)
    assert len(clock.sleeps) == 2  # waited on the injected clock before each resume


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_server_ignoring_range_restarts_from_zero(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """A 200 answer to a Range request restarts the file (and the hash) from byte zero."""
    files, url = host
    files.ranges = False
    files.cuts = [120_000]
    dest = tmp_path / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=fresh)
    _assert_whole(result, dest)
    assert result.resumed == 0
    assert 0 < _range_start(files.seen[1]) <= 120_000


async def test_existing_part_is_rehashed_and_resumed(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A .part left by a crashed run is continued with Range; the hash covers the whole file."""
    files, url = host
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY[:123_457])
    result = await _get(session, url, dest, clock)
    _assert_whole(result, dest)
    assert result.resumed == 1
    assert [h.get("Range") for h in files.seen] == ["bytes=123457-"]


async def test_existing_complete_part_finishes_on_416(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A .part that is already whole (crash before the rename) is verified and renamed."""
    files, url = host
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY)
    result = await _get(session, url, dest, clock)
    _assert_whole(result, dest)
    assert [h.get("Range") for h in files.seen] == [f"bytes={len(BODY)}-"]
    assert result.resumed == 0


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_guarded_dest_with_other_bytes_is_not_written_over(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """``guard``: a file at dest with other bytes is left as it is (OutputTaken); the whole
    verified result waits in its .part, and lands without a new body once dest is free."""
    files, url = host
    dest = tmp_path / "video.mp4"
    dest.write_bytes(b"a hand-made cut")
    with pytest.raises(OutputTaken, match="not written by this campaign"):
        await download_file(
            session, url, dest, clock=clock, backoff=BACKOFF, guard=True, fresh=fresh
        )
    assert dest.read_bytes() == b"a hand-made cut"
    assert _part(dest).read_bytes() == BODY
    dest.unlink()
    result = await download_file(session, url, dest, clock=clock, backoff=BACKOFF, guard=True)
    _assert_whole(result, dest)
    assert files.seen[-1].get("Range") == f"bytes={len(BODY)}-"  # the .part was whole


async def test_guarded_dest_with_the_same_bytes_is_kept_as_found(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """``guard``: the very bytes already at dest (renamed before a crash kept it from the
    journal) are the result: kept, ``found``, no .part left."""
    _, url = host
    dest = tmp_path / "video.mp4"
    dest.write_bytes(BODY)
    result = await download_file(session, url, dest, clock=clock, backoff=BACKOFF, guard=True)
    _assert_whole(result, dest)
    assert result.found


async def test_existing_part_longer_than_file_starts_over(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A .part longer than the file cannot be this file's prefix: start from zero."""
    files, url = host
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY + b"junk")
    _assert_whole(await _get(session, url, dest, clock), dest)
    assert [h.get("Range") for h in files.seen] == [f"bytes={len(BODY) + 4}-", None]


async def test_existing_non_mp4_part_is_not_resumed(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A stale .part that does not start like an MP4 is thrown away, not continued."""
    files, url = host
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(b"<html>an old error page</html>")
    _assert_whole(await _get(session, url, dest, clock), dest)
    assert [h.get("Range") for h in files.seen] == [None]


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_if_range_guards_a_resume_with_the_etag(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """With a strong ETag from the first answer, the resume asks for the same file only."""
    files, url = host
    files.headers = {"ETag": '"v1-abc"'}
    files.cuts = [10_000]
    _assert_whole(
        await _get(session, url, tmp_path / "video.mp4", clock, fresh=fresh), tmp_path / "video.mp4"
    )
    assert files.seen[1].get("If-Range") == '"v1-abc"'


# --- the URL is gone -----------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_url_raises_result_expired(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
    status: int,
) -> None:
    """403/404/410 end at once with ResultExpired naming host and path, never the query."""
    files, url = host
    files.statuses = {1: status}
    dest = tmp_path / "video.mp4"
    with pytest.raises(ResultExpired) as info:
        await _get(session, url, dest, clock, fresh=fresh)
    message = str(info.value)
    assert PATH in message and "127.0.0.1" in message
    assert "s3cr3t" not in message and "?" not in message
    assert not info.value.retryable
    assert not dest.exists() and not _part(dest).exists()
    assert len(files.seen) == 1


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_expired_url_deletes_a_resumable_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """Once the URL is gone, the bytes of a half-done earlier attempt are worthless."""
    files, url = host
    files.statuses = {1: 410}
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY[:1000])
    with pytest.raises(ResultExpired):
        await _get(session, url, dest, clock, fresh=fresh)
    assert not dest.exists() and not _part(dest).exists()


# --- not the promised file ----------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>Access denied</body></html>", id="html"),
        pytest.param(b"", id="empty"),
        pytest.param(FTYP[:6], id="six-bytes"),
        pytest.param(FTYP[:12], id="shorter-than-its-ftyp-box"),
        pytest.param(b"\x00\x00\x00\x00ftypisom" + BODY[16:1000], id="ftyp-size-zero"),
        pytest.param(b"\x7f\xff\xff\xffftypisom" + BODY[16:1000], id="ftyp-size-huge"),
        pytest.param(b"\x00\x00\x00\x18moovisom" + BODY[16:1000], id="moov-first"),
    ],
)
async def test_body_that_is_not_an_mp4_is_integrity_error(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
    body: bytes,
) -> None:
    """An empty, tiny or non-MP4 body raises IntegrityError and leaves nothing on disk."""
    files, url = host
    files.body = body
    dest = tmp_path / "video.mp4"
    with pytest.raises(IntegrityError) as info:
        await _get(session, url, dest, clock, fresh=fresh)
    assert "s3cr3t" not in str(info.value)
    assert not dest.exists() and not _part(dest).exists()
    assert len(files.seen) == 1  # not retried: the host will say the same again


async def test_non_mp4_body_leaves_an_older_dest_alone(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A refused body never replaces what is already at dest."""
    files, url = host
    files.body = b"<html>oops</html>"
    dest = tmp_path / "video.mp4"
    dest.write_bytes(BODY)
    with pytest.raises(IntegrityError):
        await _get(session, url, dest, clock)
    assert dest.read_bytes() == BODY


# --- persistent trouble ---------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_persistent_500_gives_up_after_max_attempts(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """5xx is retried with growing waits, then DownloadError; no empty .part is left."""
    files, url = host
    files.status_from = (1, 500)
    dest = tmp_path / "video.mp4"
    with pytest.raises(DownloadError) as info:
        await _get(session, url, dest, clock, fresh=fresh)
    assert type(info.value) is DownloadError
    assert "s3cr3t" not in str(info.value)
    assert len(files.seen) == BACKOFF.max_attempts
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert not dest.exists() and not _part(dest).exists()


async def test_persistent_500_keeps_an_existing_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """Giving up on server trouble keeps the .part's bytes for a later resume."""
    files, url = host
    files.status_from = (1, 502)
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY[:40_000])
    with pytest.raises(DownloadError, match="40000 bytes kept") as info:
        await _get(session, url, dest, clock)
    assert type(info.value) is DownloadError
    assert _part(dest).read_bytes() == BODY[:40_000]
    assert not dest.exists()


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_persistent_500_after_a_drop_keeps_what_landed(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """Bytes written before the link dropped stay in .part, in order, never at dest."""
    files, url = host
    files.cuts = [40_000]
    files.status_from = (2, 502)
    dest = tmp_path / "video.mp4"
    with pytest.raises(DownloadError):
        await _get(session, url, dest, clock, fresh=fresh)
    kept = _part(dest).read_bytes() if _part(dest).exists() else b""
    assert BODY.startswith(kept) and len(kept) <= 40_000
    assert not dest.exists()


async def test_later_run_resumes_the_kept_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """After giving up, a later call picks up the .part where it stopped."""
    files, url = host
    dest = tmp_path / "video.mp4"
    files.status_from = (1, 503)
    _part(dest).write_bytes(BODY[:40_000])  # what an earlier run kept
    with pytest.raises(DownloadError):
        await _get(session, url, dest, clock)
    files.status_from = None
    result = await _get(session, url, dest, clock)
    _assert_whole(result, dest)
    assert result.resumed == 1
    assert files.seen[-1].get("Range") == "bytes=40000-"


async def test_rate_limit_honours_retry_after(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A 429 waits at least the host's Retry-After, then carries on."""
    files, url = host
    files.statuses = {1: 429}
    files.headers = {"Retry-After": "9"}
    dest = tmp_path / "video.mp4"
    _assert_whole(await _get(session, url, dest, clock), dest)
    assert clock.sleeps == [9.0]


async def test_other_client_error_fails_without_retry(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A 4xx that is neither expiry nor rate limit fails at once with DownloadError."""
    files, url = host
    files.statuses = {1: 401}
    with pytest.raises(DownloadError, match="401"):
        await _get(session, url, tmp_path / "video.mp4", clock)
    assert len(files.seen) == 1


async def test_unreachable_host_gives_up_with_download_error(
    session: aiohttp.ClientSession, clock: RecordingClock, tmp_path: Path
) -> None:
    """Connection refused is transport trouble: retried, then DownloadError without the query."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url(PATH)) + "?" + TOKEN
    await server.close()  # nothing listens there any more
    dest = tmp_path / "video.mp4"
    with pytest.raises(DownloadError) as info:
        await _get(session, url, dest, clock)
    assert "s3cr3t" not in str(info.value)
    assert len(clock.sleeps) == BACKOFF.max_attempts - 1
    assert not _part(dest).exists()


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_cancelled_download_keeps_its_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling mid-body (shutdown) keeps the bytes so far; nothing appears at dest."""
    files, url = host
    files.stall_at = 60_000
    dest = tmp_path / "video.mp4"
    # All but the last partial batch is on disk once this much has landed.
    landed = 60_000 - CHUNK + 1
    loop = asyncio.get_running_loop()
    on_disk = asyncio.Event()
    real_write = PartFile.write

    def write(self: PartFile, pieces: list[bytes]) -> None:  # in the sink's worker thread
        real_write(self, pieces)
        if _part(dest).stat().st_size >= landed:
            loop.call_soon_threadsafe(on_disk.set)

    monkeypatch.setattr(PartFile, "write", write)
    task = asyncio.create_task(_get(session, url, dest, clock, fresh=fresh))
    await asyncio.wait_for(on_disk.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = _part(dest).read_bytes()
    assert BODY.startswith(kept) and landed <= len(kept) <= 60_000
    assert not dest.exists()


async def test_infinite_retry_after_does_not_stall(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """A non-finite Retry-After is ignored: backoff decides the wait."""
    files, url = host
    files.statuses = {1: 503}
    files.headers = {"Retry-After": "inf"}
    dest = tmp_path / "video.mp4"
    _assert_whole(await _get(session, url, dest, clock), dest)
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize("fresh", [False, True], ids=["resumable", "fresh"])
async def test_unwritable_destination_is_download_error(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    fresh: bool,
) -> None:
    """Our own disk refusing (here: the folder is a file) is a DownloadError, not an OSError."""
    _, url = host
    (tmp_path / "out").write_text("a file where a folder should be")
    with pytest.raises(DownloadError, match="cannot write"):
        await _get(session, url, tmp_path / "out" / "video.mp4", clock, fresh=fresh)


# --- fresh results: few hops to the disk --------------------------------------


async def test_fresh_small_file_lands_in_one_hop(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    hops: Hops,
) -> None:
    """A fresh body smaller than chunk_size: mkdir, write, fsync, rename in one thread hop."""
    files, url = host
    dest = tmp_path / "new" / "folder" / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=True, chunk_size=1 << 20)
    _assert_whole(result, dest)
    assert hops.calls == ["commit"]
    assert result.resumed == 0 and len(files.seen) == 1


async def test_resumable_small_file_takes_two_hops(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    hops: Hops,
) -> None:
    """Without fresh: one hop to look for a .part (mkdir included), one to land the file."""
    _, url = host
    dest = tmp_path / "new" / "video.mp4"
    result = await _get(session, url, dest, clock, chunk_size=1 << 20)
    _assert_whole(result, dest)
    assert hops.calls == ["_open_sync", "commit"]


@pytest.mark.parametrize("stale", [1_000, len(BODY) + 100_000], ids=["shorter", "longer"])
@pytest.mark.parametrize("chunk_size", [CHUNK, 1 << 20], ids=["streamed", "one-hop"])
async def test_fresh_overwrites_a_stale_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    stale: int,
    chunk_size: int,
) -> None:
    """A .part in the way of a fresh download is replaced from byte zero, never continued."""
    files, url = host
    dest = tmp_path / "video.mp4"
    # MP4-looking, so a resumable download would have continued it.
    _part(dest).write_bytes((FTYP + b"\xee" * stale)[:stale])
    result = await _get(session, url, dest, clock, fresh=True, chunk_size=chunk_size)
    _assert_whole(result, dest)
    assert [h.get("Range") for h in files.seen] == [None]


async def test_fresh_large_body_streams_through_the_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    hops: Hops,
) -> None:
    """Past chunk_size a fresh body goes to disk batch by batch: bounded memory, same file."""
    files, url = host
    files.body = FTYP + random.Random(5).randbytes(1_000_000)
    chunk = 64 * 1024
    dest = tmp_path / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=True, chunk_size=chunk)
    _assert_whole(result, dest, files.body)
    assert hops.calls[-1] == "commit"
    assert set(hops.calls[:-1]) == {"write"}
    assert len(hops.batches) >= len(files.body) // (2 * chunk)
    assert max(hops.batches) <= 2 * chunk
    assert len(files.body) - sum(hops.batches) <= 2 * chunk  # what the commit wrote


async def test_fresh_truncated_transfer_resumes_from_memory(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    hops: Hops,
) -> None:
    """Bytes buffered before a drop count: the resume asks for the rest, still one hop."""
    files, url = host
    files.cuts = [100_000]
    dest = tmp_path / "video.mp4"
    result = await _get(session, url, dest, clock, fresh=True, chunk_size=1 << 20)
    _assert_whole(result, dest)
    assert result.resumed == 1
    assert "Range" not in files.seen[0]
    assert 0 < _range_start(files.seen[1]) <= 100_000
    assert hops.calls == ["commit"]
    assert len(clock.sleeps) == 1


async def test_fresh_bytes_in_memory_are_kept_on_giving_up(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """Giving up lands the buffered bytes in .part; a later resumable run continues them."""
    files, url = host
    files.cuts = [40_000]
    files.status_from = (2, 502)
    dest = tmp_path / "video.mp4"
    with pytest.raises(DownloadError, match="bytes kept"):
        await _get(session, url, dest, clock, fresh=True, chunk_size=1 << 20)
    kept = _part(dest).read_bytes()
    assert 0 < len(kept) <= 40_000 and BODY.startswith(kept)
    assert not dest.exists()
    files.status_from = None
    result = await _get(session, url, dest, clock)
    _assert_whole(result, dest)
    assert result.resumed == 1
    assert files.seen[-1].get("Range") == f"bytes={len(kept)}-"


async def test_fresh_giving_up_with_nothing_removes_a_stale_part(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
) -> None:
    """Fresh promised the stale .part is worthless: with nothing new to keep, it goes."""
    files, url = host
    files.status_from = (1, 503)
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY[:5_000])
    with pytest.raises(DownloadError) as info:
        await _get(session, url, dest, clock, fresh=True)
    assert "kept" not in str(info.value)
    assert not _part(dest).exists() and not dest.exists()


@pytest.mark.parametrize("chunk_size", [CHUNK, 1 << 20], ids=["streamed", "one-hop"])
async def test_fresh_non_mp4_is_refused_before_any_write(
    host: tuple[FileHost, str],
    session: aiohttp.ClientSession,
    clock: RecordingClock,
    tmp_path: Path,
    hops: Hops,
    chunk_size: int,
) -> None:
    """A long non-MP4 body is refused on its first bytes: no hop, no .part, no dest."""
    files, url = host
    files.body = b"<html>" + b"x" * 600_000 + b"</html>"
    dest = tmp_path / "video.mp4"
    _part(dest).write_bytes(BODY[:5_000])
    with pytest.raises(IntegrityError, match="not an MP4"):
        await _get(session, url, dest, clock, fresh=True, chunk_size=chunk_size)
    assert hops.calls == []
    assert not dest.exists() and not _part(dest).exists()
    assert len(files.seen) == 1
