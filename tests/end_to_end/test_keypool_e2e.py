"""Key pools end to end: the real CLI given several keys against a simulator that serves
each key as an account of its own (limits, balance, tasks)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    SIM_KEY,
    finish,
    journaled_task_ids,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

from apixo_batch.simulator import SimKey, Simulator

pytestmark = pytest.mark.e2e

OTHER_KEY = "sim-second-key"
FAST = ["--time-scale", "0.01", "--json"]


def fp(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def key_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("# the team's keys\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


async def two_keys(simulator: Any, limit: int, **knobs: Any) -> Simulator:
    """Two keys, each allowed ``limit`` tasks at once."""
    sim: Simulator = await simulator(
        time_scale=0.01,
        concurrency_limit=limit,
        keys=[SimKey(key=OTHER_KEY, concurrency_limit=limit)],
        **knobs,
    )
    return sim


def journaled_keys(out: Path) -> dict[str | None, int]:
    with sqlite3.connect(out / ".apixo-batch.sqlite") as db:
        rows = db.execute("SELECT key_fp, count(*) FROM jobs GROUP BY key_fp").fetchall()
    return {k: n for k, n in rows}


def no_key_in(tmp_path: Path, *texts: str) -> None:
    """Neither key appears in the output, the journal or the manifest."""
    blobs = [*texts]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix in ("", ".jsonl", ".sqlite", ".html", ".json"):
            blobs.append(path.read_bytes().decode("latin-1"))
    for key in (SIM_KEY, OTHER_KEY):
        assert not any(key in blob for blob in blobs), f"{key} leaked"


async def test_two_keys_share_a_slot_bound_campaign(simulator: Any, tmp_path: Path) -> None:
    """Two keys told 90 % of their slot limit: both carry tasks at once (more in flight than
    one key allows), neither meets a 429, every task is journaled under its key's
    fingerprint, and no key shows anywhere."""
    sim = await two_keys(simulator, limit=5, duration_override_s=(0.3, 0.5))
    keys = key_file(tmp_path, f"{SIM_KEY} max_concurrent=4", f"{OTHER_KEY} max_concurrent=4")
    job_file = write_campaign(tmp_path, simple_jobs(24))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--api-key-file", str(keys))
    assert res.code == 0, res.stderr
    assert res.summary["counts"]["done"] == 24
    stats = sim.stats()
    assert stats["rate_limited"] == 0
    per_key = stats["keys"]
    assert per_key[fp(SIM_KEY)]["submits"] > 0 and per_key[fp(OTHER_KEY)]["submits"] > 0
    assert per_key[fp(SIM_KEY)]["submits"] + per_key[fp(OTHER_KEY)]["submits"] == 24
    assert max(k["peak_running"] for k in per_key.values()) <= 4
    assert stats["max_concurrent_tasks"] > 4  # both keys' slots at once
    assert stats["duplicate_submits"] == 0
    assert journaled_keys(tmp_path / "out") == {
        fp(SIM_KEY): per_key[fp(SIM_KEY)]["submits"],
        fp(OTHER_KEY): per_key[fp(OTHER_KEY)]["submits"],
    }
    submitted = [e for e in res.events if e["event"] == "submitted"]
    assert {e["key"] for e in submitted} == {fp(SIM_KEY), fp(OTHER_KEY)}
    summary_keys = {k["key"]: k for k in res.summary["keys"]}
    assert set(summary_keys) == {fp(SIM_KEY), fp(OTHER_KEY)}
    assert all(k["state"] == "active" and k["max_concurrent"] == 4 for k in summary_keys.values())
    assert sum(k["submitted"] for k in summary_keys.values()) == 24
    no_key_in(tmp_path, res.stdout, res.stderr)


async def test_keys_from_the_environment_comma_separated(simulator: Any, tmp_path: Path) -> None:
    """APIXO_API_KEY may hold several keys separated by commas: both submit."""
    sim = await two_keys(simulator, limit=3, duration_override_s=(0.2, 0.3))
    job_file = write_campaign(tmp_path, simple_jobs(12))
    res = await run_cli(
        sim, "run", str(job_file), *FAST, "--max-concurrent", "3", key=f"{SIM_KEY}, {OTHER_KEY}"
    )
    assert res.code == 0, res.stderr
    per_key = sim.stats()["keys"]
    assert per_key[fp(SIM_KEY)]["submits"] > 0 and per_key[fp(OTHER_KEY)]["submits"] > 0
    assert sim.stats()["rate_limited"] == 0
    no_key_in(tmp_path, res.stdout, res.stderr)


async def test_a_key_revoked_mid_run_is_retired_and_the_others_finish(
    simulator: Any, tmp_path: Path
) -> None:
    """One of two keys revoked mid-run: every job done, none submitted twice, exit 0; the
    summary names the retired key and why."""
    sim = await two_keys(simulator, limit=3, duration_override_s=(0.3, 0.5))
    keys = key_file(tmp_path, f"{SIM_KEY} max_concurrent=3", f"{OTHER_KEY} max_concurrent=3")
    job_file = write_campaign(tmp_path, simple_jobs(30))
    proc = await start_cli(sim, "run", str(job_file), *FAST, "--api-key-file", str(keys))
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while sim.stats()["keys"][fp(OTHER_KEY)]["submits"] < 4:
        assert loop.time() < end and proc.returncode is None, "the second key never submitted"
        await asyncio.sleep(0.01)
    assert sim.revoke_key(fp(OTHER_KEY))
    res = await finish(proc)
    assert res.code == 0, res.stderr
    assert res.summary["counts"]["done"] == 30
    stats = sim.stats()
    assert stats["submits_accepted"] == 30
    assert stats["duplicate_submits"] == 0
    assert all(e["state"] == "done" for e in read_manifest(tmp_path / "out"))
    retired = {k["key"]: k for k in res.summary["keys"]}[fp(OTHER_KEY)]
    assert retired["state"] == "retired"
    assert retired["retired"].startswith("401")
    warned = [e for e in res.events if e["event"] == "warning" and e.get("key") == fp(OTHER_KEY)]
    assert len(warned) == 1 and "retired from submitting" in warned[0]["message"]
    no_key_in(tmp_path, res.stdout, res.stderr)


async def test_revoked_key_told_in_plain_summary(simulator: Any, tmp_path: Path) -> None:
    """Without --json, the summary's key lines say which key was retired and why."""
    sim = await two_keys(simulator, limit=3, duration_override_s=(0.2, 0.3))
    sim.revoke_key(OTHER_KEY)
    job_file = write_campaign(tmp_path, simple_jobs(6))
    res = await run_cli(
        sim, "run", str(job_file), "--time-scale", "0.01", key=f"{SIM_KEY},{OTHER_KEY}"
    )
    assert res.code == 0, res.stderr
    summary_line = next(line for line in res.stderr.splitlines() if "; retired: " in line)
    assert summary_line.strip().startswith(f"key {fp(OTHER_KEY)} retired: 0/")
    assert summary_line.endswith("; retired: 401: Invalid or missing API Key")
    assert f"key {fp(SIM_KEY)} active: 0/" in res.stderr
    assert sim.stats()["keys"][fp(OTHER_KEY)]["submits"] == 0


