"""End to end: the API and file host gone for a while (connections refused), the real CLI.

An outage pauses a run, it never fails a job: submits wait with capped backoff and
are not flagged possibly duplicated (a refused connection sent nothing), polls wait,
downloads are tried again in the same run once the host answers. Past the run's
patience (``--max-wait``), the run stops with exit 75 and nothing lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import assert_byte_exact, read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("backend")]

FAST = ["--time-scale", "0.01", "--json"]


@pytest.mark.parametrize(
    ("outage", "what"),
    [((0.0, 2.5), "while submits are sent"), ((1.2, 3.0), "while tasks run")],
    ids=["submits", "polls"],
)
async def test_an_outage_mid_campaign_ends_with_every_job_done(
    simulator, tmp_path: Path, outage: tuple[float, float], what: str
) -> None:
    """Connections refused for 3 s (5 min at this scale) mid-campaign: exit 0, every job
    done and byte-exact, none failed, none flagged for a submit that was refused."""
    sim = await simulator(
        time_scale=0.01, duration_override_s=(0.4, 0.8), outages=[outage], file_size=100_000
    )
    jobs = simple_jobs(30)
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "6", limit=60)
    assert res.code == 0, what + res.stderr + res.stdout[-2000:]
    assert sim.outages_seen == 1
    assert res.summary["counts"] == {"done": 30, "failed": 0, "expired": 0, "pending": 0}
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)
    stats = sim.stats()
    # Only a submit cut off on the wire as the outage began may have been sent twice.
    assert stats["duplicate_submits"] == res.summary["possibly_duplicated"] <= 6


async def test_an_api_unreachable_past_the_patience_stops_with_exit_75(
    simulator, tmp_path: Path
) -> None:
    """Refused from the start for longer than --max-wait: exit 75, every job still queued
    (not failed, not flagged), and the same command later does the whole campaign."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.2, 0.3), outages=[(0.0, 4.0)])
    job_file = write_campaign(tmp_path, simple_jobs(5))
    first = await run_cli(sim, "run", str(job_file), *FAST, "--max-wait", "0.02", limit=30)
    assert first.code == 75, first.stderr + first.stdout[-2000:]
    assert first.summary["counts"]["pending"] == 5 and first.summary["possibly_duplicated"] == 0
    assert "no answer" in (first.summary["stop_reason"] or "")
    manifest = read_manifest(tmp_path / "out")
    assert {e["state"] for e in manifest} == {"pending"} and not any(e["task_id"] for e in manifest)
    # Started while the outage may still last: this run rides it out (default patience).
    again = await run_cli(sim, "run", str(job_file), *FAST, limit=30)
    assert again.code == 0, again.stderr
    assert again.summary["counts"]["done"] == 5
    assert sim.stats()["duplicate_submits"] == 0


async def test_an_account_that_holds_fewer_slots_than_told(simulator, tmp_path: Path) -> None:
    """The account holds 10 tasks, the engine is told 100: every job done (none left
    behind by a refused submit), few 429s (the window learns the account's slots: about
    one probe per window's worth of tasks), and the summary says what it learned."""
    sim = await simulator(time_scale=0.01, concurrency_limit=10, duration_override_s=(0.2, 0.3))
    job_file = write_campaign(tmp_path, simple_jobs(80))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "100", limit=60)
    assert res.code == 0, res.stderr
    assert res.summary["counts"]["done"] == 80
    stats = sim.stats()
    assert stats["max_concurrent_tasks"] <= 10 and stats["duplicate_submits"] == 0
    assert stats["rate_limited"] <= 0.4 * 80  # the code before: about one per job
    assert res.summary["learned_slots"] is not None and res.summary["learned_slots"] <= 20


async def test_an_account_rate_lower_than_told(simulator, tmp_path: Path) -> None:
    """The account allows 60 requests per 5 s, the engine is told 9,000 a minute: done,
    a few 429s while the rate comes down (one decrease per episode), and the rate
    that overshot is reported (and kept in the journal for the next run)."""
    sim = await simulator(
        time_scale=0.01, rpm_limit=60, rpm_window_s=5.0, duration_override_s=(0.05, 0.1)
    )
    job_file = write_campaign(tmp_path, simple_jobs(60))
    first = await run_cli(sim, "run", str(job_file), *FAST, limit=60)
    assert first.code == 0, first.stderr
    limited = sim.stats()["rate_limited"]
    assert limited <= 0.2 * sim.stats()["requests_total"]
    assert first.summary["learned_rpm"] is not None and first.summary["learned_rpm"] < 9_000
