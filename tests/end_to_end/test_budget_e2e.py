"""--budget end to end: the estimated spend never passes the cap, across runs too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e import ALL_MODES, read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]

#: kling-2-1 master text-to-video, 5 s: no published price
K21: dict[str, Any] = next(j for j in ALL_MODES if j["id"] == "k21-mt2v")


def k21_jobs(n: int) -> list[dict[str, Any]]:
    return [
        {**K21, "id": f"k21-{i}", "input": {**K21["input"], "prompt": f"city at dusk {i}"}}
        for i in range(n)
    ]


async def test_budget_submits_only_what_fits_then_stops(simulator, tmp_path: Path) -> None:
    """10 jobs at $0.30 under --budget 1.00: exactly 3 submitted, the rest pending, exit 1."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(10))  # kling-2-6 silent 5 s = $0.30
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    summary = res.summary
    assert summary["counts"] == {"done": 3, "failed": 0, "expired": 0, "pending": 7}
    assert "budget" in summary["stop_reason"]
    assert summary["spent_usd"] == pytest.approx(0.9)
    assert [e for e in res.events if e["event"] == "stopped" and "budget" in e["reason"]]
    manifest = read_manifest(tmp_path / "out")
    assert [e["state"] for e in manifest] == ["done"] * 3 + ["pending"] * 7
    assert all(e["task_id"] is None for e in manifest[3:])


async def test_budget_stop_is_said_in_plain_output(simulator, tmp_path: Path) -> None:
    """Without --json the budget stop is written on stderr in words."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(4))
    res = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01", "--budget", "0.5")
    assert res.code == 1
    assert sim.stats()["submits_accepted"] == 1
    assert "--budget $0.50 reached" in res.stderr
    assert "remaining jobs stay pending" in res.stderr
    assert res.stdout == ""


async def test_budget_counts_spend_of_earlier_runs(simulator, tmp_path: Path) -> None:
    """A rerun with a higher budget continues; the spend of earlier runs counts against it."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(10))
    first = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")
    assert first.code == 1
    assert sim.stats()["submits_accepted"] == 3
    # $0.90 already spent: $2.00 leaves room for 3 more ($1.80), not 6.
    second = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "2.0")
    assert second.code == 1, second.stderr
    assert sim.stats()["submits_accepted"] == 6
    assert second.summary["counts"]["done"] == 6
    assert second.summary["submitted"] == 3
    assert second.summary["spent_usd"] == pytest.approx(1.8)
    third = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "3.0")
    assert third.code == 0, third.stderr
    assert third.summary["stop_reason"] is None
    stats = sim.stats()
    assert stats["submits_accepted"] == 10 and stats["duplicate_submits"] == 0
    assert stats["spent"] == pytest.approx(3.0)


async def test_same_budget_rerun_submits_nothing_more(simulator, tmp_path: Path) -> None:
    """Rerunning with the same budget does not submit past it (spend read from the journal)."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(6))
    assert (await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")).code == 1
    again = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")
    assert again.code == 1
    assert sim.stats()["submits_accepted"] == 3
    assert again.summary["submitted"] == 0
    assert "budget" in again.summary["stop_reason"]


async def test_budget_exactly_covering_everything_submits_all(simulator, tmp_path: Path) -> None:
    """A budget equal to the total estimate is not 'past' it: every job runs, exit 0."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(5))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.5")
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 5
    assert res.summary["stop_reason"] is None


async def test_unknown_price_jobs_not_submitted_under_budget(simulator, tmp_path: Path) -> None:
    """kling-2-1 with no prices: entry is skipped under --budget with a warning; priced ones run."""
    sim = await simulator(time_scale=0.01)
    jobs = [*simple_jobs(2), *k21_jobs(2)]
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "10")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 2
    assert sim.submits_for(K21["model"], k21_jobs(1)[0]["input"]) == 0
    warnings = [e["message"] for e in res.events if e["event"] == "warning"]
    assert any("unknown price" in w and "--budget" in w for w in warnings), warnings
    manifest = read_manifest(tmp_path / "out")
    assert [(e["id"], e["state"]) for e in manifest] == [
        ("job-0000", "done"),
        ("job-0001", "done"),
        ("k21-0", "pending"),
        ("k21-1", "pending"),
    ]
    plain = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01", "--budget", "10")
    assert plain.code == 1
    assert "unknown price" in plain.stderr


