"""A run that survives its terminal: a reader of stdout or stderr that goes away, and a
terminal that hangs up (SIGHUP), against the real CLI and the simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from e2e import (
    cli_env,
    finish,
    journaled_task_ids,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]


async def _start_piped(
    env: dict[str, str], *args: str, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    """``apixo-batch ARGS`` writing into the pipe ends given (the caller reads, or not)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apixo_batch",
        *args,
        env=env,
        stdout=stdout,
        stderr=stderr,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def _stderr_and_code(proc: asyncio.subprocess.Process, limit: float) -> tuple[int, str]:
    """Wait for the end of a CLI whose stdout is not ours to read: (exit code, stderr)."""
    _, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, err.decode() if err is not None else ""


def _head(fd: int, lines: int) -> list[str]:
    """What ``head -N`` does: read N lines, then close the pipe for good."""
    with os.fdopen(fd, "r", encoding="utf-8") as reader:
        return [reader.readline() for _ in range(lines)]


async def test_json_piped_into_head_5_does_not_end_the_run(simulator, tmp_path: Path) -> None:
    """``run --json | head -5``: the reader leaves after five lines; the run goes on to
    exit 0 with every job done and in the manifest, says once on stderr that stdout
    closed, and never exits 70."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.5, 1.0))
    job_file = write_campaign(tmp_path, simple_jobs(20))
    read_end, write_end = os.pipe()
    proc = await _start_piped(
        cli_env(sim),
        "run",
        str(job_file),
        *FAST,
        "--json",
        "--max-concurrent",
        "5",
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    head = await asyncio.to_thread(_head, read_end, 5)
    assert len(head) == 5 and all(line.startswith("{") for line in head), head
    code, err = await _stderr_and_code(proc, 60)
    assert code == 0, err
    assert "internal error" not in err and "Traceback" not in err
    assert err.count("stdout was closed") == 1, err
    manifest = read_manifest(tmp_path / "out")
    assert [e["state"] for e in manifest] == ["done"] * 20
    assert all((tmp_path / "out" / e["files"][0]).is_file() for e in manifest)
    stats = sim.stats()
    assert stats["submits_accepted"] == 20 and stats["duplicate_submits"] == 0


async def test_a_closed_stderr_does_not_end_the_run(simulator, tmp_path: Path) -> None:
    """A log shipper reading stderr dies before the run starts: plain progress lines and
    the summary have nowhere to go, the run still ends exit 0 with everything done."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(6))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read it
    proc = await _start_piped(
        cli_env(sim),
        "run",
        str(job_file),
        *FAST,
        stdout=asyncio.subprocess.PIPE,
        stderr=write_end,
    )
    os.close(write_end)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert out.decode().count("\n") == 0  # no --json: a run writes nothing on stdout
    assert [e["state"] for e in read_manifest(tmp_path / "out")] == ["done"] * 6


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
async def test_status_into_a_closed_pipe_exits_quietly(
    simulator, tmp_path: Path, json_flag: list[str]
) -> None:
    """``status | head -2``: the reader gone before status writes (as it is when head has
    its lines before status flushes): exit 0, no "internal error", no traceback, nothing
    about a broken pipe."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    assert (await run_cli(sim, "run", str(job_file), *FAST, "--json")).code == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = await _start_piped(
        cli_env(sim),
        "status",
        str(job_file),
        *json_flag,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    code, err = await _stderr_and_code(proc, 30)
    assert (code, err) == (0, "")


async def test_sighup_stops_like_sigterm_and_a_rerun_pays_nothing_twice(
    simulator, tmp_path: Path
) -> None:
    """SIGHUP mid-run (the SSH session dropped): exit 130 with the manifest written and the
    tasks on the wire journaled, not a signal death (129); the same command then finishes
    without one submit paid twice."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 3.0))
    job_file = write_campaign(tmp_path, simple_jobs(30))
    proc = await start_cli(sim, "run", str(job_file), *FAST, "--json", "--max-concurrent", "10")
    await kill_when(proc, lambda: sim.stats()["submits_accepted"] >= 10, sig=signal.SIGHUP)
    res = await finish(proc, limit=15)
    assert res.code == 130, res.stderr
    assert "internal error" not in res.stderr
    assert res.summary["interrupted"] is True
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 30
    paid = sim.stats()["submits_accepted"]
    # Every task APIXO accepted is journaled: none is paid again by the rerun.
    assert journaled_task_ids(tmp_path / "out") == paid
    assert any(e["state"] == "pending" and e["task_id"] for e in manifest)
    again = await run_cli(sim, "run", str(job_file), *FAST, "--json")
    assert again.code == 0, again.stderr
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0 and stats["submits_accepted"] == 30
    assert again.summary["submitted"] == 30 - paid


async def test_sighup_is_left_alone_under_nohup(simulator, tmp_path: Path) -> None:
    """Started with SIGHUP ignored (``nohup``): a hangup does not stop the run."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.5, 1.0))
    job_file = write_campaign(tmp_path, simple_jobs(12))
    env = cli_env(sim)
    proc = await asyncio.create_subprocess_exec(
        "nohup",
        sys.executable,
        "-m",
        "apixo_batch",
        "run",
        str(job_file),
        *FAST,
        "--json",
        "--max-concurrent",
        "4",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    await kill_when(proc, lambda: sim.stats()["submits_accepted"] >= 2, sig=signal.SIGHUP)
    res = await finish(proc, limit=60)
    assert res.code == 0, res.stderr
    assert res.summary["interrupted"] is False
    assert [e["state"] for e in read_manifest(tmp_path / "out")] == ["done"] * 12
