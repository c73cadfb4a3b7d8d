"""The simulator's limits (rolling rpm, concurrent tasks) and its injected API faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from simfixture import SIM_KEY, SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.apixo.client import ApixoClient
from apixo_batch.apixo.secret import ApiKey
from apixo_batch.errors import RateLimited, TransportError
from apixo_batch.simulator import Simulator

#: the simulator runs on the loop's time, here virtual (looptime): simulated seconds
#: pass in no real time
pytestmark = pytest.mark.looptime

INP = {"mode": "text-to-video", "prompt": "a lake", "duration": 5, "sound": False}
SLOW = (30.0, 30.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def balance(http: aiohttp.ClientSession, sim: Simulator, **kw: Any) -> tuple[int, Any, Any]:
    return await api_call(http, "GET", f"{sim.base_url}/apikeys/current-balance", **kw)


async def submit(
    http: aiohttp.ClientSession, sim: Simulator, inp: Any = INP
) -> tuple[int, Any, Any]:
    url = f"{sim.base_url}/generateTask/kling-2-6"
    return await api_call(http, "POST", url, body={"request_type": "async", "input": inp})


async def test_burst_over_rpm_gets_429_with_retry_after(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A burst over the per-minute limit is answered 429 with an integer Retry-After ≥ 1."""
    sim = await simulator(rpm_limit=5)
    answers = await asyncio.gather(*(balance(http, sim) for _ in range(8)))
    codes = sorted(code for code, _, _ in answers)
    assert codes == [200] * 5 + [429] * 3
    for code, body, headers in answers:
        if code == 429:
            assert body == {"code": 429, "message": "Rate limit exceeded", "data": None}
            assert 1 <= int(headers["Retry-After"]) <= 60
    stats = sim.stats()
    assert stats["rate_limited"] == stats["rate_limited_rpm"] == 3
    assert stats["requests"]["GET /apikeys/current-balance"] == {"200": 5, "429": 3}


