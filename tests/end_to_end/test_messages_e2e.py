"""Messages with one next step each (issue 32): what the human output says when a run
cannot finish, and that it never says two things that disagree."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from pathlib import Path

import pytest
from e2e import (
    cli_env,
    finish,
    run_cli,
    run_env,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]
RUN_SUBMITS_THEM = "`apixo-batch run` submits them"


def _listed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_each_download_that_gave_up_is_a_line_with_its_status_and_the_command(
    simulator, tmp_path: Path
) -> None:
    """Every file request answered 5xx: the human output names each job whose download
    gave up, with the HTTP status and `apixo-batch download` (not only --json), and the
    summary's next step is that command."""
    sim = await simulator(time_scale=0.01, file_error_rate=1.0)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_cli(sim, "run", job_file, *FAST)
    assert res.code == 1, res.stderr
    for job in ("job-0000", "job-0001"):
        lines = [line for line in res.stderr.splitlines() if f"download: {job}:" in line]
        assert len(lines) == 1, res.stderr
        assert re.search(r"\(HTTP 50[023]\)", lines[0]) and "`apixo-batch download`" in lines[0]
    assert "2 pending" in res.stderr
    assert "next: `apixo-batch download` fetches the 2 result(s) whose download gave up" in (
        res.stderr
    )


async def test_a_key_refused_on_a_first_run_creates_nothing_and_says_fix_the_key(
    simulator, tmp_path: Path
) -> None:
    """A wrong key before any job could start: exit 3, no output folder, journal,
    manifest or review page; the one next step is fixing the key, and the summary does
    not claim `apixo-batch run` submits the jobs (it would be refused again)."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    res = await run_cli(sim, "run", job_file, *FAST, key="not-the-key")
    assert res.code == 3, res.stderr
    assert _listed(tmp_path) == ["campaign.yaml"]
    assert "next: fix the API key (APIXO_API_KEY or --api-key-file)" in res.stderr
    assert RUN_SUBMITS_THEM not in res.stderr
    assert "Traceback" not in res.stderr and "not-the-key" not in res.stderr
    as_json = await run_cli(sim, "run", job_file, *FAST, "--json", key="not-the-key")
    summary = as_json.summary
    assert as_json.events[-1] == summary and summary["exit_code"] == 3
    assert summary["manifest"] is None and summary["never_submitted"] == 3
    assert summary["next_step"].startswith("fix the API key")
    assert _listed(tmp_path) == ["campaign.yaml"]
    # The key fixed, the same command runs the campaign.
    assert (await run_cli(sim, "run", job_file, *FAST)).code == 0


async def test_a_key_refused_after_earlier_runs_says_fix_the_key_once(
    simulator, tmp_path: Path
) -> None:
    """A campaign half done (its budget), then a wrong key: exit 3, one next step (fix the
    key), never "`apixo-batch run` submits them" beside it."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(5)))
    assert (await run_cli(sim, "run", job_file, *FAST, "--budget", "0.6")).code == 1
    res = await run_cli(sim, "run", job_file, *FAST, key="not-the-key")
    assert res.code == 3, res.stderr
    assert res.stderr.count("next: ") == 1
    assert "next: fix the API key" in res.stderr
    assert RUN_SUBMITS_THEM not in res.stderr
    assert "3 pending job(s) were never submitted" in res.stderr


async def test_a_refused_balance_says_top_up_or_allow_partial(simulator, tmp_path: Path) -> None:
    """The balance cannot cover the campaign: exit 3 and one next step (top up, or
    --allow-partial), not "`apixo-batch run` submits them"."""
    sim = await simulator(time_scale=0.01, balance=0.1)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_cli(sim, "run", job_file, *FAST)
    assert res.code == 3, res.stderr
    nexts = [line for line in res.stderr.splitlines() if line.strip().startswith("next: ")]
    assert len(nexts) == 1 and "top up" in nexts[0] and "--allow-partial" in nexts[0]
    assert RUN_SUBMITS_THEM not in res.stderr