async def test_a_journal_resumed_with_one_of_its_two_keys(simulator: Any, tmp_path: Path) -> None:
    """Tasks of a key the run was not given stay in flight, told once per key, and are
    never submitted again; a later run with both keys finishes them."""
    sim = await two_keys(simulator, limit=4, duration_override_s=(3.0, 3.0))
    keys = key_file(tmp_path, SIM_KEY, OTHER_KEY)
    job_file = write_campaign(tmp_path, simple_jobs(8))
    # The first run is killed once every task is journaled: all are left in flight.
    first = await start_cli(sim, "run", str(job_file), *FAST, "--api-key-file", str(keys))
    await kill_when(first, lambda: journaled_task_ids(tmp_path / "out") == 8)
    await finish(first)
    on_other = sim.stats()["keys"][fp(OTHER_KEY)]["submits"]
    assert on_other > 0
    second = await run_cli(sim, "run", str(job_file), *FAST, key=SIM_KEY)
    told = [e for e in second.events if e["event"] == "warning" and e.get("key") == fp(OTHER_KEY)]
    assert len(told) == 1
    assert f"{on_other} task(s) in flight belong to key {fp(OTHER_KEY)}" in told[0]["message"]
    assert sim.stats()["submits_accepted"] == 8  # nothing sent again
    assert second.summary["counts"]["pending"] == on_other
    assert second.summary["counts"]["done"] == 8 - on_other
    third = await run_cli(sim, "run", str(job_file), *FAST, "--api-key-file", str(keys))
    assert third.code == 0, third.stderr
    assert third.summary["counts"]["done"] == 8
    assert sim.stats()["submits_accepted"] == 8
    no_key_in(tmp_path, second.stdout, third.stdout, third.stderr)


async def test_a_bad_key_file_line_is_one_line_naming_it(simulator: Any, tmp_path: Path) -> None:
    """An unknown setting after a key: exit 2, one line naming the file and line, no key."""
    sim = await two_keys(simulator, limit=3)
    keys = key_file(tmp_path, SIM_KEY, f"{OTHER_KEY} slots=3")
    job_file = write_campaign(tmp_path, simple_jobs(2))
    res = await run_cli(sim, "run", str(job_file), "--api-key-file", str(keys))
    assert res.code == 2
    assert f"{keys} line 3: unknown setting 'slots'" in res.stderr
    assert OTHER_KEY not in res.stderr and sim.stats()["api_requests_total"] == 0


async def test_a_key_that_no_longer_reads_leaves_its_tasks_in_flight(
    simulator: Any, tmp_path: Path
) -> None:
    """A key revoked for reads too: its tasks stay in flight (told once, never sent again
    with another key), the other key finishes the rest; the run ends with them pending."""
    sim = await two_keys(simulator, limit=3, duration_override_s=(0.6, 0.8))
    job_file = write_campaign(tmp_path, simple_jobs(16))
    proc = await start_cli(sim, "run", str(job_file), *FAST, key=f"{SIM_KEY},{OTHER_KEY}")
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while sim.stats()["keys"][fp(OTHER_KEY)]["submits"] < 2:
        assert loop.time() < end and proc.returncode is None, "the second key never submitted"
        await asyncio.sleep(0.01)
    sim.revoke_key(OTHER_KEY, reads=False)
    res = await finish(proc)
    stats = sim.stats()
    assert stats["submits_accepted"] == 16, (res.summary, res.stderr)
    assert stats["duplicate_submits"] == 0
    left = [e for e in read_manifest(tmp_path / "out") if e["state"] != "done"]
    assert left and all(e["key"] == fp(OTHER_KEY) and e["task_id"] for e in left)
    assert res.summary["counts"]["pending"] == len(left)
    told = [e for e in res.events if e["event"] == "warning" and "no longer reads" in e["message"]]
    assert len(told) == 1 and told[0]["key"] == fp(OTHER_KEY)
    assert res.code != 0
