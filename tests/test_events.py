"""The --json stream: one JSON event per line on stdout, per-job order, one summary at the end."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, get_args

import pytest
from e2e import (
    finish,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

from apixo_batch.events import EventKind

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]

#: every kind the engine may emit
KINDS = set(get_args(EventKind))
#: kinds that are about one job and so carry "job"
PER_JOB = {"submitted", "running", "succeeded", "downloaded", "failed", "expired", "pending"}
#: kinds about the run as a whole
RUN_WIDE = {"started", "stopped", "summary"}

SUMMARY_FIELDS = {
    "exit_code",
    "counts",
    "jobs",
    "submitted",
    "possibly_duplicated",
    "requests",
    "requests_per_task",
    "rate_limited",
    "retries",
    "wall_s",
    "spent_usd",
    "unknown_price_jobs",
    "fatal",
    "stop_reason",
    "interrupted",
    "input_changed",
    "arrived",
    "fail_codes",
    "manifest",
    "output_dir",
}


def parse_stream(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object with the keys every event has, or fail."""
    events: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        event = json.loads(line)  # nothing but JSON on stdout
        assert isinstance(event, dict), line
        assert event["event"] in KINDS, line
        assert isinstance(event["at"], int | float) and event["at"] > 1.6e9, line
        if event["event"] in PER_JOB:
            assert isinstance(event["job"], str) and event["job"], line
        if event["event"] in RUN_WIDE:
            assert "job" not in event, line
        events.append(event)
    return events


def kinds_of(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["event"] for e in events if e.get("job") == job_id]


async def test_every_stdout_line_is_a_json_event(simulator, tmp_path: Path) -> None:
    """stdout holds only JSON objects, each with `event` and `at`, `job` on per-job events."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(5))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    events = parse_stream(res.stdout)
    assert res.stdout.endswith("\n")
    assert len(events) == len(res.stdout.splitlines()) > 5 * 3
    assert events[0]["event"] == "started"
    assert events[0]["jobs"] == 5 and events[0]["queued"] == 5


async def test_each_job_goes_submitted_succeeded_downloaded(simulator, tmp_path: Path) -> None:
    """Per job: submitted → (running) → succeeded → downloaded, once each, in that order."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(4)
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    events = parse_stream(res.stdout)
    manifest = {e["id"]: e for e in read_manifest(tmp_path / "out")}
    for job in jobs:
        seen = kinds_of(events, job["id"])
        assert seen in (
            ["submitted", "succeeded", "downloaded"],
            ["submitted", "running", "succeeded", "downloaded"],
        ), (job["id"], seen)
        by_kind = {e["event"]: e for e in events if e.get("job") == job["id"]}
        assert by_kind["submitted"]["task_id"] == manifest[job["id"]]["task_id"]
        assert by_kind["succeeded"]["task_id"] == manifest[job["id"]]["task_id"]
        assert by_kind["downloaded"]["files"] == [f"{job['id']}.mp4"]
        assert by_kind["downloaded"]["bytes"] == manifest[job["id"]]["bytes"]
    times = [e["at"] for e in events]
    assert times == sorted(times)


async def test_exactly_one_summary_last_with_documented_fields(simulator, tmp_path: Path) -> None:
    """One `summary`, the last line, with every documented field and consistent figures."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    events = parse_stream(res.stdout)
    summaries = [e for e in events if e["event"] == "summary"]
    assert len(summaries) == 1 and events[-1] is summaries[0]
    summary = summaries[0]
    assert SUMMARY_FIELDS <= set(summary), SUMMARY_FIELDS - set(summary)
    assert summary["exit_code"] == 0
    assert summary["counts"] == {"done": 3, "failed": 0, "expired": 0, "pending": 0}
    assert summary["jobs"] == 3 and summary["submitted"] == 3
    assert summary["possibly_duplicated"] == 0
    assert summary["requests"] >= 4  # balance + 3 submits + polls
    assert summary["requests_per_task"] == pytest.approx(summary["requests"] / 3, abs=1e-3)
    assert summary["spent_usd"] == pytest.approx(0.9)
    assert summary["unknown_price_jobs"] == 0
    assert summary["fatal"] is None and summary["stop_reason"] is None
    assert summary["interrupted"] is False
    assert summary["input_changed"] == [] and summary["fail_codes"] == {}
    assert summary["arrived"] == {"poll": 3}
    assert summary["wall_s"] > 0
    assert Path(summary["manifest"]) == (tmp_path / "out" / "manifest.jsonl").resolve()
    assert Path(summary["output_dir"]) == (tmp_path / "out").resolve()


async def test_failed_job_emits_failed_with_fail_code(simulator, tmp_path: Path) -> None:
    """A task that fails emits `failed` with the API's failCode; the summary lists it."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(3)
    jobs[2]["input"]["prompt"] = "an nsfw scene"
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    events = parse_stream(res.stdout)
    assert kinds_of(events, "job-0002")[0] == "submitted"
    assert kinds_of(events, "job-0002")[-1] == "failed"
    assert "downloaded" not in kinds_of(events, "job-0002")
    [failed] = [e for e in events if e["event"] == "failed"]
    assert failed["job"] == "job-0002"
    assert failed["fail_code"] == "SensitiveContentDetected"
    assert failed["fail_msg"]
    assert res.summary["exit_code"] == 1
    assert res.summary["fail_codes"] == {"SensitiveContentDetected": ["job-0002"]}
    assert res.summary["counts"]["failed"] == 1


