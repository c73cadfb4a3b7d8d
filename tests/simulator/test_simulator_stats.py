"""Observability: /_sim/stats and the in-process accessors count exactly what happened."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from simfixture import SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.simulator import SimConfig, Simulator

#: the simulator runs on the loop's time, here virtual (looptime): simulated seconds
#: pass in no real time
pytestmark = pytest.mark.looptime

A = {"mode": "text-to-video", "prompt": "a lake", "duration": 5, "sound": False}
B = {"mode": "text-to-video", "prompt": "a forest", "duration": 10, "sound": True}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(http: aiohttp.ClientSession, sim: Simulator, inp: Any) -> tuple[int, Any, Any]:
    url = f"{sim.base_url}/generateTask/kling-2-6"
    return await api_call(http, "POST", url, body={"request_type": "async", "input": inp})


async def test_stats_count_a_mixed_session_exactly(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Every request is counted by route and status; totals and task counters agree."""
    sim = await simulator(duration_override_s=(30.0, 30.0), rpm_limit=9, concurrency_limit=3)
    for inp in (A, A, B):
        assert (await submit(http, sim, inp))[0] == 200
    assert (await submit(http, sim, A))[0] == 429  # concurrency
    assert (await submit(http, sim, {"mode": "x"}))[0] == 400
    first = next(iter(sim.tasks))
    status_url = f"{sim.base_url}/statusTask/kling-2-6"
    assert (await api_call(http, "GET", status_url, params={"taskId": first}))[0] == 200
    sim.finish_now(first)
    balance_url = f"{sim.base_url}/apikeys/current-balance"
    assert (await api_call(http, "GET", balance_url))[0] == 200
    assert (await api_call(http, "GET", balance_url, key="wrong"))[0] == 401
    assert (await api_call(http, "GET", balance_url))[0] == 200
    assert (await api_call(http, "GET", balance_url))[0] == 200  # 9th counted request
    assert (await api_call(http, "GET", balance_url))[0] == 429  # rpm
    async with http.get(f"{sim.url}/nowhere") as resp:
        assert resp.status == 404

    stats = sim.stats()
    assert stats["requests"] == {
        "POST /generateTask": {"200": 3, "429": 1, "400": 1},
        "GET /statusTask": {"200": 1},
        "GET /apikeys/current-balance": {"200": 3, "401": 1, "429": 1},
        "GET <unmatched>": {"404": 1},
    }
    assert stats["requests_total"] == 12
    assert stats["api_requests_total"] == 11
    assert stats["submits_accepted"] == stats["tasks_created"] == 3
    assert stats["tasks_succeeded"] == 1 and stats["tasks_failed"] == 0
    assert stats["concurrent_tasks"] == 2 and stats["max_concurrent_tasks"] == 3
    assert stats["rate_limited"] == 2
    assert (stats["rate_limited_rpm"], stats["rate_limited_concurrency"]) == (1, 1)
    assert stats["distinct_inputs"] == 2
    assert stats["duplicate_submits"] == 1 and stats["max_submits_per_input"] == 2
    assert stats["balance"] == pytest.approx(1000.0 - 0.30 - 0.30 - 1.20)
    json.dumps(stats)  # JSON-able as promised


