"""The account's limits shared by several runners (issue 33), end to end: three runs of
one campaign on one PostgreSQL journal (tests/pg.py) against one simulator, each told
the account's figures. The simulator's in-flight peak and its 429 counts are the
ground truth: the runners never exceed the account's limits together."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e import CliResult, cli_env, finish, read_manifest, simple_jobs, start_with, write_campaign

pytestmark = pytest.mark.e2e


async def _runners(sim: Any, job_file: Path, url: str, *args: str) -> list[CliResult]:
    """Three runs of ``job_file`` at once; each must exit 0, without a traceback."""
    env = {**cli_env(sim), "APIXO_BATCH_LEASE_S": "2"}
    procs = [
        await start_with(env, "run", str(job_file), "--state", url, "--json", *args)
        for _ in range(3)
    ]
    results: list[CliResult] = await asyncio.gather(*(finish(p, 150.0) for p in procs))
    for res in results:
        assert res.code == 0, res.stderr
        assert "Traceback" not in res.stderr
    return results


def _pool(url: str) -> tuple[int, int]:
    """What the accounts' pools have granted, and what the runners say they hold."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(granted), 0) FROM accounts), "
            "(SELECT coalesce(sum(held), 0) FROM slot_grants)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_three_runners_never_hold_more_slots_than_the_account(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """Three runners each told --max-concurrent 20, an account of 20 slots: the
    simulator never sees more than 20 tasks at once and refuses no submit for slots,
    the slots are used (the peak reaches most of them), every job ends done, and the
    pool is empty once all have left."""
    sim = await simulator(
        time_scale=0.05, duration_override_s=(0.5, 1.5), results_per_task=1, concurrency_limit=20
    )
    job_file = write_campaign(tmp_path, simple_jobs(120))
    results = await _runners(
        sim, job_file, pg_url, "--time-scale", "0.05", "--max-concurrent", "20"
    )
    stats = sim.stats()
    assert stats["rate_limited_concurrency"] == 0
    assert 15 <= stats["max_concurrent_tasks"] <= 20
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 120 and all(e["state"] == "done" for e in manifest)
    assert sum(res.summary["submitted"] for res in results) == 120
    assert _pool(pg_url) == (0, 0)


async def test_three_runners_told_ninety_percent_of_the_rate_meet_no_429(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """An account of 30 requests per 10 s (180 a minute), three runners each told --rpm
    162 (90 %): requests are the bottleneck, and not one answer is a 429 (each runner
    alone would send 162 a minute, and three of them did meet 429s before the rate was
    shared); every job ends done and the pool is empty once all have left."""
    sim = await simulator(time_scale=0.02, results_per_task=1, rpm_limit=30, rpm_window_s=10.0)
    job_file = write_campaign(tmp_path, simple_jobs(24))
    await _runners(
        sim, job_file, pg_url, "--time-scale", "0.02", "--rpm", "162", "--max-concurrent", "30"
    )
    stats = sim.stats()
    assert stats["rate_limited"] == 0
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 24 and all(e["state"] == "done" for e in manifest)
    assert _pool(pg_url) == (0, 0)