async def test_rate_limits_and_faults_show_as_events_and_all_finish(
    simulator, tmp_path: Path
) -> None:
    """429s (the simulator's limit is below --rpm) and 5xx appear as events; all jobs done."""
    sim = await simulator(
        time_scale=0.01, rpm_limit=6, rpm_window_s=1.0, error_rate_500=0.1, seed=11
    )
    jobs = simple_jobs(6)
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST, "--rpm", "600", limit=90)
    assert res.code == 0, res.stderr
    events = parse_stream(res.stdout)
    limited = [e for e in events if e["event"] == "rate-limited"]
    retried = [e for e in events if e["event"] == "retried"]
    assert limited and retried
    assert all(e["job"] in {j["id"] for j in jobs} for e in limited + retried)
    assert all(e["call"] in {"submit", "status", "download"} and e["error"] for e in retried)
    stats = sim.stats()
    assert stats["rate_limited"] > 0 and stats["faults"].get("500", 0) > 0
    summary = res.summary
    assert summary["counts"]["done"] == 6
    assert summary["rate_limited"] > 0 and summary["retries"] > 0
    for job in jobs:
        assert kinds_of(events, job["id"])[-1] == "downloaded"


async def test_stderr_may_talk_but_stdout_stays_json_on_errors(simulator, tmp_path: Path) -> None:
    """An invalid job file under --json: exit 2, the message on stderr, stdout JSON only:
    one summary line that carries the exit code and the error (as every run ends)."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(1)
    jobs[0]["input"]["duration"] = 7
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 2
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["summary"]
    assert lines[0]["exit_code"] == 2 and "duration" in lines[0]["error"]
    assert "duration" in res.stderr


async def test_api_key_never_in_the_json_stream(simulator, tmp_path: Path) -> None:
    """The key appears in no event, whether the run succeeds or the key is refused."""
    key = "sk-live-JSON-STREAM-SECRET-0123456789"
    sim = await simulator(time_scale=0.01, api_key=key)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    res = await run_cli(sim, "run", str(job_file), *FAST, key=key)
    assert res.code == 0, res.stderr
    parse_stream(res.stdout)
    assert key not in res.stdout + res.stderr
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    other = write_campaign(bad_dir, simple_jobs(2))
    wrong = "sk-live-WRONG-KEY-ALSO-SECRET-9876543210"
    refused = await run_cli(sim, "run", str(other), *FAST, key=wrong)
    assert refused.code == 3
    events = parse_stream(refused.stdout)
    assert events[-1]["event"] == "summary" and events[-1]["fatal"]
    assert wrong not in refused.stdout + refused.stderr
    assert key not in refused.stdout + refused.stderr


async def test_interrupt_still_ends_the_stream_with_a_summary(simulator, tmp_path: Path) -> None:
    """SIGTERM mid-run: the stream stays JSON and ends with a summary saying interrupted."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 3.0))
    job_file = write_campaign(tmp_path, simple_jobs(6))
    proc = await start_cli(sim, "run", str(job_file), *FAST)
    await kill_when(proc, lambda: sim.stats()["submits_accepted"] >= 6, sig=signal.SIGTERM)
    res = await finish(proc, limit=20)
    assert res.code == 130, res.stderr
    events = parse_stream(res.stdout)
    assert events[-1]["event"] == "summary"
    assert events[-1]["interrupted"] is True and events[-1]["exit_code"] == 130
    assert events[-1]["counts"]["pending"] == 6


async def test_interrupt_reports_every_journaled_submit(simulator, tmp_path: Path) -> None:
    """SIGTERM right after a burst of submits: every task id journaled has its `submitted`
    event, and the summary counts it."""
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    for attempt in range(5):  # the window is narrow: five bursts make a miss unlikely
        root = tmp_path / f"round-{attempt}"
        root.mkdir()
        jobs = simple_jobs(20, prefix=f"r{attempt}")
        job_file = write_campaign(root, jobs)
        before = sim.stats()["submits_accepted"]
        proc = await start_cli(sim, "run", str(job_file), *FAST)
        await kill_when(
            proc, lambda b=before: sim.stats()["submits_accepted"] >= b + 20, sig=signal.SIGTERM
        )
        res = await finish(proc, limit=20)
        assert res.code == 130, res.stderr
        events = parse_stream(res.stdout)
        journaled = {e["id"] for e in read_manifest(root / "out") if e["task_id"]}
        announced = {e["job"] for e in events if e["event"] == "submitted"}
        assert journaled == {j["id"] for j in jobs}  # no paid task id was lost
        assert announced == journaled, sorted(journaled - announced)
        assert events[-1]["submitted"] == len(journaled)


async def test_task_past_max_wait_emits_pending(simulator, tmp_path: Path) -> None:
    """A task still running at --max-wait emits `pending` with its job and task id."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 2.0))
    job_file = write_campaign(tmp_path, simple_jobs(1))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-wait", "0.005")
    assert res.code == 1, res.stderr
    events = parse_stream(res.stdout)
    [pending] = [e for e in events if e["event"] == "pending"]
    [entry] = read_manifest(tmp_path / "out")
    assert pending["job"] == "job-0000" and pending["task_id"] == entry["task_id"]
    assert "--max-wait" in pending["message"]
    assert events[-1]["event"] == "summary" and events[-1]["counts"]["pending"] == 1
