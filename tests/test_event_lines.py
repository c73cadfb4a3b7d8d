"""Each event kind as a typed value: its ``--json`` line keeps the documented keys in
their order, embedders read ``kind``/``job_id``/``at``/``data``, and the emitter stamps
the run's clock. (``test_events.py`` checks the stream of a real run.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_args

import pytest

from apixo_batch.clock import FakeClock
from apixo_batch.events import (
    Downloaded,
    Emitter,
    Event,
    EventKind,
    Expired,
    Failed,
    Pending,
    Preflight,
    Retried,
    Running,
    Started,
    Stopped,
    Submitted,
    Succeeded,
    Summary,
    Throttled,
    Warned,
)
from apixo_batch.exitcodes import ExitCode
from apixo_batch.pipeline import RunResult, summary_dict
from apixo_batch.pipeline.turnaround import TurnaroundStats
from apixo_batch.reports.manifest import event_line

#: one of each kind, with the keys the engine emitted as ``**data`` before they were typed
SAMPLES: list[tuple[Event, list[str]]] = [
    (
        Started(
            per_model={"kling-2-6": {"queued": 3}},
            spent_usd=0.0,
            jobs=3,
            queued=3,
            in_flight=0,
            to_download=0,
            done=0,
            estimated_cost_usd=0.9,
            unknown_price_jobs=0,
            planned_wall_s=None,
        ),
        [
            "per_model",
            "spent_usd",
            "jobs",
            "queued",
            "in_flight",
            "to_download",
            "done",
            "estimated_cost_usd",
            "unknown_price_jobs",
            "planned_wall_s",
        ],
    ),
    (
        Preflight(message="m", balance_usd=9.0, estimated_usd=0.9, unknown_price_jobs=0),
        ["message", "balance_usd", "estimated_usd", "unknown_price_jobs"],
    ),
    (Submitted("j", task_id="t", model="m"), ["job", "task_id", "model"]),
    (Running("j", task_id="t", model="m"), ["job", "task_id", "model"]),
    (
        Succeeded("j", task_id="t", model="m", via="poll", urls=1),
        ["job", "task_id", "model", "via", "urls"],
    ),
    (
        Downloaded("j", model="m", files=["j.mp4"], bytes=10),
        ["job", "model", "files", "bytes"],
    ),
    (
        Downloaded("j", model="m", files=["j.mp4"], bytes=10, found=1),
        ["job", "model", "files", "bytes", "found"],
    ),
    (
        Failed("j", model="m", fail_code="SUBMIT_ERROR", fail_msg="no"),
        ["job", "model", "fail_code", "fail_msg"],
    ),
    (
        Failed("j", task_id="t", model="m", fail_code=None, fail_msg=None),
        ["job", "task_id", "model", "fail_code", "fail_msg"],
    ),
    (Expired("j", model="m", message="gone"), ["job", "model", "message"]),
    (Retried("j", call="status", error="e"), ["job", "call", "error"]),
    (Retried("j", call="submit", attempt=2, error="e"), ["job", "call", "attempt", "error"]),
    (Throttled("j", retry_after=None), ["job", "retry_after"]),
    (Throttled("j", retry_after=2.0, slots=False), ["job", "retry_after", "slots"]),
    (
        Pending("j", task_id="t", model="m", message="m"),
        ["job", "task_id", "model", "message"],
    ),
    (Warned(message="m"), ["message"]),
    (Warned("j", task_id="t", message="m"), ["job", "task_id", "message"]),
    (Stopped(reason="r"), ["reason"]),
    (Stopped(reason="r", balance_usd=0.0), ["reason", "balance_usd"]),
]

SUMMARY_KEYS = [
    "exit_code",
    "counts",
    "jobs",
    "submitted",
    "possibly_duplicated",
    "requests",
    "requests_per_task",
    "rate_limited",
    "learned_rpm",
    "learned_limit",
    "learned_slots",
    "slot_turnaround_s",
    "retries",
    "wall_s",
    "planned_wall_s",
    "spent_usd",
    "unknown_price_jobs",
    "fatal",
    "stop_reason",
    "interrupted",
    "input_changed",
    "arrived",
    "fail_codes",
    "fail_counts",
    "per_model",
    "never_submitted",
    "manifest",
    "review",
    "output_dir",
    "store_requests",
    "next_step",
    "submit_cut_off",
]


def busy_result() -> RunResult:
    return RunResult(
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
        wall_s=7321.2712,
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
        review=Path("/o/review.html"),
        store_requests={"put": 3},
    )


def test_one_class_per_kind() -> None:
    """Every kind the stream documents has its class, and no two classes share a kind."""
    classes = [type(event) for event, _ in SAMPLES] + [Summary]
    kinds = [c.kind for c in dict.fromkeys(classes)]
    assert sorted(kinds) == sorted(get_args(EventKind))


@pytest.mark.parametrize(("event", "keys"), SAMPLES, ids=lambda v: getattr(v, "kind", ""))
def test_each_line_keeps_its_keys_in_order(event: Event, keys: list[str]) -> None:
    """``event``, ``at``, ``job`` when about one job, then the kind's keys as documented;
    a key that is only sometimes there is absent (not null) when it has no value."""
    line = json.loads(event_line(dataclasses.replace(event, at=1795313582.0394)))
    assert list(line) == ["event", "at", *keys]
    assert line["event"] == event.kind and line["at"] == 1795313582.039


def test_embedders_read_kind_job_id_at_and_data() -> None:
    """The names embedders read before events were typed still answer on every kind."""
    event = Failed("j", task_id="t", model="m", fail_code="E", fail_msg="no", at=5.0)
    assert (event.kind, event.job_id, event.at) == ("failed", "j", 5.0)
    assert event.data == {"task_id": "t", "model": "m", "fail_code": "E", "fail_msg": "no"}
    assert "task_id" not in Failed("j", model="m", fail_code="E", fail_msg="no").data
    assert Warned(message="x").job_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.at = 6.0  # type: ignore[misc]


def test_the_emitter_stamps_each_event_with_the_runs_clock() -> None:
    """``at`` is the run's wall clock when the event is emitted, whatever the stage set."""
    clock = FakeClock(wall_start=1_800_000_002.5)
    seen: list[Event] = []
    built = Submitted("j", task_id="t", model="m")
    Emitter(seen.append, clock)(built)
    assert seen == [dataclasses.replace(built, at=1_800_000_002.5)]
    assert built.at == 0.0  # the value the stage built is not changed
    Emitter(None, clock)(built)  # no sink: nothing to tell, nothing raised