async def test_the_budget_says_raise_it(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(4)))
    res = await run_cli(sim, "run", job_file, *FAST, "--budget", "0.6")
    assert res.code == 1, res.stderr
    assert "next: raise --budget" in res.stderr and RUN_SUBMITS_THEM not in res.stderr


async def test_an_invalid_job_file_under_json_ends_with_a_summary_line(
    simulator, tmp_path: Path
) -> None:
    """Exit 2 follows one rule under --json, for `run` and `download` alike: the last
    line of stdout is a summary with the exit code and the error, as for a missing key."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(1)
    jobs[0]["input"]["duration"] = 7
    job_file = str(write_campaign(tmp_path, jobs))
    for command in ("run", "download"):
        res = await run_cli(sim, command, job_file, *FAST, "--json")
        assert res.code == 2, (command, res.stderr)
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        assert [e["event"] for e in lines] == ["summary"], command
        assert lines[0]["exit_code"] == 2 and "duration" in lines[0]["error"]
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


async def test_an_unreachable_api_is_told_in_plain_words(simulator, tmp_path: Path) -> None:
    """No aiohttp internals (``ssl:default [Connect call failed …]``) in what people
    read: "cannot connect to HOST:PORT (connection refused)"; and the next step is the
    same command, later."""
    sim = await simulator(time_scale=0.01)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    env = cli_env(sim) | {"APIXO_BASE_URL": f"http://127.0.0.1:{port}/api/v1"}
    res = await run_env("run", job_file, *FAST, "--max-wait", "0.02", env=env)
    assert res.code == 75, res.stderr
    assert f"cannot connect to 127.0.0.1:{port} (connection refused)" in res.stderr
    assert "ssl:default" not in res.stderr and "Connect call failed" not in res.stderr
    assert "next: run the same command once APIXO answers again" in res.stderr


async def test_an_interrupt_says_what_it_waits_for_and_tells_each_job_once(
    simulator, tmp_path: Path
) -> None:
    """Ctrl-C while submits are on the wire: "stopping: waiting up to 3 s for N submit(s)
    on the wire…" is printed during the grace; the jobs cut off are told as possibly
    submitted (the next run submits them again), not also as "never submitted"."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(12)))
    # Two requests a second: submits leave one by one, and some are still to come.
    proc = await start_cli(sim, "run", job_file, *FAST, "--rpm", "120")
    # The balance answered and a submit in: from now on every answer takes 20 s.
    for _ in range(3000):
        if sim.stats()["submits_accepted"] >= 1 or proc.returncode is not None:
            break
        await asyncio.sleep(0.01)
    sim.config.slow_rate = 1.0
    sim.config.slow_delay_s = 20.0
    await asyncio.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    res = await finish(proc, limit=30.0)
    assert res.code == 130, res.stderr
    told = r"stopping: waiting up to 3 s for (\d+) submit\(s\) on the wire"
    waiting = re.search(told, res.stderr)
    assert waiting, res.stderr
    cut = int(waiting.group(1))
    assert f"{cut} pending job(s) may have been submitted already" in res.stderr
    assert "possibly submitted twice" not in res.stderr
    never = re.search(r"(\d+) pending job\(s\) were never submitted", res.stderr)
    pending = re.search(r"(\d+) pending\n", res.stderr)
    assert never is not None and pending is not None
    # Each pending job is told once: cut off, never submitted, or a task still running.
    assert int(never.group(1)) + cut <= int(pending.group(1))
    assert res.stderr.count("next: ") == 1 and "next: run the same command again" in res.stderr
    # The next run submits the cut-off jobs again, and tells them no more.
    sim.config.slow_rate = 0.0
    again = await run_cli(sim, "run", job_file, *FAST)
    assert again.code == 0, again.stderr
    assert "may have been submitted already" not in again.stderr
