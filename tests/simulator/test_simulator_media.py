"""The simulator's results are real, playable MP4 files (issue 21): a decoder opens them."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from simfixture import SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.simulator import Simulator
from apixo_batch.simulator.media import BLOCK, Mp4Content, clip_for

av = pytest.importorskip("av", reason="PyAV (the dev extra) decodes the results")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _result(
    http: aiohttp.ClientSession, sim: Simulator, model: str, inp: dict[str, Any]
) -> tuple[str, bytes]:
    _, sub, _ = await api_call(
        http, "POST", f"{sim.base_url}/generateTask/{model}", body={"input": inp}
    )
    task_id = sub["data"]["taskId"]
    sim.finish_now(task_id)
    _, status, _ = await api_call(
        http, "GET", f"{sim.base_url}/statusTask/{model}", params={"taskId": task_id}
    )
    [url] = json.loads(status["data"]["resultJson"])["resultUrls"]
    async with http.get(url) as resp:
        return task_id, await resp.read()


def _boxes(data: bytes) -> list[str]:
    pos, kinds = 0, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        kinds.append(kind.decode())
        pos += size
    assert pos == len(data)  # the boxes cover the file exactly
    return kinds


@pytest.mark.parametrize(
    ("model", "inp", "seconds", "portrait", "square"),
    [
        ("kling-2-6", {"mode": "text-to-video", "duration": 10, "sound": False,
                       "aspect_ratio": "9:16"}, 10, True, False),
        ("kling-2-5-turbo-pro", {"mode": "text-to-video", "duration": 5, "aspect_ratio": "1:1"},
         5, False, True),
        ("wan-2-5", {"mode": "text-to-video", "duration": 5, "resolution": "720p"}, 5, False,
         False),
    ],
    ids=["10s-portrait", "5s-square", "5s-landscape"],
)  # fmt: skip
async def test_a_result_decodes_with_the_requested_duration_and_shape(
    simulator, http: aiohttp.ClientSession, tmp_path: Path, model: str,
    inp: dict[str, Any], seconds: int, portrait: bool, square: bool,
) -> None:  # fmt: skip
    """H.264 in MP4 (ftyp, moov, mdat, then the free box that pads it to the configured
    size): PyAV opens the served file and decodes every frame of the requested length."""
    sim = await simulator(file_size=200_000)
    _, data = await _result(http, sim, model, {**inp, "prompt": "a lake at dawn"})
    assert len(data) == 200_000
    kinds = _boxes(data)
    assert kinds[0] == "ftyp" and "moov" in kinds and "mdat" in kinds and kinds[-1] == "free"
    path = tmp_path / "result.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = sum(1 for _ in container.decode(stream))
        assert container.duration / 1_000_000 == pytest.approx(seconds, abs=0.1)
        width, height = stream.width, stream.height
    assert frames == seconds * 12
    assert (height > width) is portrait and (height == width) is square


async def test_every_result_has_its_own_bytes_and_ranges_still_add_up(
    simulator, http: aiohttp.ClientSession
) -> None:
    """Two tasks of the same input: the same clip, different padding, different sha256;
    any Range of a result is the slice of the whole (resume keeps working)."""
    sim = await simulator(file_size=3 * BLOCK + 777)
    inp = {"mode": "text-to-video", "duration": 5, "sound": False, "prompt": "same"}
    a_id, a = await _result(http, sim, "kling-2-6", inp)
    _, b = await _result(http, sim, "kling-2-6", inp)
    clip = clip_for(inp)
    assert a[: len(clip)] == b[: len(clip)] == clip and a != b
    content = Mp4Content(sim.config.seed, a_id, 0, len(a), clip)
    for start, end in ((0, 10), (len(clip) - 5, len(clip) + 40), (BLOCK, 2 * BLOCK + 3)):
        assert content.read(start, end) == a[start:end]
        async with http.get(
            f"{sim.url}/files/{a_id}/0.mp4", headers={"Range": f"bytes={start}-{end - 1}"}
        ) as resp:
            assert resp.status == 206 and await resp.read() == a[start:end]


async def test_a_size_below_the_clip_keeps_the_exact_size_unplayable(
    simulator, http: aiohttp.ClientSession
) -> None:
    """file_size under the clip's own size: exactly that size, the older ftyp + mdat form."""
    sim = await simulator(file_size=1000)
    _, data = await _result(
        http, sim, "kling-2-6", {"mode": "text-to-video", "duration": 5, "sound": False,
                                 "prompt": "tiny"},
    )  # fmt: skip
    assert len(data) == 1000 and _boxes(data) == ["ftyp", "mdat"]
