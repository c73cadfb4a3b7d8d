"""Result files: deterministic MP4 bytes, Range, HEAD, expiry, truncation and 5xx faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from simfixture import SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.simulator import Mp4Content, Simulator
from apixo_batch.simulator.media import BLOCK, RangeNotSatisfiable, mp4_header, parse_range

#: the simulator runs on the loop's time, here virtual (looptime): simulated seconds
#: pass in no real time
pytestmark = pytest.mark.looptime

INP = {"mode": "text-to-video", "prompt": "a lake", "duration": 5, "resolution": "720p"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def finished_urls(http: aiohttp.ClientSession, sim: Simulator, model: str = "wan-2-5") -> Any:
    """Submit one task, finish it, and return its result URLs from a status answer."""
    url = f"{sim.base_url}/generateTask/{model}"
    _, sub, _ = await api_call(http, "POST", url, body={"input": INP})
    task_id = sub["data"]["taskId"]
    sim.finish_now(task_id)
    _, status, _ = await api_call(
        http, "GET", f"{sim.base_url}/statusTask/{model}", params={"taskId": task_id}
    )
    return task_id, json.loads(status["data"]["resultJson"])["resultUrls"]


def test_header_is_a_valid_ftyp_then_mdat_box() -> None:
    """The file starts with an ftyp box (isom) and an mdat box covering the rest."""
    data = Mp4Content(0, "task_x", 0, 4096).read()
    size, kind, major = struct.unpack(">I4s4s", data[:12])
    assert (size, kind, major) == (32, b"ftyp", b"isom")
    assert b"isom" in data[16:32] and b"mp41" in data[16:32]
    mdat_size, mdat = struct.unpack(">I4s", data[32:40])
    assert (mdat_size, mdat) == (4096 - 32, b"mdat")
    assert len(data) == 4096


def test_huge_file_uses_64_bit_mdat_size() -> None:
    """Past 4 GiB the mdat box uses the 64-bit largesize form."""
    size = 5 * 2**30
    head = mp4_header(size)
    assert struct.unpack(">I4sQ", head[32:48]) == (1, b"mdat", size - 32)


def test_any_range_equals_the_slice_of_the_whole() -> None:
    """Bytes produced for any range are exactly that slice of the full file."""
    content = Mp4Content(3, "task_r", 1, 3 * BLOCK + 1234)
    whole = content.read()
    rng = random.Random(1)
    edges = [0, 1, 39, 40, 41, BLOCK + 40, 2 * BLOCK + 40, content.size - 1, content.size]
    cases = [(a, b) for a in edges for b in edges if a <= b]
    for _ in range(50):
        low, high = sorted(rng.sample(range(content.size + 1), 2))
        cases.append((low, high))
    for start, end in cases:
        assert content.read(start, end) == whole[start:end], (start, end)
    assert all(len(c) <= BLOCK for c in content.chunks())


def test_content_is_deterministic_and_distinct() -> None:
    """Same (seed, task, index) gives the same bytes; any change gives others."""
    base = Mp4Content(1, "task_a", 0, 100_000).sha256()
    assert Mp4Content(1, "task_a", 0, 100_000).sha256() == base
    assert Mp4Content(2, "task_a", 0, 100_000).sha256() != base
    assert Mp4Content(1, "task_b", 0, 100_000).sha256() != base
    assert Mp4Content(1, "task_a", 1, 100_000).sha256() != base


def test_tail_of_a_multi_gigabyte_file_is_cheap() -> None:
    """The last bytes of a 3 GiB file come without producing the earlier ones."""
    content = Mp4Content(0, "task_big", 0, 3 * 2**30)
    tail = content.read(content.size - 100, content.size)
    assert len(tail) == 100
    assert tail == content.read(content.size - 200, content.size)[100:]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=900-5000", (900, 1000)),
        ("bytes=5-2", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=abc", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    """Single ranges are honoured; malformed or multiple ranges mean the whole file."""
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    """A range starting at or past the end is unsatisfiable."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


