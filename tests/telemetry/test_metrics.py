"""RunMetrics: the events and statistics of a run as Prometheus series, read back with
prometheus_client's own parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apixo_batch.events import (
    Downloaded,
    Event,
    Expired,
    Failed,
    Retried,
    Started,
    Stopped,
    Submitted,
    Succeeded,
    Throttled,
)
from apixo_batch.pipeline import RunResult, RunStatistics
from apixo_batch.telemetry import RunMetrics, write_textfile

M = "kling-2-6"


def read(metrics: RunMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "campaign"}
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def get(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


def started(queued: int, at: float = 1000.0) -> Started:
    return Started(
        per_model={M: {"queued": queued}},
        spent_usd=0.0,
        jobs=queued,
        queued=queued,
        in_flight=0,
        to_download=0,
        done=0,
        estimated_cost_usd=0.3 * queued,
        unknown_price_jobs=0,
        planned_wall_s=None,
        at=at,
    )


def feed(metrics: RunMetrics, *events: Event) -> None:
    for event in events:
        metrics(event)


def test_a_job_moves_through_the_states_and_the_histograms() -> None:
    metrics = RunMetrics("night")
    feed(
        metrics,
        started(2),
        Submitted("a", task_id="t1", model=M, at=1010.0),
        Succeeded("a", task_id="t1", model=M, via="poll", urls=1, completed_at=1100.0, at=1103.0),
        Downloaded("a", model=M, files=["a.mp4"], bytes=5000, at=1105.5),
        Submitted("b", task_id="t2", model=M, at=1011.0),
        Failed("b", task_id="t2", model=M, fail_code="X", fail_msg="no", at=1200.0),
    )
    found = read(metrics)
    assert get(found, "apixo_batch_jobs", model=M, state="queued") == 0
    assert get(found, "apixo_batch_jobs", model=M, state="done") == 1
    assert get(found, "apixo_batch_jobs", model=M, state="failed") == 1
    assert get(found, "apixo_batch_jobs", model=M, state="submitted") == 0
    assert get(found, "apixo_batch_submits_total", outcome="accepted") == 2
    assert get(found, "apixo_batch_downloads_total", outcome="landed") == 1
    assert get(found, "apixo_batch_downloaded_bytes_total") == 5000
    # a: 1010 -> 1103; b: 1011 -> 1200
    assert get(found, "apixo_batch_generation_seconds_count", model=M) == 2
    assert get(found, "apixo_batch_generation_seconds_sum", model=M) == pytest.approx(93 + 189)
    assert get(found, "apixo_batch_end_detection_seconds_sum", model=M) == pytest.approx(3.0)
    assert get(found, "apixo_batch_download_seconds_sum", model=M) == pytest.approx(2.5)
    assert get(found, "apixo_batch_run_start_time_seconds") == 1000.0
    assert get(found, "apixo_batch_last_progress_time_seconds") == 1200.0
    assert get(found, "apixo_batch_up") == 1
    assert math.isnan(get(found, "apixo_batch_exit_code"))


def test_429s_refusals_errors_and_expiries_are_counted_by_outcome_and_kind() -> None:
    metrics = RunMetrics("night")
    feed(
        metrics,
        started(3),
        Throttled("a", retry_after=None, slots=True),
        Throttled("a", retry_after=2.0, slots=False),
        Throttled("b", retry_after=None),  # a poll's 429: no word on slots
        Retried("a", call="submit", attempt=1, error="503"),
        Retried("c", call="download", error="reset"),
        Failed("c", model=M, fail_code="BAD", fail_msg="refused"),  # a refused submit
        Expired("d", model=M, message="gone"),
        Stopped(reason="--budget reached", stop="budget"),
    )
    found = read(metrics)
    assert get(found, "apixo_batch_rate_limited_total", kind="slots") == 1
    assert get(found, "apixo_batch_rate_limited_total", kind="rate") == 2
    assert get(found, "apixo_batch_submits_total", outcome="slots_full") == 1
    assert get(found, "apixo_batch_submits_total", outcome="rate_limited") == 1
    assert get(found, "apixo_batch_submits_total", outcome="error") == 1
    assert get(found, "apixo_batch_submits_total", outcome="refused") == 1
    assert get(found, "apixo_batch_downloads_total", outcome="error") == 1
    assert get(found, "apixo_batch_downloads_total", outcome="expired") == 1
    assert get(found, "apixo_batch_stops_total", kind="budget") == 1
    assert get(found, "apixo_batch_jobs", model=M, state="failed") == 1
    # An expiry of a job this run never saw succeed: never below zero.
    assert get(found, "apixo_batch_jobs", model=M, state="succeeded") == 0


def stats(**over: object) -> RunStatistics:
    base: dict[str, object] = {
        "requests": 10,
        "requests_last_minute": 7,
        "rpm_limit": 600,
        "rate_limited": 1,
        "effective_rpm": 480.0,
        "learned_rpm": None,
        "in_flight": 1000,
        "max_concurrent": 1000,
        "slot_window": 800,
        "peak_in_flight": 1000,
        "downloading": 3,
        "spent_usd": 12.5,
        "budget_usd": 50.0,
        "stop_reason": None,
        "polls": {"running": 4, "finished": 2, "rate-limited": 1, "error": 0, "refused": 0},
    }
    base.update(over)
    return RunStatistics(**base)  # type: ignore[arg-type]


def test_refresh_sets_the_gauges_and_adds_only_new_polls() -> None:
    metrics = RunMetrics("night")
    metrics.refresh(stats())
    metrics.refresh(stats(polls={"running": 10, "finished": 2, "rate-limited": 1}))
    found = read(metrics)
    assert get(found, "apixo_batch_tasks_in_flight") == 1000
    assert get(found, "apixo_batch_slot_window") == 800
    assert get(found, "apixo_batch_requests_last_minute") == 7
    assert get(found, "apixo_batch_effective_rpm") == 480
    assert math.isnan(get(found, "apixo_batch_learned_rpm"))
    assert get(found, "apixo_batch_spent_usd") == 12.5
    assert get(found, "apixo_batch_budget_usd") == 50
    assert get(found, "apixo_batch_polls_total", outcome="running") == 10
    assert get(found, "apixo_batch_polls_total", outcome="rate_limited") == 1
    metrics.refresh(stats(learned_rpm=420.0, budget_usd=None))
    found = read(metrics)
    assert get(found, "apixo_batch_learned_rpm") == 420
    assert math.isnan(get(found, "apixo_batch_budget_usd"))


def test_the_summary_ends_the_run_in_the_series() -> None:
    metrics = RunMetrics("night")
    feed(metrics, started(1))
    result = RunResult(1, counts={"done": 0, "pending": 1}, spent_usd=0.3)
    result.per_model = {M: {"queued": 1}}
    metrics(result.summary())
    found = read(metrics)
    assert get(found, "apixo_batch_up") == 0
    assert get(found, "apixo_batch_exit_code") == 1
    assert get(found, "apixo_batch_spent_usd") == pytest.approx(0.3)
    assert get(found, "apixo_batch_jobs", model=M, state="queued") == 1


def test_labels_never_carry_job_ids_task_ids_or_prompts() -> None:
    metrics = RunMetrics("night")
    feed(
        metrics,
        started(1),
        Submitted("job-secret-id", task_id="task-xyz", model=M, at=1.0),
        Succeeded("job-secret-id", task_id="task-xyz", model=M, via="poll", urls=1, at=2.0),
        Downloaded("job-secret-id", model=M, files=["prompt-words.mp4"], bytes=1, at=3.0),
    )
    text = metrics.text().decode()
    for leak in ("job-secret-id", "task-xyz", "prompt-words"):
        assert leak not in text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert set(s.labels) <= {"campaign", "model", "state", "outcome", "kind", "le"}


def test_the_textfile_is_replaced_whole(tmp_path: Path) -> None:
    metrics = RunMetrics("night")
    path = tmp_path / "night.prom"
    path.write_text("old and half")
    write_textfile(metrics, path)
    assert path.read_bytes() == metrics.text()
    assert [p.name for p in tmp_path.iterdir()] == ["night.prom"]


def test_two_runs_in_one_process_keep_their_own_series() -> None:
    one, two = RunMetrics("a"), RunMetrics("b")
    feed(one, started(1), Submitted("x", task_id="t", model=M, at=1.0))
    assert get(read(one), "apixo_batch_submits_total", outcome="accepted") == 1
    assert get(read(two), "apixo_batch_submits_total", outcome="accepted") == 0
