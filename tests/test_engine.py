"""The engine in-process against the simulator: how a run finds its own end.

While many tasks are followed, ``Engine._watch_idle`` does not look for the end on a
timer: what brings the end (a task settled, a download landed, a task left pending,
the key refused) tells it. Here its safety-net timer is pushed out of reach, so a run
that ends in time proves the signal came.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from e2e import SIM_KEY, simple_jobs, write_campaign

from apixo_batch import Event, RunResult, engine, run_campaign
from apixo_batch.client import ApixoClient
from apixo_batch.clock import Clock

JOBS = 3 * engine._BUSY  # enough to be "busy": the signalled path is the one taken


@pytest.fixture
def no_safety_net(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Push the busy-time look out of reach; record each busy wait's timeout."""
    monkeypatch.setattr(engine, "IDLE_CHECK_BUSY_S", 1e6)
    waits: list[float] = []
    real = engine.sleep_or_wake

    async def spy(clock: Clock, event: asyncio.Event, seconds: float | None) -> None:
        assert seconds is not None
        waits.append(seconds)
        await real(clock, event, seconds)

    monkeypatch.setattr(engine, "sleep_or_wake", spy)
    return waits


async def _run(sim: Any, tmp_path: Path, *, prompt: str = "", **options: Any) -> RunResult:
    jobs = simple_jobs(JOBS)
    for job in jobs:
        job["input"]["prompt"] += prompt
    job_file = write_campaign(tmp_path, jobs)
    run = run_campaign(job_file, api_key=SIM_KEY, base_url=sim.base_url, time_scale=0.01, **options)
    # Without the signal the run would wait 1e6 x 0.01 s for its timer.
    return await asyncio.wait_for(run, timeout=60)


async def test_a_busy_run_ends_when_its_last_download_lands(
    simulator, tmp_path: Path, no_safety_net: list[float]
) -> None:
    sim = await simulator(time_scale=0.01)
    result = await _run(sim, tmp_path)
    assert result.exit_code == 0
    assert result.counts["done"] == JOBS
    assert no_safety_net and set(no_safety_net) == {1e6 * 0.01}


@pytest.mark.parametrize(
    ("sim_knobs", "run_options", "end_state"),
    [
        ({}, {"prompt": " forbidden-word"}, "failed"),  # every task ends failed
        ({"duration_override_s": (30.0, 30.0)}, {"max_wait_min": 0.01}, "pending"),
    ],
    ids=["its-last-task-fails", "its-tasks-are-left-pending"],
)
async def test_a_busy_run_ends_without_a_download(
    simulator,
    tmp_path: Path,
    no_safety_net: list[float],
    sim_knobs: dict[str, Any],
    run_options: dict[str, Any],
    end_state: str,
) -> None:
    sim = await simulator(time_scale=0.01, **sim_knobs)
    result = await _run(sim, tmp_path, **run_options)
    assert result.exit_code == 1
    assert result.counts[end_state] == JOBS
    assert no_safety_net


async def test_a_busy_run_ends_when_the_key_is_revoked(
    simulator, tmp_path: Path, no_safety_net: list[float]
) -> None:
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    submitted: list[str | None] = []

    def revoke_after_the_last_submit(event: Event) -> None:
        if event.kind == "submitted":
            submitted.append(event.job_id)
            if len(submitted) == JOBS:
                sim.set_api_key("sim-some-other-key")  # every request from now gets 401

    result = await _run(sim, tmp_path, on_event=revoke_after_the_last_submit)
    assert result.exit_code == 3
    assert result.counts["pending"] == JOBS
    assert no_safety_net


async def test_a_run_whose_key_is_refused_ends_when_its_last_download_lands(
    simulator, tmp_path: Path, no_safety_net: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is refused while most tasks are still followed (they stay followed: no
    poll can end them) and a download is under way: its landing ends the run."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.05, 5.0))
    real = engine.Engine._download

    async def slow_download(self: engine.Engine, row: Any, session: Any) -> None:
        await asyncio.sleep(0.5)
        await real(self, row, session)

    monkeypatch.setattr(engine.Engine, "_download", slow_download)

    def revoke_at_the_first_success(event: Event) -> None:
        if event.kind == "succeeded":
            sim.set_api_key("sim-some-other-key")

    result = await _run(sim, tmp_path, on_event=revoke_at_the_first_success)
    assert result.exit_code == 3
    assert result.counts["done"] >= 1 and result.counts["pending"] >= 2 * engine._BUSY


async def test_a_run_whose_key_is_refused_ends_when_its_last_submit_returns(
    simulator, tmp_path: Path, no_safety_net: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is refused while the last submit is still on the wire: its answer (a
    refusal, the job handed back) ends the run."""
    sim = await simulator(time_scale=0.01, duration_override_s=(5.0, 5.0))
    real = ApixoClient.submit
    last = f"scene number {JOBS - 1}"

    async def slow_last_submit(self: ApixoClient, model: str, inp: Any, **kw: Any) -> str:
        if inp.get("prompt") == last:
            await asyncio.sleep(1.0)
        return await real(self, model, inp, **kw)

    monkeypatch.setattr(ApixoClient, "submit", slow_last_submit)
    submitted: list[str | None] = []

    def revoke_before_the_last_answer(event: Event) -> None:
        if event.kind == "submitted":
            submitted.append(event.job_id)
            if len(submitted) == JOBS - 1:
                sim.set_api_key("sim-some-other-key")

    result = await _run(sim, tmp_path, on_event=revoke_before_the_last_answer)
    assert result.exit_code == 3
    assert result.counts["pending"] == JOBS
    assert result.submitted == JOBS - 1
