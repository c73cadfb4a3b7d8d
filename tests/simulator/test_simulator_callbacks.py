"""Callback mode: delivery of the status-shaped payload, retries, and the misbehaviour knobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from simfixture import SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.apixo.client import parse_task_payload
from apixo_batch.simulator import Simulator

#: the simulator runs on the loop's time, here virtual (looptime): simulated seconds
#: pass in no real time
pytestmark = pytest.mark.looptime

INP = {"mode": "text-to-video", "prompt": "a lake", "duration": 5, "sound": True}


@dataclass
class Receiver:
    """A callback endpoint on 127.0.0.1 that answers from a script and records what came."""

    url: str = ""
    #: HTTP status per attempt, in order; the last one repeats
    script: list[int] = field(default_factory=lambda: [200])
    #: seconds to wait before answering, per attempt (last repeats)
    delays: list[float] = field(default_factory=lambda: [0.0])
    bodies: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        n = len(self.bodies)
        self.times.append(asyncio.get_running_loop().time())
        self.bodies.append(json.loads(await request.read()))
        await asyncio.sleep(self.delays[min(n, len(self.delays) - 1)])
        return web.Response(status=self.script[min(n, len(self.script) - 1)])


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Any]]:
    """Factory of callback receivers, stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(**kwargs: Any) -> Receiver:
        rec = Receiver(**kwargs)
        app = web.Application()
        app.router.add_post("/hook/secret-token", rec.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/secret-token"
        return rec

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit_callback(
    http: aiohttp.ClientSession, sim: Simulator, url: str, inp: dict[str, Any] = INP
) -> str:
    body = {"request_type": "callback", "callback_url": url, "input": inp}
    code, answer, _ = await api_call(
        http, "POST", f"{sim.base_url}/generateTask/kling-2-6", body=body
    )
    assert code == 200
    task_id: str = answer["data"]["taskId"]
    return task_id


async def test_callback_delivers_the_status_shaped_payload(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """When the task ends its callback_url receives exactly what a status call answers."""
    sim = await simulator(duration_override_s=(0.05, 0.05))
    rec = await receiver()
    task_id = await submit_callback(http, sim, rec.url)
    await asyncio.sleep(0.08)
    await sim.drain_callbacks()
    assert len(rec.bodies) == 1
    _, status, _ = await api_call(
        http, "GET", f"{sim.base_url}/statusTask/kling-2-6", params={"taskId": task_id}
    )
    assert rec.bodies[0] == status
    assert rec.bodies[0]["data"]["state"] == "success"
    assert parse_task_payload(rec.bodies[0]).result_urls
    stats = sim.stats()
    assert (stats["callbacks_attempted"], stats["callbacks_delivered"]) == (1, 1)
    assert stats["callbacks_failed"] == 0


async def test_failed_task_callback_carries_fail_code(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """A failed task's callback has state failed, failCode and failMsg."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    rec = await receiver()
    task_id = await submit_callback(http, sim, rec.url, {**INP, "prompt": "nsfw thing"})
    sim.finish_now(task_id)
    await sim.drain_callbacks()
    data = rec.bodies[0]["data"]
    assert data["state"] == "failed"
    assert data["failCode"] == "SensitiveContentDetected"
    assert set(data) == {"taskId", "state", "failCode", "failMsg", "createTime", "completeTime"}


async def test_async_mode_sends_no_callback(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """request_type async never calls back, even with a callback_url in the body."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    rec = await receiver()
    body = {"request_type": "async", "callback_url": rec.url, "input": INP}
    _, answer, _ = await api_call(http, "POST", f"{sim.base_url}/generateTask/kling-2-6", body=body)
    sim.finish_now(answer["data"]["taskId"])
    await sim.drain_callbacks()
    assert rec.bodies == []
    assert sim.stats()["callbacks_attempted"] == 0


async def test_receiver_errors_are_retried_until_200(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """A non-2xx answer is retried; delivery counts once, attempts count each try."""
    sim = await simulator(time_scale=0.001, duration_override_s=(30.0, 30.0))
    rec = await receiver(script=[500, 503, 200])
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert len(rec.bodies) == 3
    assert rec.bodies[0] == rec.bodies[2]
    stats = sim.stats()
    assert stats["callbacks_attempted"] == 3
    assert stats["callbacks_delivered"] == 1
    assert stats["callbacks_failed"] == 0


async def test_gives_up_after_retries_with_growing_delays(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """A receiver that always fails gets 1 + callback_retries attempts, spaced ever wider."""
    sim = await simulator(time_scale=0.01, duration_override_s=(30.0, 30.0))
    rec = await receiver(script=[500])
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert len(rec.bodies) == 4
    gaps = [b - a for a, b in zip(rec.times, rec.times[1:], strict=False)]
    # The webhooks page's first retry comes after 30 s, then 60 and 120 (x 0.01 here).
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 1.2
    assert gaps[0] < gaps[1] < gaps[2]
    stats = sim.stats()
    assert (stats["callbacks_attempted"], stats["callbacks_failed"]) == (4, 1)
    assert stats["callbacks_delivered"] == 0


@pytest.mark.parametrize("answer", [201, 202, 204, 299])
async def test_only_http_200_counts_as_delivered(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession, answer: int
) -> None:
    """The webhooks page asks for HTTP 200: any other 2xx is a failed delivery, retried."""
    sim = await simulator(time_scale=0.01, duration_override_s=(30.0, 30.0))
    rec = await receiver(script=[answer, 200])
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert len(rec.bodies) == 2
    assert rec.times[1] - rec.times[0] >= 0.3  # the first retry: 30 s x 0.01
    stats = sim.stats()
    assert (stats["callbacks_attempted"], stats["callbacks_delivered"]) == (2, 1)


async def test_retry_delays_are_a_setting_and_the_last_one_repeats(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """callback_retry_delays_s gives each retry's wait; retries past its end reuse the last."""
    sim = await simulator(
        time_scale=0.01,
        duration_override_s=(30.0, 30.0),
        callback_retries=3,
        callback_retry_delays_s=[10.0, 500.0],
    )
    rec = await receiver(script=[500])
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    gaps = [round(b - a, 2) for a, b in zip(rec.times, rec.times[1:], strict=False)]
    assert len(gaps) == 3
    assert 0.1 <= gaps[0] < 0.2 and gaps[1] >= 5.0 and gaps[2] >= 5.0


async def test_slow_receiver_times_out_and_is_retried(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """A receiver slower than the (scaled) timeout counts as a failure and is tried again."""
    sim = await simulator(
        time_scale=0.001, callback_timeout_s=300.0, duration_override_s=(30.0, 30.0)
    )  # timeout: 0.3 s real
    rec = await receiver(delays=[1.0, 0.0])
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert len(rec.bodies) == 2
    assert rec.times[1] - rec.times[0] >= 0.3
    stats = sim.stats()
    assert (stats["callbacks_attempted"], stats["callbacks_delivered"]) == (2, 1)


async def test_unreachable_receiver_fails_after_retries(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Connection refused is a failed attempt like any other."""
    sim = await simulator(time_scale=0.0001, callback_retries=2, duration_override_s=(30.0, 30.0))
    sim.finish_now(await submit_callback(http, sim, "http://127.0.0.1:9/hook"))
    await sim.drain_callbacks()
    stats = sim.stats()
    assert (stats["callbacks_attempted"], stats["callbacks_failed"]) == (3, 1)


async def test_drop_knob_loses_callbacks(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """callback_drop_rate=1 never calls the receiver; the status endpoint still knows."""
    sim = await simulator(callback_drop_rate=1.0, duration_override_s=(30.0, 30.0))
    rec = await receiver()
    for _ in range(3):
        sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert rec.bodies == []
    stats = sim.stats()
    assert stats["callbacks_dropped"] == 3 and stats["callbacks_attempted"] == 0


async def test_duplicate_knob_delivers_twice(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """callback_duplicate_rate=1 delivers the same payload twice."""
    sim = await simulator(callback_duplicate_rate=1.0, duration_override_s=(30.0, 30.0))
    rec = await receiver()
    sim.finish_now(await submit_callback(http, sim, rec.url))
    await sim.drain_callbacks()
    assert len(rec.bodies) == 2 and rec.bodies[0] == rec.bodies[1]
    stats = sim.stats()
    assert stats["callbacks_duplicated"] == 1 and stats["callbacks_delivered"] == 2


async def test_delay_knob_holds_callbacks_back(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """callback_delay_s (scaled) passes between the task's end and its callback."""
    sim = await simulator(time_scale=0.01, callback_delay_s=20.0, duration_override_s=(30.0, 30.0))
    rec = await receiver()
    task_id = await submit_callback(http, sim, rec.url)
    ended = asyncio.get_running_loop().time()
    sim.finish_now(task_id)
    await sim.drain_callbacks()
    assert len(rec.bodies) == 1
    assert rec.times[0] - ended >= 0.2


async def test_closing_the_simulator_cancels_pending_callbacks(
    simulator: SimulatorFactory, receiver: Any, http: aiohttp.ClientSession
) -> None:
    """Deliveries still waiting when the simulator stops are cancelled, not leaked."""
    sim = await simulator(callback_delay_s=600.0, duration_override_s=(30.0, 30.0))
    rec = await receiver()
    sim.finish_now(await submit_callback(http, sim, rec.url))
    assert sim.stats()["callbacks_pending"] == 1
    await sim.close()
    assert sim.stats()["callbacks_pending"] == 0
    assert rec.bodies == []