async def test_stats_endpoint_matches_accessor(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """GET /_sim/stats answers what stats() returns (plus its own request)."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    await submit(http, sim, A)
    before = sim.stats()
    async with http.get(f"{sim.url}/_sim/stats") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served["requests"] == before["requests"]
    assert {k: v for k, v in served.items() if k not in ("requests", "requests_total")} == {
        k: v for k, v in before.items() if k not in ("requests", "requests_total")
    }
    assert sim.stats()["requests"]["GET /_sim/stats"] == {"200": 1}


async def test_duplicate_submits_are_counted_per_distinct_input(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Submits of the same (model, input) count as duplicates; key order does not matter."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    reordered = dict(reversed(list(A.items())))
    for inp in (A, reordered, {**A, "negative_prompt": None}, B):
        assert (await submit(http, sim, inp))[0] == 200
    stats = sim.stats()
    assert stats["duplicate_submits"] == 2
    assert stats["max_submits_per_input"] == 3
    assert sim.submits_for("kling-2-6", A) == 3
    assert sim.submits_for("kling-2-6", B) == 1
    assert sim.submits_for("wan-2-5", A) == 0


async def test_rejected_submits_do_not_count_as_inputs(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Only submits that created a task count towards submits per input."""
    sim = await simulator(error_rate_502=0.5, seed=3, duration_override_s=(30.0, 30.0))
    codes = [(await submit(http, sim, A))[0] for _ in range(20)]
    assert set(codes) == {200, 502}
    assert sim.submits_for("kling-2-6", A) == codes.count(200) == len(sim.tasks)
    assert sim.stats()["duplicate_submits"] == codes.count(200) - 1


async def test_max_concurrency_seen_under_a_parallel_burst(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """max_concurrent_tasks records the peak even after the tasks have ended."""
    sim = await simulator(duration_override_s=(0.2, 0.2))
    prompts = [{**A, "prompt": f"scene {i}"} for i in range(25)]
    codes = await asyncio.gather(*(submit(http, sim, p) for p in prompts))
    assert {c for c, _, _ in codes} == {200}
    await asyncio.sleep(0.25)
    stats = sim.stats()
    assert stats["max_concurrent_tasks"] == 25
    assert stats["concurrent_tasks"] == 0
    assert stats["duplicate_submits"] == 0


async def test_sim_finish_and_expire_routes(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """POST /_sim/finish and /_sim/expire drive a task from outside the process."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    _, sub, _ = await submit(http, sim, A)
    task_id = sub["data"]["taskId"]
    async with http.post(f"{sim.url}/_sim/finish/{task_id}") as resp:
        assert resp.status == 200
    assert sim.tasks[task_id].state == "success"
    url = sim.tasks[task_id].result_urls[0]
    async with http.post(f"{sim.url}/_sim/expire/{task_id}") as resp:
        assert resp.status == 200
    async with http.get(url) as resp:
        assert resp.status == 410
    async with http.post(f"{sim.url}/_sim/finish/task_nope") as resp:
        assert resp.status == 404


async def test_finish_all_ends_every_running_task(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """finish_all ends what is still running, with each task's planned outcome."""
    sim = await simulator(duration_override_s=(30.0, 30.0))
    for inp in (A, B, {**A, "prompt": "nsfw"}):
        await submit(http, sim, inp)
    assert sim.finish_all() == 3
    assert sim.finish_all() == 0
    assert sorted(t.state for t in sim.tasks.values()) == ["failed", "success", "success"]
    stats = sim.stats()
    assert (stats["tasks_succeeded"], stats["tasks_failed"], stats["concurrent_tasks"]) == (2, 1, 0)


async def test_a_many_task_rehearsal_runs_in_moments(simulator: SimulatorFactory) -> None:
    """400 submit-and-poll jobs at concurrency 50 finish fast and leave exact counters."""
    sim = await simulator(time_scale=0.001)  # 30-120 s generations take 30-120 ms
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> str:
            _, sub, _ = await submit(http, sim, {**A, "prompt": f"scene {i}"})
            task_id: str = sub["data"]["taskId"]
            while True:
                _, st, _ = await api_call(
                    http,
                    "GET",
                    f"{sim.base_url}/statusTask/kling-2-6",
                    params={"taskId": task_id},
                )
                if st["data"]["state"] == "success":
                    return task_id
                await asyncio.sleep(0.02)

        done = await asyncio.gather(*(one(i) for i in range(400)))
    stats = sim.stats()
    assert len(set(done)) == 400
    assert stats["tasks_created"] == stats["tasks_succeeded"] == 400
    assert stats["duplicate_submits"] == 0 and stats["concurrent_tasks"] == 0
    assert stats["requests"]["POST /generateTask"] == {"200": 400}
    assert stats["balance"] == pytest.approx(1000.0 - 400 * 0.30)


def test_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    """A YAML mapping loads every knob; keyword overrides win over the file."""
    path = tmp_path / "sim.yaml"
    path.write_text(
        "time_scale: 0.05\nrpm_limit: 100\nduration_override_s: [1, 2]\n"
        "prices: {kling-2-1: 0.09}\nfail_words: [bad]\n",
        encoding="utf-8",
    )
    cfg = SimConfig.from_yaml(path, rpm_limit=50)
    assert cfg.time_scale == 0.05 and cfg.rpm_limit == 50
    assert cfg.duration_override_s == (1.0, 2.0)
    assert cfg.prices == {"kling-2-1": 0.09} and cfg.fail_words == ["bad"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert SimConfig.from_yaml(empty) == SimConfig()


@pytest.mark.parametrize(
    "knobs",
    [
        {"no_such_knob": 1},
        {"error_rate_500": 1.5},
        {"error_rate_500": 0.6, "reset_rate": 0.6},
        {"time_scale": 0},
        {"duration_override_s": (2.0, 1.0)},
        {"file_size": 10},
    ],
)
def test_config_refuses_bad_knobs(knobs: dict[str, Any]) -> None:
    """Unknown knobs, rates outside [0, 1] and impossible settings are refused."""
    with pytest.raises(ValidationError):
        SimConfig(**knobs)


def test_config_repr_hides_the_key() -> None:
    """The configured key never shows in the config's repr."""
    cfg = SimConfig(api_key="sk-distinctive-4242")
    assert "sk-distinctive-4242" not in repr(cfg)
    assert "sk-distinctive-4242" not in str(cfg)
