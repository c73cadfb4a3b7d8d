"""Bad nights (issue 20): every mistake and broken environment is a line and an exit code,
never a traceback; --json and -v are JSON on every line, a summary last."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from e2e import SIM_KEY, cli_env, read_manifest, run_cli, run_env, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]


def _one_clean_line(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "1e400"])
async def test_a_time_scale_that_is_not_a_finite_positive_number_is_refused(
    simulator, tmp_path: Path, value: str
) -> None:
    """Refused before anything is created: exit 2, one line naming --time-scale."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    res = await run_cli(sim, "run", job_file, f"--time-scale={value}")
    assert res.code == 2
    _one_clean_line(res.stderr, "--time-scale")
    assert not (tmp_path / "out").exists()
    assert sim.stats()["requests_total"] == 0


async def test_a_journal_holding_inf_expiries_is_still_read(simulator, tmp_path: Path) -> None:
    """A journal an older version wrote with --time-scale inf (expires_at = inf): status,
    download and run read it, the expiry as unknown, no OverflowError."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    assert (await run_cli(sim, "run", job_file, *FAST)).code == 0
    db = sqlite3.connect(tmp_path / "out" / ".apixo-batch.sqlite")
    with db:
        db.execute("UPDATE jobs SET state='succeeded', expires_at=?, files=NULL", (float("inf"),))
    db.close()
    status = await run_cli(sim, "status", job_file, "--json")
    assert status.code == 0, status.stderr
    assert {r["expires_at"] for r in json.loads(status.stdout)["not_downloaded"]} == {None}
    download = await run_cli(sim, "download", job_file, *FAST)
    assert download.code == 0, download.stderr
    assert {e["state"] for e in read_manifest(tmp_path / "out")} == {"done"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--out", "afile/sub"], "afile is a file, not a folder"),
        (["--out", "afile"], "it is a file, not a folder"),
        (["--state", "afile/journal.sqlite"], "afile is a file, not a folder"),
        (["--state", "adir"], "it is a folder, not a file"),
    ],
    ids=["out-under-a-file", "out-is-a-file", "state-under-a-file", "state-is-a-folder"],
)
async def test_paths_that_cannot_exist_are_one_line_and_exit_2(
    simulator, tmp_path: Path, args: list[str], named: str
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "adir").mkdir()
    where = [str(tmp_path / a) if not a.startswith("--") else a for a in args]
    res = await run_cli(sim, "run", job_file, *FAST, *where)
    assert res.code == 2
    _one_clean_line(res.stderr, named)
    assert sim.stats()["requests_total"] == 0
    as_json = await run_cli(sim, "run", job_file, *FAST, *where, "--json")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["summary"]
    assert lines[-1]["exit_code"] == 2 and named in lines[-1]["error"]


async def test_verbose_is_json_on_every_line_with_the_summary_last(
    simulator, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    res = await run_cli(sim, "run", job_file, *FAST, "-v")
    assert res.code == 0
    events = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON
    assert events[0]["event"] == "started" and events[-1]["event"] == "summary"
    assert sum(e["event"] == "summary" for e in events) == 1


async def test_json_without_a_key_is_a_summary_and_no_started(simulator, tmp_path: Path) -> None:
    """No key: nothing is started; stdout holds one summary with the exit code and error."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    env = cli_env(sim, SIM_KEY)
    del env["APIXO_API_KEY"]
    res = await run_env("run", job_file, *FAST, "--json", env=env)
    assert res.code == 2
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in events] == ["summary"]
    assert events[0]["exit_code"] == 2 and "APIXO_API_KEY" in events[0]["error"]
    _one_clean_line(res.stderr, "APIXO_API_KEY")


async def test_a_warning_never_comes_before_started(simulator, tmp_path: Path) -> None:
    """An input changed after its submit warns, after `started`."""
    sim = await simulator(time_scale=0.01, duration_override_s=(30.0, 30.0))
    jobs = simple_jobs(1)
    job_file = str(write_campaign(tmp_path, jobs))
    first = await run_cli(sim, "run", job_file, *FAST, "--json", "--max-wait", "0.001")
    assert first.code == 1
    jobs[0]["input"]["prompt"] = "changed after the submit"
    write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", job_file, *FAST, "--json", "--max-wait", "0.001")
    kinds = [e["event"] for e in res.events]
    assert kinds[0] == "started" and "warning" in kinds and kinds[-1] == "summary"


async def test_the_manifest_is_as_readable_as_the_videos(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    assert (await run_cli(sim, "run", job_file, *FAST)).code == 0
    out = tmp_path / "out"
    video = stat.S_IMODE((out / "job-0000.mp4").stat().st_mode)
    manifest = stat.S_IMODE((out / "manifest.jsonl").stat().st_mode)
    assert manifest == video and manifest & 0o044  # group and others may read, as umask says


async def test_download_says_which_pending_jobs_were_never_submitted(
    simulator, tmp_path: Path
) -> None:
    """A run stopped before every submit (here, by its budget): `download` says the pending
    jobs were never submitted, and that `run` submits them."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(5)))
    assert (await run_cli(sim, "run", job_file, *FAST, "--budget", "0.6")).code == 1
    res = await run_cli(sim, "download", job_file, *FAST)
    assert "3 pending job(s) were never submitted: `apixo-batch run` submits them" in res.stderr
    summary = (await run_cli(sim, "download", job_file, *FAST, "--json")).summary
    assert summary["never_submitted"] == 3


async def test_a_journal_that_is_not_one_is_a_line_and_exit_74(simulator, tmp_path: Path) -> None:
    """run, download and status on a damaged journal: one line naming it, exit 74, and
    the file left as it was (nothing overwritten that could still be recovered)."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    out = tmp_path / "out"
    out.mkdir()
    damaged = out / ".apixo-batch.sqlite"
    damaged.write_bytes(b"not a database at all")
    for command in (["run", *FAST], ["download", *FAST], ["status"]):
        res = await run_cli(sim, command[0], job_file, *command[1:])
        assert res.code == 74, (command, res.stderr)
        _one_clean_line(res.stderr, str(damaged), "cannot be opened")
    assert damaged.read_bytes() == b"not a database at all"
    assert sim.stats()["requests_total"] == 0