async def test_download_is_byte_exact(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A download's SHA-256 and length equal the simulator's expected values."""
    sim = await simulator(file_size=300_000, results_per_task=2)
    task_id, urls = await finished_urls(http, sim)
    assert len(urls) == 2
    for index, url in enumerate(urls):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "video/mp4"
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert int(resp.headers["Content-Length"]) == 300_000
            body = await resp.read()
        assert hashlib.sha256(body).hexdigest() == sim.expected_sha256(url)
        assert sim.expected_sha256(task_id, index) == sim.expected_sha256(url)
        assert body == sim.expected_bytes(url)
        assert sim.expected_size(url) == len(body) == 300_000
        assert body[4:8] == b"ftyp"
    stats = sim.stats()
    assert stats["file_requests"] == 2 and stats["file_bytes_sent"] == 600_000


async def test_range_requests_answer_206(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """bytes=N-M and bytes=N- answer 206 with Content-Range and exactly those bytes."""
    sim = await simulator(file_size=200_000)
    _, (url,) = await finished_urls(http, sim)
    whole = sim.expected_bytes(url)
    for header, start, end in [
        ("bytes=0-9", 0, 10),
        ("bytes=65530-65560", 65530, 65561),
        ("bytes=150000-", 150000, 200000),
        ("bytes=-100", 199900, 200000),
    ]:
        async with http.get(url, headers={"Range": header}) as resp:
            assert resp.status == 206, header
            assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/200000"
            assert int(resp.headers["Content-Length"]) == end - start
            assert await resp.read() == whole[start:end]


async def test_unsatisfiable_range_answers_416(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A range past the end answers 416 with Content-Range: bytes */size."""
    sim = await simulator(file_size=1000)
    _, (url,) = await finished_urls(http, sim)
    async with http.get(url, headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */1000"


async def test_head_gives_length_without_body(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """HEAD answers the headers of a GET, with no body."""
    sim = await simulator(file_size=5000)
    _, (url,) = await finished_urls(http, sim)
    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "5000"
        assert await resp.read() == b""
    assert sim.stats()["requests"]["HEAD /files"] == {"200": 1}


async def test_expire_now_answers_410(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Once expired, a result URL answers 410 Gone (the status still lists it)."""
    sim = await simulator()
    task_id, (url,) = await finished_urls(http, sim)
    async with http.get(url) as resp:
        assert resp.status == 200
        await resp.read()
    sim.expire_now(task_id)
    async with http.get(url) as resp:
        assert resp.status == 410


async def test_results_expire_after_scaled_expiry(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Result URLs answer 410 expiry_s x time_scale after completion, not before."""
    sim = await simulator(expiry_s=3.0, time_scale=0.1)  # 0.3 real seconds
    _, (url,) = await finished_urls(http, sim)
    async with http.get(url) as resp:
        assert resp.status == 200
        await resp.read()
    await asyncio.sleep(0.35)
    async with http.get(url) as resp:
        assert resp.status == 410
    assert sim.stats()["requests"]["GET /files"] == {"200": 1, "410": 1}


async def test_default_expiry_is_fifteen_days_scaled(simulator: SimulatorFactory) -> None:
    """By default results live 15 days x time_scale after completion."""
    sim = await simulator(time_scale=0.5, duration_override_s=(30.0, 30.0))
    async with aiohttp.ClientSession() as http:
        task_id, _ = await finished_urls(http, sim)
    task = sim.tasks[task_id]
    assert task.expires_at - task.ends_at == pytest.approx(15 * 24 * 3600 * 0.5)


async def test_unknown_or_unfinished_results_answer_404(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Files of unknown tasks, unfinished tasks, failed tasks or bad indexes are 404."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    _, sub, _ = await api_call(
        http, "POST", f"{sim.base_url}/generateTask/wan-2-5", body={"input": INP}
    )
    running = sub["data"]["taskId"]
    _, done_urls = await finished_urls(http, sim)
    bad = {**INP, "prompt": "nsfw please"}
    _, sub, _ = await api_call(
        http, "POST", f"{sim.base_url}/generateTask/wan-2-5", body={"input": bad}
    )
    failed = sub["data"]["taskId"]
    sim.finish_now(failed)
    for url in [
        f"{sim.url}/files/task_nope/0.mp4",
        f"{sim.url}/files/{running}/0.mp4",
        f"{sim.url}/files/{failed}/0.mp4",
        done_urls[0].replace("/0.mp4", "/1.mp4"),
        done_urls[0].replace("/0.mp4", "/0.mov"),
    ]:
        async with http.get(url) as resp:
            assert resp.status == 404, url


async def test_truncated_download_is_seen_by_the_client(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A truncated answer promises the full length, then closes: the client gets an error."""
    sim = await simulator(truncate_rate=1.0, file_size=500_000)
    _, (url,) = await finished_urls(http, sim)
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == 500_000
            async for chunk in resp.content.iter_chunked(65536):
                received += chunk
    assert 0 < len(received) < 500_000
    assert bytes(received) == sim.expected_bytes(url)[: len(received)]
    stats = sim.stats()
    assert stats["faults"]["truncated"] == 1
    assert stats["requests"]["GET /files"] == {"truncated": 1}
    assert stats["file_bytes_sent"] == len(received)


async def test_truncation_applies_to_ranges_too(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A resumed (Range) download can be truncated as well, and resumes byte-exact."""
    sim = await simulator(truncate_rate=1.0, file_size=400_000)
    _, (url,) = await finished_urls(http, sim)
    got = bytearray()
    attempts = 0
    while len(got) < 400_000 and attempts < 200:
        attempts += 1
        headers = {"Range": f"bytes={len(got)}-"} if got else {}
        try:
            async with http.get(url, headers=headers) as resp:
                assert resp.status == (206 if got else 200)
                async for chunk in resp.content.iter_chunked(65536):
                    got += chunk
        except aiohttp.ClientPayloadError:
            continue
    assert hashlib.sha256(bytes(got)).hexdigest() == sim.expected_sha256(url)
    # Every answer of 2+ bytes is cut, so only the last (1-byte) one arrived whole.
    assert attempts > 2
    assert sim.stats()["faults"]["truncated"] == attempts - 1


async def test_file_error_rate_answers_5xx(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """file_error_rate answers the file route with a 5xx."""
    sim = await simulator(file_error_rate=1.0)
    _, (url,) = await finished_urls(http, sim)
    async with http.get(url) as resp:
        assert resp.status in (500, 502, 503)
    assert sum(sim.stats()["faults"].values()) == 1


async def test_files_need_no_key_and_ignore_api_faults(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Result URLs are public: no Authorization, no rpm, no API faults."""
    sim = await simulator(rpm_limit=3)
    _, (url,) = await finished_urls(http, sim)  # spends the 3 requests of the window
    sim.config.error_rate_500 = 1.0
    for _ in range(3):
        async with http.get(url) as resp:
            assert resp.status == 200
            await resp.read()
