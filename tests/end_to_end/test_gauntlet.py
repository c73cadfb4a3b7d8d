"""The gauntlet (issue 7, item 3): kill -9 at ten random moments of one faulty campaign.

One simulator with 5xx, connection resets, lost submit answers and truncated
downloads; one campaign; the real CLI started, killed with SIGKILL at a random
moment, started again, ten times; then a last run to the end. At the end every
job is done and byte-exact, no job that had a task id was ever submitted again,
and every job the simulator saw submitted more than once is flagged
``possibly_duplicated`` (while every unflagged job was submitted exactly once).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import defaultdict
from pathlib import Path

import pytest
from e2e import (
    assert_byte_exact,
    finish,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]
JOBS = 100
KILLS = 10
SEED = 20240607


async def kill_at_random_moment(sim, proc: asyncio.subprocess.Process, rng: random.Random) -> bool:
    """SIGKILL ``proc`` once it has made a random number of requests (or after a random
    while); False when it ended on its own first."""
    loop = asyncio.get_running_loop()
    start = sim.stats()["requests_total"]
    after_requests = rng.randint(1, 30)
    deadline = loop.time() + 1.0 + rng.uniform(0.0, 2.5)  # startup takes most of a second
    while sim.stats()["requests_total"] - start < after_requests and loop.time() < deadline:
        if proc.returncode is not None:
            return False
        await asyncio.sleep(0.005)
    if proc.returncode is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


@pytest.mark.timeout(120)
async def test_ten_kills_under_faults_lose_nothing_and_pay_once(simulator, tmp_path: Path) -> None:
    """10 SIGKILLs under 5xx, resets, lost submits and truncations: all done, byte-exact,
    never resubmitted once a task id was journaled, every duplicate flagged."""
    sim = await simulator(
        time_scale=0.01,
        seed=SEED,
        error_rate_500=0.02,
        error_rate_502=0.02,
        error_rate_504=0.02,
        reset_rate=0.03,
        submit_lost_rate=0.04,
        truncate_rate=0.2,
        file_size=200_000,
    )
    rng = random.Random(SEED)
    jobs = simple_jobs(JOBS)
    job_file = str(write_campaign(tmp_path, jobs))
    out = tmp_path / "out"

    kills = 0
    moments: list[str] = []
    for _ in range(KILLS):
        proc = await start_cli(sim, "run", job_file, *FAST, "--max-concurrent", "10")
        killed = await kill_at_random_moment(sim, proc, rng)
        res = await finish(proc, limit=30)
        if not killed:
            raise AssertionError(f"run ended before its kill (exit {res.code}): {res.stderr}")
        assert res.code == -signal.SIGKILL
        kills += 1
        now = sim.stats()
        moments.append(f"{now['submits_accepted']}s/{now['file_requests']}f")
    assert kills == KILLS
    progress = sim.stats()
    assert 0 < progress["submits_accepted"] < JOBS + progress["duplicate_submits"]
    # The journal a kill -9 left behind is readable (and no longer locked).
    status = await run_cli(sim, "status", job_file, "--json")
    assert status.code == 0, status.stderr
    assert sum(json.loads(status.stdout)["counts"].values()) == JOBS

    final = await run_cli(sim, "run", job_file, *FAST, "--max-concurrent", "10", limit=60)
    assert final.code == 0, final.stderr + final.stdout[-3000:]

    manifest = read_manifest(out)
    assert [e["id"] for e in manifest] == [j["id"] for j in jobs]
    for entry in manifest:
        assert_byte_exact(sim, out, entry)
    assert not list(out.rglob("*.part"))

    # What the simulator saw, per job (prompts are unique), in creation order.
    created: dict[str, list[str]] = defaultdict(list)
    for task in sim.tasks.values():
        created[task.input["prompt"]].append(task.task_id)
    duplicated: list[str] = []
    for job, entry in zip(jobs, manifest, strict=True):
        submits = sim.submits_for(job["model"], job["input"])
        tasks = created[job["input"]["prompt"]]
        assert submits == len(tasks) >= 1, job["id"]
        # Nothing was submitted after the task id was journaled: it is the job's last task.
        assert entry["task_id"] == tasks[-1], (job["id"], entry["task_id"], tasks)
        if submits > 1:
            duplicated.append(job["id"])
            assert entry["possibly_duplicated"], (job["id"], submits)
        elif not entry["possibly_duplicated"]:
            assert submits == 1
    flagged = [e["id"] for e in manifest if e["possibly_duplicated"]]
    stats = sim.stats()
    print(
        f"\ngauntlet: {kills} kills, {stats['submits_accepted']} submits, "
        f"{len(flagged)} flagged possibly_duplicated, {len(duplicated)} really duplicated "
        f"({stats['duplicate_submits']} extra submits), lost answers "
        f"{stats['faults'].get('lost_submit', 0)}, faults {stats['faults']}\n"
        f"  killed at (submits/file requests so far): {', '.join(moments)}"
    )
    assert set(duplicated) <= set(flagged)
    assert stats["duplicate_submits"] == sum(len(created[j["input"]["prompt"]]) - 1 for j in jobs)
    assert stats["submits_accepted"] == JOBS + stats["duplicate_submits"]
    assert final.summary["possibly_duplicated"] == len(flagged)
    assert final.summary["counts"] == {"done": JOBS, "failed": 0, "expired": 0, "pending": 0}
