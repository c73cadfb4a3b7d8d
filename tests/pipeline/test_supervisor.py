"""The supervisor in-process against the simulator: a run ends because its stages do.

Nothing watches counters for the end: each stage returns once its input stream has
closed and its own work is done, and closes its output as it returns. Each way a
busy run can end (the last download lands, every task fails, every task is left
pending, the key is refused with downloads or a submit still under way) must end the
run promptly (a stage left waiting would hang it until the timeout).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from e2e import SIM_KEY, simple_jobs, write_campaign

from apixo_batch import Event, ExitCode, FakeClock, RunOptions, RunResult
from apixo_batch.api import build_engine
from apixo_batch.apixo.client import ApixoClient
from apixo_batch.apixo.secret import ApiKey
from apixo_batch.errors import AuthError
from apixo_batch.jobs import load_campaign
from apixo_batch.pipeline import RunStatistics, Supervisor, lander

#: The engine, the in-process simulator and every timeout share the loop's virtual
#: time (looptime): it moves only when every task waits, so these runs of simulated
#: minutes take milliseconds and no race is ordered by a real sleep.
pytestmark = [pytest.mark.looptime, pytest.mark.usefixtures("inline_run_journal")]

JOBS = 30


async def _run(
    sim: Any, tmp_path: Path, *, prompt: str = "", on_event: Any = None, **fields: Any
) -> RunResult:
    jobs = simple_jobs(JOBS)
    for job in jobs:
        job["input"]["prompt"] += prompt
    job_file = write_campaign(tmp_path, jobs)
    # Wall time from now, as the simulator stamps its answers.
    clock = FakeClock(wall_start=time.time())
    options = RunOptions(base_url=sim.base_url, time_scale=0.01, **fields)
    run = build_engine(job_file, options, api_key=SIM_KEY, on_event=on_event, clock=clock).run()
    # Simulated generations take about a second here: a run that has not ended after
    # 30 s (of loop time) is waiting on something that will not come.
    return await asyncio.wait_for(run, timeout=30)


async def test_a_busy_run_ends_when_its_last_download_lands(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    result = await _run(sim, tmp_path)
    assert result.exit_code == ExitCode.OK
    assert result.counts["done"] == JOBS


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
    sim_knobs: dict[str, Any],
    run_options: dict[str, Any],
    end_state: str,
) -> None:
    sim = await simulator(time_scale=0.01, **sim_knobs)
    result = await _run(sim, tmp_path, **run_options)
    assert result.exit_code == 1
    assert result.counts[end_state] == JOBS


async def test_a_busy_run_ends_when_the_key_is_revoked(simulator, tmp_path: Path) -> None:
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


async def test_a_run_whose_key_is_refused_ends_when_its_last_download_lands(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is refused while most tasks are still followed (they stay followed: no
    poll can end them) and a download is under way: its landing ends the run."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.05, 5.0))
    refused = asyncio.Event()  # a poll has heard the key refused
    real_status, real_land = ApixoClient.status, lander.Lander._land

    async def status(self: ApixoClient, model: str, task_id: str) -> Any:
        try:
            return await real_status(self, model, task_id)
        except AuthError:
            refused.set()
            raise

    async def land_once_refused(self: lander.Lander, fetch: lander.Fetch) -> None:
        await refused.wait()
        await real_land(self, fetch)

    monkeypatch.setattr(ApixoClient, "status", status)
    monkeypatch.setattr(lander.Lander, "_land", land_once_refused)

    def revoke_at_the_first_success(event: Event) -> None:
        if event.kind == "succeeded":
            sim.set_api_key("sim-some-other-key")

    result = await _run(sim, tmp_path, on_event=revoke_at_the_first_success)
    assert refused.is_set()
    assert result.exit_code == 3
    assert result.counts["done"] >= 1 and result.counts["pending"] >= 20


async def test_a_run_whose_key_is_refused_ends_when_its_last_submit_returns(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is refused while the last submit is still on the wire: its answer (a
    refusal, the job handed back) ends the run."""
    sim = await simulator(time_scale=0.01, duration_override_s=(5.0, 5.0))
    real = ApixoClient.submit
    last = f"scene number {JOBS - 1}"
    revoked = asyncio.Event()

    async def last_submit_once_revoked(self: ApixoClient, model: str, inp: Any, **kw: Any) -> str:
        if inp.get("prompt") == last:
            await revoked.wait()
        return await real(self, model, inp, **kw)

    monkeypatch.setattr(ApixoClient, "submit", last_submit_once_revoked)
    submitted: list[str | None] = []

    def revoke_before_the_last_answer(event: Event) -> None:
        if event.kind == "submitted":
            submitted.append(event.job_id)
            if len(submitted) == JOBS - 1:
                sim.set_api_key("sim-some-other-key")
                revoked.set()

    result = await _run(sim, tmp_path, on_event=revoke_before_the_last_answer)
    assert result.exit_code == 3
    assert result.counts["pending"] == JOBS
    assert result.submitted == JOBS - 1


async def test_statistics_are_a_snapshot_of_the_run_under_way(simulator, tmp_path: Path) -> None:
    """statistics(), read at every event as a progress view would: a RunStatistics whose
    requests only grow, never more in flight than the slots, and whose last snapshot
    agrees with the run's result."""
    sim = await simulator(time_scale=0.01)
    campaign = load_campaign(write_campaign(tmp_path, simple_jobs(6)))
    options = RunOptions(base_url=sim.base_url, time_scale=0.01, max_concurrent=2, rpm=900)
    seen: list[RunStatistics] = []
    engine = Supervisor(
        campaign,
        ApiKey(SIM_KEY),
        options,
        clock=FakeClock(wall_start=time.time()),  # the simulator's wall time
        on_event=lambda _: seen.append(engine.statistics()),
    )
    result = await asyncio.wait_for(engine.run(), timeout=30)
    last = engine.statistics()
    assert seen and all(isinstance(s, RunStatistics) for s in [*seen, last])
    assert [s.requests for s in seen] == sorted(s.requests for s in seen)
    assert max(s.in_flight for s in seen) <= 2 == last.max_concurrent
    assert (last.rpm_limit, last.in_flight, last.downloading, last.stop_reason) == (900, 0, 0, None)
    assert last.requests == result.requests and last.requests_last_minute >= last.requests
    assert last.spent_usd == pytest.approx(result.spent_usd) and last.spent_usd > 0
