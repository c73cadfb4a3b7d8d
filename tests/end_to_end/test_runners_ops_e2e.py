"""Operating several runners end to end: the real CLI, the real simulator, a real
PostgreSQL (tests/pg.py). ``status`` shows the runners while they run; a local output
folder is refused once another host runs the campaign (unless declared shared); a
callback that reaches the wrong runner is passed on to the runner that owns the task."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import psycopg
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

#: a guard against a hang, never a measure
GUARD_S = 60.0
#: the run's waits scaled as the simulator's clock
FAST = ("--time-scale", "0.01", "--json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _status(sim: Any, job_file: Path, url: str, *, early: bool = False) -> dict[str, Any]:
    res = await run_cli(sim, "status", str(job_file), "--state", url, "--json")
    # Early on, the run may not have made its campaign yet (exit 1: nothing to tell).
    assert res.code == 0 or (early and res.code == 1), res.stderr
    found: dict[str, Any] = json.loads(res.stdout)
    return found


async def test_status_shows_the_runners_while_they_run(
    simulator: Any, tmp_path: Path, pg_url: str
) -> None:
    """While a run goes on, ``status --json`` lists it as a live runner (this host, its
    pid, its lease left, the jobs it owns by state) and the human output says the same;
    once it ended, it is a runner that left, owning nothing. A journal file's status
    has no runners."""
    sim = await simulator(time_scale=0.01, duration_override_s=(1.0, 1.5))
    job_file = write_campaign(tmp_path, simple_jobs(12))
    proc = await start_cli(
        sim, "run", str(job_file), "--state", pg_url, "--max-concurrent", "2", *FAST
    )
    seen: dict[str, Any] | None = None
    loop = asyncio.get_running_loop()
    end = loop.time() + GUARD_S
    while seen is None and proc.returncode is None and loop.time() < end:
        runners = (await _status(sim, job_file, pg_url, early=True)).get("runners") or []
        live = [r for r in runners if r["live"] and r["jobs"]]
        seen = live[0] if live else None
    assert seen is not None, "status never saw the runner at work"
    assert seen["host"] == socket.gethostname() and seen["pid"] == proc.pid
    assert seen["lease_left_s"] > 0 and seen["adopted_by"] is None and not seen["stopped"]
    assert set(seen["jobs"]) <= {"queued", "submitting", "submitted", "succeeded"}
    res = await finish(proc, GUARD_S)
    assert res.code == 0, res.stderr
    after = await _status(sim, job_file, pg_url)
    assert after["counts"] == {"done": 12}
    [gone] = after["runners"]
    assert gone["id"] == seen["id"] and gone["stopped"] and not gone["live"]
    assert gone["jobs"] == {}
    human = await run_cli(sim, "status", str(job_file), "--state", pg_url)
    assert f"#{gone['id']} {socket.gethostname()} pid {proc.pid}: left" in human.stdout
    assert "runners     0 live of 1" in human.stdout
    lite = tmp_path / "lite"
    lite.mkdir()
    lite_file = write_campaign(lite, simple_jobs(2))
    assert (await run_cli(sim, "run", str(lite_file), *FAST)).code == 0
    plain = await run_cli(sim, "status", str(lite_file), "--json")
    assert "runners" not in json.loads(plain.stdout)
    assert "  runners  " not in (await run_cli(sim, "status", str(lite_file))).stdout


def _other_host_joins(url: str, host: str) -> None:
    """A live runner of campaign 'e2e' on another host (its lease runs an hour)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO runners (campaign, host, pid, version, lease_until) "
            "VALUES ('e2e', %s, 4242, 'other', clock_timestamp() + interval '1 hour')",
            (host,),
        )


async def test_a_local_folder_is_refused_once_another_host_runs_the_campaign(
    simulator: Any, tmp_path: Path, pg_url: str
) -> None:
    """A runner whose output is a local folder joins a campaign another host runs: one
    line naming that host, exit 2, nothing sent. Declared a shared mount (--shared-out,
    or output.shared in the job file), it runs to the end."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    first = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert first.code == 0, first.stderr
    sent = sim.stats()["submits_accepted"]
    job_file = write_campaign(tmp_path, simple_jobs(4))
    _other_host_joins(pg_url, "render-b.example")
    refused = await run_cli(sim, "run", str(job_file), "--state", pg_url, "--time-scale", "0.01")
    assert refused.code == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "render-b.example" in lines[0] and "--shared-out" in lines[0]
    assert "Traceback" not in refused.stderr
    assert sim.stats()["submits_accepted"] == sent
    shared = await run_cli(
        sim, "run", str(job_file), "--state", pg_url, "--shared-out", *FAST, "--leave-early"
    )
    assert shared.code == 0, shared.stderr
    assert sim.stats()["submits_accepted"] == sent + 2
    manifest = read_manifest(tmp_path / "out")
    assert {e["state"] for e in manifest} == {"done"} and len(manifest) == 4
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    job_file = write_campaign(
        tmp_path,
        simple_jobs(5),
        output={"dir": "out", "filename": "{id}.mp4", "shared": True},
    )
    keyed = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST, "--leave-early")
    assert keyed.code == 0, keyed.stderr
    assert sim.stats()["submits_accepted"] == sent + 3


async def test_a_callback_for_another_runners_task_reaches_it(
    simulator: Any, tmp_path: Path, pg_url: str
) -> None:
    """Two runners in callback mode behind one public URL (runner a's receiver): the
    callbacks of runner b's tasks reach a, which passes them on (NOTIFY); b settles them
    as its own callbacks. Every job is done byte-exact, each submitted once."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.5, 1.0))
    job_file = write_campaign(tmp_path, simple_jobs(24))
    public = _free_port()
    args = ["run", str(job_file), "--state", pg_url, *FAST, "--max-concurrent", "4"]
    url = f"http://127.0.0.1:{public}/apixo"
    a = await start_cli(sim, *args, "--callback-url", url, "--listen", f"127.0.0.1:{public}")
    b = await start_cli(sim, *args, "--callback-url", url, "--listen", f"127.0.0.1:{_free_port()}")
    res_a, res_b = await asyncio.gather(finish(a, GUARD_S), finish(b, GUARD_S))
    assert (res_a.code, res_b.code) == (0, 0), res_a.stderr + res_b.stderr
    b_jobs = {e["job"] for e in res_b.events if e.get("event") == "submitted"}
    assert b_jobs, "runner b got no job: nothing crossed the relay"
    b_arrived = {e["job"]: e["via"] for e in res_b.events if e.get("event") == "succeeded"}
    # b's callbacks all went to a's receiver: b heard of its tasks only through a.
    assert b_arrived == {job: "callback" for job in b_jobs}
    assert sim.stats()["submits_accepted"] == 24
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 24 and {e["state"] for e in manifest} == {"done"}
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