async def test_prices_entry_makes_unknown_model_submittable(simulator, tmp_path: Path) -> None:
    """With prices: {kling-2-1: ...} in the job file those jobs are priced and submitted."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, k21_jobs(3), prices={"kling-2-1": {"master": 0.1}})
    # $0.50 per job: a $1.20 budget takes two of the three
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.2")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 2
    assert res.summary["spent_usd"] == pytest.approx(1.0)
    assert res.summary["unknown_price_jobs"] == 0
    assert not [e for e in res.events if e["event"] == "warning" and "unknown" in e["message"]]
    manifest = read_manifest(tmp_path / "out")
    assert [e["estimated_cost_usd"] for e in manifest] == [pytest.approx(0.5)] * 3
    assert [e["state"] for e in manifest] == ["done", "done", "pending"]


async def test_budget_below_one_job_submits_nothing(simulator, tmp_path: Path) -> None:
    """A budget smaller than the first job's price: nothing submitted, all pending, exit 1."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "0.1")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 0
    assert res.summary["counts"]["pending"] == 3
    assert "--budget $0.10 reached" in res.summary["stop_reason"]
    assert all(e["task_id"] is None for e in read_manifest(tmp_path / "out"))


async def test_preflight_compares_balance_with_what_the_budget_allows(
    simulator, tmp_path: Path
) -> None:
    """Balance $1.50, campaign $3.00, --budget 1.0: the run may spend $1.00, so it proceeds."""
    sim = await simulator(time_scale=0.01, balance=1.5)
    job_file = write_campaign(tmp_path, simple_jobs(10))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    assert "budget" in res.summary["stop_reason"]


async def test_retry_failed_counts_the_first_paid_attempt(simulator, tmp_path: Path) -> None:
    """A failed task was paid for: --retry-failed under the same budget cannot pay again."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(3)
    jobs[2]["input"]["prompt"] = "an nsfw scene"
    job_file = write_campaign(tmp_path, jobs)
    first = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "0.9")
    assert first.code == 1
    assert sim.stats()["spent"] == pytest.approx(0.9)
    retry = await run_cli(
        sim, "run", str(job_file), *FAST, "--budget", "0.9", "--retry-failed",
        "--fail-code", "SensitiveContentDetected",
    )  # fmt: skip
    assert sim.stats()["spent"] == pytest.approx(0.9), "paid past the budget"
    assert retry.summary["spent_usd"] == pytest.approx(0.9)


async def test_budget_buys_the_jobs_that_fit_when_a_dear_one_starts_first(
    simulator, tmp_path: Path
) -> None:
    """$0.30, $0.30, $1.20, $0.30 under --budget 1.00: the $1.20 job starts first (the
    longest) and does not fit; the three $0.30 jobs are still bought. The summary and plan
    name the job left out, and plan's figures agree with the run's."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(4)
    jobs[2]["input"].update({"duration": 10, "sound": True})  # $0.12/s x 10 s
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST, "--budget", "1.0")
    assert res.code == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    assert sim.submits_for("kling-2-6", jobs[2]["input"]) == 0
    assert res.summary["spent_usd"] == pytest.approx(0.9)
    assert "1 did not fit: job-0002 ($1.20)" in res.summary["stop_reason"]
    manifest = read_manifest(tmp_path / "out")
    assert [e["state"] for e in manifest] == ["done", "done", "pending", "done"]
    plan = await run_cli(sim, "plan", str(job_file), "--budget", "2.0")
    assert plan.code == 0, plan.stderr
    # $0.90 spent: $1.10 left, the $1.20 job still does not fit.
    assert "--budget $2.00: 0 of the 1 jobs fit" in plan.stdout, plan.stdout
    assert "1 do not fit what is left and stay pending: job-0002" in plan.stdout
    plain = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01", "--budget", "2.1")
    assert plain.code == 0, plain.stderr
    assert sim.stats()["submits_accepted"] == 4
