"""The end-of-run summary for people, read from the typed summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

from stagefakes import job_row

from apixo_batch.exitcodes import ExitCode
from apixo_batch.journal import JobRow, JobState
from apixo_batch.pipeline import RunResult
from apixo_batch.pipeline.turnaround import TurnaroundStats
from apixo_batch.reports.manifest import manifest_entry, render_summary, write_manifest


def test_the_summary_for_people_says_every_figure_a_run_has() -> None:
    """Counts, requests, times, learned limits, the per-model table, spend, doubts,
    failure codes (five ids, then the count), stops and where the files are."""
    result = RunResult(
        ExitCode.FAILED_JOBS,
        {"done": 7, "failed": 2, "expired": 1, "pending": 3},
        submitted=9,
        possibly_duplicated=1,
        requests=40,
        rate_limited=3,
        learned_rpm=587.6,
        learned_limit="98 per 10 s, sliding window",
        learned_slots=12,
        slot_turnaround=TurnaroundStats(count=5, p50=0.01234, p90=0.5, max=1.0),
        planned_wall_s=3725.44,
        retries=4,
        wall_s=7321.27,
        spent_usd=3.456789,
        unknown_price_jobs=2,
        stop_reason="--budget $5.00 reached",
        interrupted=True,
        input_changed=["a"],
        arrived={"poll": 5, "callback": 4},
        fail_codes={"X": ["a", "b", "c", "d", "e", "f"], "Y": ["g"]},
        per_model={"kling-2-6": {"done": 5, "failed": 2}, "wan-2-5": {"done": 2, "pending": 3}},
        never_submitted=2,
        manifest=Path("/o/manifest.jsonl"),
        output_dir=None,
    )
    out = io.StringIO()
    render_summary(result.summary(), out)
    assert out.getvalue().splitlines() == [
        "",
        "apixo-batch: 13 jobs: 7 done, 2 failed, 1 expired, 3 pending",
        "  submitted 9 this run, 40 API requests (4.444 per task), 3 rate-limited, 4 retried",
        "  took 2 h 2 min, planned 1 h 2 min; a freed slot's next submit left after 0.012 s "
        "(p50), 0.500 s (p90)",
        "  the account accepted about 588 requests/min (98 per 10 s, sliding window): the next "
        "run starts just under it",
        "  the account held about 12 tasks at once (submits over it were answered 429 and "
        "waited for a slot)",
        "  model         done   failed  expired  pending",
        "  kling-2-6        5        2        0        0",
        "  wan-2-5          2        0        0        3",
        "  estimated spend $3.46 + 2 job(s) of unknown price",
        "  1 job(s) possibly submitted twice (a submit was cut off before its answer was "
        "journaled)",
        "  results arrived by poll: 5, callback: 4",
        "  X x6: a, b, c, d, e, ... (6 in all)",
        "  Y x1: g",
        "  warning: job a changed after it was submitted",
        "  2 pending job(s) were never submitted: `apixo-batch run` submits them (`download` "
        "only fetches what was)",
        "  stopped submitting: --budget $5.00 reached",
        "  interrupted: run the same command again to resume",
        "  files in None, manifest /o/manifest.jsonl",
    ]


def test_a_quiet_run_summarises_in_three_lines() -> None:
    """Nothing learned, failed or doubted: jobs, requests, time and spend only."""
    result = RunResult(ExitCode.OK, {"done": 2}, submitted=2, requests=6, wall_s=4.25)
    out = io.StringIO()
    render_summary(result.summary(), out)
    assert out.getvalue().splitlines() == [
        "",
        "apixo-batch: 2 jobs: 2 done, 0 failed, 0 expired, 0 pending",
        "  submitted 2 this run, 6 API requests (3.0 per task), 0 rate-limited, 0 retried",
        "  took 4.2 s",
        "  estimated spend $0.00",
    ]


def test_the_summary_says_took_and_planned_as_the_docs_quote() -> None:
    """The summary a run ends with, as docs/commands.md quotes it: whole minutes say no
    seconds ("41 min", not "41 min 0 s"), in the one voice plan and the progress line use."""
    out = io.StringIO()
    result = RunResult(ExitCode.OK, {}, wall_s=41 * 60.0, planned_wall_s=39 * 60.0)
    render_summary(result.summary(), out)
    assert "  took 41 min, planned 39 min\n" in out.getvalue()


def test_one_job_one_request_and_one_next_step() -> None:
    """ "1 job", "1 API request" (not "1 jobs"); after a stop, the next step is the one
    remedy and the pending jobs are only counted ("`run` submits them" would contradict
    it: the same run would be refused again)."""
    result = RunResult(
        ExitCode.FATAL_API,
        {"pending": 1},
        requests=1,
        stop_reason="the API refused: APIXO 401 (balance): Invalid key",
        never_submitted=1,
        next_step="fix the API key (APIXO_API_KEY or --api-key-file), then run the same command",
    )
    out = io.StringIO()
    render_summary(result.summary(), out)
    lines = out.getvalue().splitlines()
    assert lines[1] == "apixo-batch: 1 job: 0 done, 0 failed, 0 expired, 1 pending"
    assert lines[2].startswith("  submitted 0 this run, 1 API request, ")
    assert "  1 pending job(s) were never submitted" in lines
    assert not any("submits them" in line for line in lines)
    assert lines[-1] == (
        "  next: fix the API key (APIXO_API_KEY or --api-key-file), then run the same command"
    )


def test_a_cut_off_submit_is_told_once_not_as_twice_and_never() -> None:
    """Jobs whose submit was cut off on the wire are pending with a doubt: told as "may
    have been submitted already", neither as "possibly submitted twice" nor as "never
    submitted" (they were once counted in both)."""
    result = RunResult(
        ExitCode.INTERRUPTED,
        {"pending": 5},
        possibly_duplicated=3,
        submit_cut_off=2,
        never_submitted=3,
        interrupted=True,
        next_step="run the same command again to resume",
    )
    out = io.StringIO()
    render_summary(result.summary(), out)
    text = out.getvalue()
    assert "  1 job(s) possibly submitted twice" in text  # the one not pending any more
    assert "  2 pending job(s) may have been submitted already (the answer was cut off)" in text
    assert "  3 pending job(s) were never submitted\n" in text
    assert "  interrupted\n" in text and text.count("next: ") == 1


def test_a_jobs_stray_tasks_are_listed_with_it(tmp_path: Path) -> None:
    """Several runners: a paid task of a job besides its own (a stray) is listed with
    its job, task id, end and result URLs; a job without one carries no such key."""
    rows = [_done_row(0), _done_row(1)]
    stray = {"task_id": "t-s", "state": "success", "result_urls": ["https://r/s.mp4"],
             "fail_code": None}  # fmt: skip
    path = tmp_path / "manifest.jsonl"
    write_manifest(rows, path, None, {"job-1": [stray]})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "stray_tasks" not in lines[0]
    assert lines[1]["stray_tasks"] == [stray]
    assert manifest_entry(rows[0])["task_id"] == "task-0"


def _done_row(n: int) -> JobRow:
    return job_row(n, JobState.DONE)