def test_a_sink_that_raises_is_told_once_and_gets_the_later_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An embedder's on_event that raises does not reach the stage that emitted: the first
    error is one ``warning`` event (through the same sink) and one log record with its
    traceback; later errors are counted only, and every event is still offered."""
    clock = FakeClock(wall_start=1_800_000_000.0)
    seen: list[Event] = []

    def fragile(event: Event) -> None:
        seen.append(event)
        if event.kind == "submitted":
            raise KeyError("no row for this job")

    emit = Emitter(fragile, clock)
    with caplog.at_level("WARNING", logger="apixo_batch"):
        for i in range(3):
            emit(Submitted(f"j{i}", task_id=f"t{i}", model="m"))
        emit(Warned(message="after"))
    assert [e.kind for e in seen] == ["submitted", "warning", "submitted", "submitted", "warning"]
    told = seen[1]
    assert isinstance(told, Warned) and told.at == 1_800_000_000.0
    assert told.message.startswith("the on_event callback raised KeyError")
    assert "'submitted' event" in told.message and "the run goes on" in told.message
    assert emit.sink_errors == 3
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_sink_that_fails_on_everything_is_logged_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its own warning fails too: the log has told it, and the stage still goes on."""

    def broken(event: Event) -> None:
        raise RuntimeError("dashboard down")

    emit = Emitter(broken, FakeClock())
    with caplog.at_level("WARNING", logger="apixo_batch"):
        emit(Submitted("j", task_id="t", model="m"))
        emit(Submitted("k", task_id="u", model="m"))
    assert emit.sink_errors == 2
    assert ["dashboard down" in r.getMessage() for r in caplog.records] == [True]


def test_the_summary_of_a_run_result_is_its_json_line() -> None:
    """Figures rounded as the JSON shows them, five job ids per failure code with the
    counts beside, paths as strings; summary_dict is the same line without event and at."""
    summary = busy_result().summary()
    line: dict[str, Any] = json.loads(event_line(dataclasses.replace(summary, at=1.0)))
    assert list(line) == ["event", "at", *SUMMARY_KEYS]
    assert line == {
        "event": "summary",
        "at": 1.0,
        "exit_code": 1,
        "counts": {"done": 7, "failed": 2, "expired": 1, "pending": 3},
        "jobs": 13,
        "submitted": 9,
        "possibly_duplicated": 1,
        "requests": 40,
        "requests_per_task": 4.444,
        "rate_limited": 3,
        "learned_rpm": 588,
        "learned_limit": "98 per 10 s, sliding window",
        "learned_slots": 12,
        "slot_turnaround_s": {"count": 5, "p50": 0.0123, "p90": 0.5, "max": 1.0},
        "retries": 4,
        "wall_s": 7321.271,
        "planned_wall_s": 3725.4,
        "spent_usd": 3.4568,
        "unknown_price_jobs": 2,
        "fatal": None,
        "stop_reason": "--budget $5.00 reached",
        "interrupted": True,
        "input_changed": ["a"],
        "arrived": {"poll": 5, "callback": 4},
        "fail_codes": {"X": ["a", "b", "c", "d", "e"], "Y": ["g"]},
        "fail_counts": {"X": 6, "Y": 1},
        "per_model": {"kling-2-6": {"done": 5, "failed": 2}, "wan-2-5": {"done": 2, "pending": 3}},
        "never_submitted": 2,
        "manifest": "/o/manifest.jsonl",
        "review": "/o/review.html",
        "output_dir": None,
        "store_requests": {"put": 3},
        "next_step": None,
        "submit_cut_off": 0,
    }
    assert summary_dict(busy_result()) == {k: line[k] for k in SUMMARY_KEYS}


def test_an_empty_run_summarises_with_nulls_and_an_error_only_when_given() -> None:
    """Nothing submitted: no requests per task, no turnaround, no store requests; the
    ``error`` key (a run that could not start) is there only when set."""
    summary = RunResult(ExitCode.INVALID, counts={}).summary()
    assert summary.data["requests_per_task"] is None and summary.jobs == 0
    assert summary.slot_turnaround_s is None and summary.store_requests is None
    assert "error" not in summary.as_dict()
    failed = dataclasses.replace(summary, error="APIXO_API_KEY is not set")
    assert list(failed.as_dict())[-2:] == ["submit_cut_off", "error"]