async def test_rpm_counts_every_api_route_and_errors_but_not_401(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Submits, polls and answered errors share the window; unauthenticated requests do not."""
    sim = await simulator(rpm_limit=4, duration_override_s=SLOW)
    for _ in range(3):
        assert (await balance(http, sim, key="bad"))[0] == 401
    assert (await submit(http, sim))[0] == 200
    assert (await submit(http, sim, {"mode": "text-to-video"}))[0] == 400
    status_url = f"{sim.base_url}/statusTask/kling-2-6"
    assert (await api_call(http, "GET", status_url, params={"taskId": "nope"}))[0] == 404
    assert (await balance(http, sim))[0] == 200
    assert (await balance(http, sim))[0] == 429
    assert (await submit(http, sim))[0] == 429
    assert len(sim.tasks) == 1


async def test_rpm_window_rolls(simulator: SimulatorFactory, http: aiohttp.ClientSession) -> None:
    """Requests are admitted again once the oldest ones leave the rolling window."""
    sim = await simulator(rpm_limit=3, rpm_window_s=0.3)
    assert [(await balance(http, sim))[0] for _ in range(4)] == [200, 200, 200, 429]
    await asyncio.sleep(0.35)
    assert [(await balance(http, sim))[0] for _ in range(4)] == [200, 200, 200, 429]


async def test_real_client_sees_rate_limited_with_retry_after(simulator: SimulatorFactory) -> None:
    """ApixoClient turns the simulator's 429 into RateLimited carrying Retry-After."""
    sim = await simulator(rpm_limit=1, rpm_window_s=30.0)
    async with ApixoClient(ApiKey(SIM_KEY), sim.base_url) as client:
        await client.balance()
        with pytest.raises(RateLimited) as caught:
            await client.balance()
    assert caught.value.retry_after is not None
    assert 29 <= caught.value.retry_after <= 30


async def test_concurrency_limit_answers_429_until_a_task_ends(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """With N tasks running the next submit gets 429; a finished task frees a slot."""
    sim = await simulator(concurrency_limit=2, duration_override_s=SLOW)
    assert (await submit(http, sim))[0] == 200
    assert (await submit(http, sim))[0] == 200
    code, body, headers = await submit(http, sim)
    assert (code, body["code"]) == (429, 429)
    assert body["data"] is None and "oncurrent" in body["message"]
    assert "Retry-After" not in headers
    sim.finish_now(next(iter(sim.tasks)))
    assert (await submit(http, sim))[0] == 200
    stats = sim.stats()
    assert stats["concurrent_tasks"] == 2
    assert stats["max_concurrent_tasks"] == 2
    assert stats["rate_limited_concurrency"] == 1
    assert stats["submits_accepted"] == 3


async def test_concurrency_frees_when_time_passes(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Tasks that end by themselves release their slots without any status poll."""
    sim = await simulator(concurrency_limit=3, duration_override_s=(0.05, 0.08))
    assert [(await submit(http, sim))[0] for _ in range(4)] == [200, 200, 200, 429]
    await asyncio.sleep(0.1)
    assert sim.stats()["concurrent_tasks"] == 0
    assert [(await submit(http, sim))[0] for _ in range(3)] == [200, 200, 200]
    assert sim.stats()["max_concurrent_tasks"] == 3


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_server_error_faults_answer_in_error_shape_and_create_nothing(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, code: int
) -> None:
    """A 5xx fault answers {code: 5xx, message, data: null} and a faulted submit creates no task."""
    knobs: dict[str, Any] = {f"error_rate_{code}": 1.0}
    sim = await simulator(**knobs)
    answer = await submit(http, sim)
    assert answer[0] == code
    assert answer[1]["code"] == code and answer[1]["data"] is None
    assert (await balance(http, sim))[0] == code
    stats = sim.stats()
    assert sim.tasks == {} and stats["submits_accepted"] == 0
    assert stats["faults"] == {str(code): 2}
    assert stats["balance"] == 1000.0


async def test_fault_rates_are_seeded_and_roughly_right(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """The same seed gives the same fault sequence; the share of faults follows the rate."""

    async def sequence(seed: int) -> list[int]:
        sim = await simulator(seed=seed, error_rate_500=0.2, error_rate_502=0.1)
        return [(await balance(http, sim))[0] for _ in range(200)]

    first, again, other = await sequence(7), await sequence(7), await sequence(8)
    assert first == again
    assert first != other
    share_500 = first.count(500) / len(first)
    share_502 = first.count(502) / len(first)
    assert 0.1 < share_500 < 0.3
    assert 0.03 < share_502 < 0.2
    assert set(first) == {200, 500, 502}


async def test_reset_drops_the_connection_and_creates_no_task(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A reset fault closes the connection with no answer; the submit did not happen."""
    sim = await simulator(reset_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await submit(http, sim)
    async with ApixoClient(ApiKey(SIM_KEY), sim.base_url) as client:
        with pytest.raises(TransportError):
            await client.submit("kling-2-6", INP)
    stats = sim.stats()
    assert sim.tasks == {} and stats["submits_accepted"] == 0
    assert stats["requests"]["POST /generateTask"] == {"reset": 2}
    assert stats["faults"]["reset"] == 2


async def test_lost_submit_answer_creates_the_task(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """submit_lost_rate creates (and charges) the task, then resets the connection."""
    sim = await simulator(submit_lost_rate=1.0, duration_override_s=SLOW)
    with pytest.raises(aiohttp.ClientError):
        await submit(http, sim)
    stats = sim.stats()
    assert len(sim.tasks) == 1 and stats["submits_accepted"] == 1
    assert stats["balance"] == pytest.approx(1000.0 - 0.30)
    assert stats["faults"]["lost_submit"] == 1


async def test_slow_answers_wait_before_answering(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """slow_rate delays the answer by slow_delay_s seconds (unscaled)."""
    sim = await simulator(slow_rate=1.0, slow_delay_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await balance(http, sim))[0] == 200
    assert loop.time() - started >= 0.2
    assert sim.stats()["faults"] == {"slow": 1}


async def test_slow_submit_abandoned_by_client_creates_nothing(
    simulator: SimulatorFactory,
) -> None:
    """A slow submit whose client gave up before it was processed leaves no task behind."""
    sim = await simulator(slow_rate=1.0, slow_delay_s=0.2)
    timeout = aiohttp.ClientTimeout(total=0.05)
    async with aiohttp.ClientSession(timeout=timeout) as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await submit(impatient, sim)
    await asyncio.sleep(0.3)
    assert sim.tasks == {}
    assert sim.stats()["requests"]["POST /generateTask"] == {"client_gone": 1}


async def test_sim_routes_are_never_faulted_or_limited(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """/_sim/stats answers 200 even when every API request fails and the rpm is spent."""
    sim = await simulator(error_rate_500=1.0, rpm_limit=1)
    await balance(http, sim)
    for _ in range(3):
        async with http.get(f"{sim.url}/_sim/stats") as resp:
            assert resp.status == 200
            assert (await resp.json())["api_requests_total"] == 1


async def test_knobs_can_change_on_a_running_simulator(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Limits, faults and the balance may be changed mid-test on sim.config / sim.balance."""
    sim = await simulator(duration_override_s=SLOW)
    assert (await submit(http, sim))[0] == 200
    sim.config.rpm_limit = 2
    assert (await balance(http, sim))[0] == 200
    assert (await balance(http, sim))[0] == 429  # the window holds two requests
    sim.config.rpm_limit = 100
    sim.config.error_rate_504 = 1.0
    assert (await balance(http, sim))[0] == 504
    sim.config.error_rate_504 = 0.0
    sim.balance = 0.1
    assert (await submit(http, sim))[0] == 402
    assert sim.stats()["spent"] == pytest.approx(0.30)
    with pytest.raises(ValueError):
        sim.config.reset_rate = 2.0


async def test_503_windows_answer_every_api_request_then_end(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """During an ``unavailable`` window every API request answers 503 and creates nothing;
    before and after it, the service answers as usual."""
    sim = await simulator(unavailable=[(10.0, 5.0)])
    assert (await balance(http, sim))[0] == 200
    await asyncio.sleep(11.0)
    answer = await submit(http, sim)
    assert answer[0] == 503
    assert answer[1] == {"code": 503, "message": "Service temporarily unavailable", "data": None}
    assert (await balance(http, sim))[0] == 503
    assert sim.tasks == {}
    await asyncio.sleep(5.0)
    assert (await submit(http, sim))[0] == 200
    assert sim.stats()["faults"] == {"503": 2}


async def test_503_draws_leave_the_other_faults_draws_as_they_were(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Adding error_rate_503 turns only some normal answers into 503s: a seeded drill of
    500s and 502s keeps its sequence."""

    async def sequence(**knobs: Any) -> list[int]:
        sim = await simulator(seed=7, error_rate_500=0.2, error_rate_502=0.1, **knobs)
        return [(await balance(http, sim))[0] for _ in range(200)]

    plain, with_503 = await sequence(), await sequence(error_rate_503=0.3)
    assert 503 in with_503
    assert all(b == a or (a == 200 and b == 503) for a, b in zip(plain, with_503, strict=True))


# --- the limiters gateways play (issue 31) ------------------------------------------------


async def test_fixed_window_resets_at_its_boundary(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A fixed window refuses until its boundary, then admits a whole limit at once."""
    sim = await simulator(rpm_limit=3, rpm_window_s=10.0, rpm_window="fixed")
    loop = asyncio.get_running_loop()
    await asyncio.sleep(10.0 - loop.time() % 10.0 + 0.5)  # half a second into a window
    assert [(await balance(http, sim))[0] for _ in range(4)] == [200, 200, 200, 429]
    status, _, headers = await balance(http, sim)
    assert status == 429 and headers["Retry-After"] == "10"  # 9.5 s left, rounded up
    await asyncio.sleep(9.6)  # past the boundary: a full window again, not a sliding one
    assert [(await balance(http, sim))[0] for _ in range(4)] == [200, 200, 200, 429]


async def test_refused_requests_count_when_configured(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Counting refused requests, a client that keeps asking keeps the window full."""
    sim = await simulator(rpm_limit=2, rpm_window_s=1.0, rpm_count_refused=True)
    assert [(await balance(http, sim))[0] for _ in range(3)] == [200, 200, 429]
    await asyncio.sleep(0.6)
    assert [(await balance(http, sim))[0] for _ in range(2)] == [429, 429]  # counted too
    await asyncio.sleep(0.6)  # the two accepted left; the two refusals at 0.6 s remain
    assert (await balance(http, sim))[0] == 429
    await asyncio.sleep(1.1)  # quiet for a whole window: room again
    assert (await balance(http, sim))[0] == 200


async def test_refused_requests_do_not_count_by_default(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(rpm_limit=2, rpm_window_s=1.0)
    assert [(await balance(http, sim))[0] for _ in range(3)] == [200, 200, 429]
    await asyncio.sleep(0.6)
    assert (await balance(http, sim))[0] == 429
    await asyncio.sleep(0.6)
    assert (await balance(http, sim))[0] == 200


@pytest.mark.parametrize(("kind", "expected"), [("absent", None), ("short", "1")])
async def test_retry_after_absent_or_too_short(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, kind: str, expected: str | None
) -> None:
    sim = await simulator(rpm_limit=1, rpm_window_s=30.0, retry_after=kind)
    assert (await balance(http, sim))[0] == 200
    status, body, headers = await balance(http, sim)
    assert status == 429 and body["code"] == 429
    assert headers.get("Retry-After") == expected


async def test_status_polls_have_their_own_window(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(rpm_limit=1, status_rpm_limit=2, rpm_window_s=30.0)
    status_url = f"{sim.base_url}/statusTask/kling-2-6"
    polls = [(await api_call(http, "GET", status_url, params={"taskId": "x"}))[0] for _ in range(3)]
    assert polls == [404, 404, 429]  # the status window: 2
    assert (await balance(http, sim))[0] == 200  # the other routes' window is untouched
    assert (await balance(http, sim))[0] == 429


async def test_slot_429_message_is_a_setting(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(
        concurrency_limit=1, duration_override_s=SLOW, concurrency_message="Too Many Requests"
    )
    assert (await submit(http, sim))[0] == 200
    status, body, headers = await submit(http, sim)
    assert (status, body["message"]) == (429, "Too Many Requests")
    assert "Retry-After" not in headers
