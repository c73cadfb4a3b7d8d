"""Several runners on one PostgreSQL campaign (issue 33), end to end: the real CLI
started N times on one job file and one database, the real simulator, a real cluster
(tests/pg.py). The simulator's count of submits per input is the ground truth."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e import (
    CliResult,
    assert_byte_exact,
    cli_env,
    finish,
    kill_when,
    read_manifest,
    run_env,
    sha256_of,
    simple_jobs,
    start_with,
    write_campaign,
)

pytestmark = pytest.mark.e2e

#: a short lease, so that a killed runner's work is adopted within a few seconds
LEASE_S = "2"
ARGS = ["--time-scale", "0.02", "--json", "--max-concurrent", "8"]
#: generations of 0.4-1.2 real seconds: several waves of tasks per runner, in seconds
GEN = (0.4, 1.2)


def _env(sim: Any) -> dict[str, str]:
    return {**cli_env(sim), "APIXO_BATCH_LEASE_S": LEASE_S}


async def _start(sim: Any, job_file: Path, url: str) -> asyncio.subprocess.Process:
    return await start_with(_env(sim), "run", str(job_file), "--state", url, *ARGS)


def _query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        made = conn.execute("SELECT to_regclass('runners') IS NOT NULL").fetchone()
        if made is None or not made[0]:
            return []
        return conn.execute(sql, args).fetchall()


#: a job with a task id: the runners are under way
_A_TASK = "SELECT 1 FROM jobs WHERE task_id IS NOT NULL LIMIT 1"


def _runner_of(url: str, pid: int) -> int | None:
    rows = _query(url, "SELECT id FROM runners WHERE pid = %s", pid)
    return int(rows[0][0]) if rows else None


def _submits(sim: Any, jobs: list[dict[str, Any]]) -> dict[str, int]:
    return {j["id"]: sim.submits_for(j["model"], j["input"]) for j in jobs}


def _all_done_byte_exact(
    sim: Any, out: Path, n: int, *, stray_parts: bool = False
) -> list[dict[str, Any]]:
    """Every job done, each file exactly what the simulator served. ``stray_parts``: a
    runner stopped mid-download may leave the ``.part`` of a result another runner
    landed (the files themselves are still checked byte for byte)."""
    manifest = read_manifest(out)
    assert len(manifest) == n and all(e["state"] == "done" for e in manifest)
    for entry in manifest:
        if not stray_parts:
            assert_byte_exact(sim, out, entry)
            continue
        for name, url, digest in zip(
            entry["files"], entry["result_urls"], entry["sha256"], strict=True
        ):
            assert sha256_of(out / name) == sim.expected_sha256(url) == digest
    return manifest


async def test_three_runners_finish_one_campaign_each_job_submitted_once(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """Three runs of one campaign at once: every job done byte-exact, each submitted
    exactly once, the work spread over the three, each exiting 0."""
    sim = await simulator(time_scale=0.02, duration_override_s=GEN, results_per_task=1)
    jobs = simple_jobs(90)
    job_file = write_campaign(tmp_path, jobs)
    procs = [await _start(sim, job_file, pg_url) for _ in range(3)]
    # Read-only commands work while the runners run.
    await kill_when(procs[0], lambda: bool(_query(pg_url, _A_TASK)), sig=0)
    status = await run_env("status", str(job_file), "--state", pg_url, env=_env(sim))
    assert status.code == 0, status.stderr
    results: list[CliResult] = await asyncio.gather(*(finish(p, 120.0) for p in procs))
    for res in results:
        assert res.code == 0, res.stderr
        assert "Traceback" not in res.stderr
    _all_done_byte_exact(sim, tmp_path / "out", 90)
    assert set(_submits(sim, jobs).values()) == {1}
    assert sim.stats()["submits_accepted"] == 90
    submitted = [res.summary["submitted"] for res in results]
    assert sum(submitted) == 90
    assert all(n > 0 for n in submitted), submitted  # every runner did a share
    # Each left: nothing owned, every lease given up.
    left = _query(pg_url, "SELECT count(*) FROM runners WHERE NOT stopped")
    owned = _query(pg_url, "SELECT count(*) FROM jobs WHERE owner IS NOT NULL")
    assert left == [(0,)] and owned == [(0,)]


async def test_a_runner_killed_mid_campaign_is_adopted_never_resubmitted(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """One of three runners killed with kill -9 while its tasks run: the others adopt
    them (followed, not sent again) and finish the campaign byte-exact. No job whose
    task id was journaled is submitted again; the only extra submits are of jobs
    flagged possibly duplicated (a submit cut off on the wire)."""
    sim = await simulator(time_scale=0.02, duration_override_s=GEN, results_per_task=1)
    jobs = simple_jobs(120)
    job_file = write_campaign(tmp_path, jobs)
    victim, *others = [await _start(sim, job_file, pg_url) for _ in range(3)]

    def victim_runs_tasks() -> bool:
        me = _runner_of(pg_url, victim.pid)
        if me is None:
            return False
        rows = _query(
            pg_url, "SELECT count(*) FROM jobs WHERE owner = %s AND state = 'submitted'", me
        )
        return bool(rows) and int(rows[0][0]) >= 3

    loop = asyncio.get_running_loop()
    end = loop.time() + 60.0
    while not victim_runs_tasks():
        if victim.returncode is not None:
            raise AssertionError((await finish(victim)).stderr)
        assert loop.time() < end, "the victim never ran tasks"
        await asyncio.sleep(0.02)
    dead = _runner_of(pg_url, victim.pid)
    # Its running tasks, read just before the kill (adopted within a beat after it).
    held = {
        str(job_id): str(task)
        for job_id, task in _query(
            pg_url, "SELECT id, task_id FROM jobs WHERE owner = %s AND state = 'submitted'", dead
        )
    }
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    journaled = {
        str(job_id) for (job_id,) in _query(pg_url, "SELECT id FROM jobs WHERE task_id IS NOT NULL")
    }
    assert held  # the moment chosen: the victim had tasks running
    results = await asyncio.gather(*(finish(p, 120.0) for p in others))
    for res in results:
        assert res.code == 0, res.stderr
        assert "Traceback" not in res.stderr
    manifest = _all_done_byte_exact(sim, tmp_path / "out", 120)
    submits = _submits(sim, jobs)
    # Paid once: a job whose task id reached the journal is never sent again.
    assert all(submits[job_id] == 1 for job_id in journaled)
    flagged = {e["id"] for e in manifest if e["possibly_duplicated"]}
    assert {job_id for job_id, n in submits.items() if n > 1} <= flagged
    assert all(n >= 1 for n in submits.values())
    # The victim's running tasks were adopted and followed to their end, same task ids.
    by_id = {e["id"]: e for e in manifest}
    assert all(by_id[job_id]["task_id"] == task for job_id, task in held.items())
    adopted = _query(pg_url, "SELECT adopted_by FROM runners WHERE id = %s", dead)
    assert adopted and adopted[0][0] is not None


async def test_a_runner_stalled_past_its_lease_stops_with_75_nothing_lost(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """A runner stopped (SIGSTOP) longer than its lease and grace: the other adopts its
    work; resumed, it learns its lease is lost and stops at once, exit 75, one line
    ("another runner took over; nothing lost"). The other finishes every job, none
    whose task id was journaled submitted again."""
    sim = await simulator(time_scale=0.02, duration_override_s=GEN, results_per_task=1)
    jobs = simple_jobs(60)
    job_file = write_campaign(tmp_path, jobs)
    stalled, other = [await _start(sim, job_file, pg_url) for _ in range(2)]
    loop = asyncio.get_running_loop()
    end = loop.time() + 60.0

    def runs_tasks() -> bool:
        me = _runner_of(pg_url, stalled.pid)
        rows = _query(
            pg_url, "SELECT count(*) FROM jobs WHERE owner = %s AND state = 'submitted'", me
        )
        return me is not None and bool(rows) and int(rows[0][0]) >= 3

    while not runs_tasks():
        if stalled.returncode is not None:
            raise AssertionError((await finish(stalled)).stderr)
        assert loop.time() < end, "it never ran tasks"
        await asyncio.sleep(0.02)
    stalled.send_signal(signal.SIGSTOP)
    me = _runner_of(pg_url, stalled.pid)
    journaled = {
        str(job_id) for (job_id,) in _query(pg_url, "SELECT id FROM jobs WHERE task_id IS NOT NULL")
    }
    while not _query(pg_url, "SELECT 1 FROM runners WHERE id = %s AND adopted_by IS NOT NULL", me):
        assert loop.time() < end, "the stalled runner was never adopted"
        await asyncio.sleep(0.05)
    stalled.send_signal(signal.SIGCONT)
    fenced, done = await asyncio.gather(finish(stalled, 60.0), finish(other, 120.0))
    assert fenced.code == 75, fenced.stderr
    assert "another runner took over; nothing lost" in fenced.stdout + fenced.stderr
    assert "Traceback" not in fenced.stderr
    assert done.code == 0, done.stderr
    manifest = _all_done_byte_exact(sim, tmp_path / "out", 60, stray_parts=True)
    submits = _submits(sim, jobs)
    assert all(submits[job_id] == 1 for job_id in journaled)
    flagged = {e["id"] for e in manifest if e["possibly_duplicated"]}
    assert {job_id for job_id, n in submits.items() if n > 1} <= flagged


async def test_a_runner_with_only_leaves_the_other_jobs_to_the_other_runners(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """A runner given --only claims only the jobs it picks: a runner joining later
    (told to leave early) finds the others free and does them, rather than leaving them
    held by a runner that will never send them; both exit, every job done once."""
    sim = await simulator(time_scale=0.02, results_per_task=1)
    jobs = simple_jobs(40)
    job_file = write_campaign(tmp_path, jobs)
    picky = await start_with(
        _env(sim), "run", str(job_file), "--state", pg_url, "--only", "job-003*",
        "--leave-early", *ARGS,
    )  # fmt: skip
    await kill_when(picky, lambda: bool(_query(pg_url, _A_TASK)), sig=0)
    other = await start_with(
        _env(sim), "run", str(job_file), "--state", pg_url, "--leave-early", *ARGS
    )
    results = await asyncio.gather(finish(picky, 120.0), finish(other, 120.0))
    for res in results:
        assert "Traceback" not in res.stderr
    assert results[0].code == 0, results[0].stderr
    assert results[0].summary["submitted"] == 10
    assert results[1].summary["submitted"] == 30
    _all_done_byte_exact(sim, tmp_path / "out", 40)
    assert set(_submits(sim, jobs).values()) == {1}


async def test_a_runner_leaving_early_exits_0_when_the_rest_is_live_runners_work(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """Every job held by a live runner (its tasks running), a runner told --leave-early
    joins: it leaves at once, sends nothing, and exits 0 (the jobs it left are the other
    runner's, not pending for it: a Kubernetes pod of a Job ends succeeded, not retried);
    the first runner finishes them all."""
    sim = await simulator(time_scale=0.02, duration_override_s=(2.0, 3.0), results_per_task=1)
    jobs = simple_jobs(8)
    job_file = write_campaign(tmp_path, jobs)
    first = await _start(sim, job_file, pg_url)
    all_sent = "SELECT 1 FROM jobs HAVING count(*) FILTER (WHERE task_id IS NULL) = 0"
    await kill_when(first, lambda: bool(_query(pg_url, all_sent)), sig=0)
    late = await run_env(
        "run", str(job_file), "--state", pg_url, "--leave-early", *ARGS, env=_env(sim)
    )
    assert late.code == 0, late.stderr
    assert late.summary["submitted"] == 0 and late.summary["counts"]["done"] < 8
    done = await finish(first, 60.0)
    assert done.code == 0, done.stderr
    _all_done_byte_exact(sim, tmp_path / "out", 8)
    assert set(_submits(sim, jobs).values()) == {1}
