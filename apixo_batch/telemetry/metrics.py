"""Prometheus metrics of one run, fed by its events and its statistics (docs/metrics.md).

:class:`RunMetrics` is an event sink: every event updates counters and histograms
in a registry of its own (never the process-wide one, so an embedder's metrics
and two runs in one process stay apart). The gauges that describe the run's
limits (rate, slots, spend) come from ``Engine.statistics()``, read on the run's
loop by :meth:`RunMetrics.refresh`: the scrape thread only reads the registry,
never the engine. Every series carries the campaign's name, so textfiles of
several campaigns can sit side by side in node_exporter's folder; no label
ever carries a job id or a prompt (bounded cardinality).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from ..events import (
    Downloaded,
    Event,
    Expired,
    Failed,
    Pending,
    Retried,
    Running,
    Started,
    Stopped,
    Submitted,
    Succeeded,
    Summary,
    Throttled,
)
from ..pipeline import RunStatistics

__all__ = ["METRICS_PREFIX", "MetricsServer", "RunMetrics", "serve_metrics", "write_textfile"]

METRICS_PREFIX = "apixo_batch"

#: seconds: generations last from under a minute to a quarter of an hour and more
_GENERATION_BUCKETS = (15, 30, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)
#: seconds from a task's end at APIXO to the run knowing it (a poll's gap, a callback)
_DETECT_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300)
#: seconds from a result known to its files landed (queue for a download's turn included)
_DOWNLOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

#: journal states a job counts in, as ``apixo_batch_jobs`` labels them
_STATES = ("queued", "submitted", "succeeded", "done", "failed", "expired")
#: events that mean a job moved: progress, for ``apixo_batch_last_progress_time_seconds``
_PROGRESS = (Submitted, Running, Succeeded, Downloaded, Failed, Expired)


class RunMetrics:
    """The metrics of one run of ``campaign``: an event sink, and a registry to expose."""

    def __init__(self, campaign: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.campaign = campaign
        r = self.registry
        c = ("campaign",)
        p = METRICS_PREFIX
        self._jobs = Gauge(
            f"{p}_jobs",
            "Jobs of the campaign by journal state and model",
            (*c, "model", "state"),
            registry=r,
        )
        self._submits = Counter(
            f"{p}_submits",
            "Submit answers by outcome (accepted, refused, rate_limited, slots_full, error)",
            (*c, "outcome"),
            registry=r,
        )
        self._polls = Counter(
            f"{p}_polls",
            "Status polls by outcome (running, finished, rate_limited, error, refused)",
            (*c, "outcome"),
            registry=r,
        )
        self._downloads = Counter(
            f"{p}_downloads",
            "Jobs' downloads by outcome (landed, found, error, expired)",
            (*c, "outcome"),
            registry=r,
        )
        self._throttled = Counter(
            f"{p}_rate_limited",
            "HTTP 429 answers by kind: rate (requests per minute) or slots (tasks at once)",
            (*c, "kind"),
            registry=r,
        )
        self._bytes = Counter(
            f"{p}_downloaded_bytes", "Bytes of result files landed", c, registry=r
        )
        self._rpm_granted = Gauge(
            f"{p}_requests_last_minute",
            "API requests granted in the last 60 seconds",
            c,
            registry=r,
        )
        self._rpm_limit = Gauge(
            f"{p}_rpm_limit", "Requests per minute asked for (--rpm)", c, registry=r
        )
        self._rpm_effective = Gauge(
            f"{p}_effective_rpm",
            "Requests per minute the request bucket paces to now (below the limit after 429s)",
            c,
            registry=r,
        )
        self._rpm_learned = Gauge(
            f"{p}_learned_rpm",
            "Requests per minute that last overshot the account's limit (NaN: none yet)",
            c,
            registry=r,
        )
        self._in_flight = Gauge(
            f"{p}_tasks_in_flight", "Tasks submitted and not ended yet", c, registry=r
        )
        self._window = Gauge(
            f"{p}_slot_window",
            "Tasks the account allows at once, as learned (--max-concurrent until a refusal)",
            c,
            registry=r,
        )
        self._max_concurrent = Gauge(
            f"{p}_max_concurrent", "Tasks at once asked for (--max-concurrent)", c, registry=r
        )
        self._downloading = Gauge(
            f"{p}_downloads_in_progress",
            "Results being downloaded or waiting for a download's turn",
            c,
            registry=r,
        )
        self._generation = Histogram(
            f"{p}_generation_seconds",
            "From a task's submit to its end known, per model",
            (*c, "model"),
            buckets=_GENERATION_BUCKETS,
            registry=r,
        )
        self._detect = Histogram(
            f"{p}_end_detection_seconds",
            "From a task's end at APIXO to the run knowing it (poll or callback), per model",
            (*c, "model"),
            buckets=_DETECT_BUCKETS,
            registry=r,
        )
        self._download = Histogram(
            f"{p}_download_seconds",
            "From a result known to its files landed, per model",
            (*c, "model"),
            buckets=_DOWNLOAD_BUCKETS,
            registry=r,
        )
        self._spent = Gauge(
            f"{p}_spent_usd",
            "Known spend of the campaign in US dollars, earlier runs included (estimate)",
            c,
            registry=r,
        )
        self._budget = Gauge(f"{p}_budget_usd", "--budget in US dollars (NaN: none)", c, registry=r)
        self._start = Gauge(
            f"{p}_run_start_time_seconds", "When this run started, Unix time", c, registry=r
        )
        self._progress = Gauge(
            f"{p}_last_progress_time_seconds",
            "When a job last changed state (submitted, running, ended, landed), Unix time",
            c,
            registry=r,
        )
        self._up = Gauge(f"{p}_up", "1 while the run goes on, 0 once it has ended", c, registry=r)
        self._exit = Gauge(
            f"{p}_exit_code",
            "The run's exit code once it has ended (NaN while it runs)",
            c,
            registry=r,
        )
        self._stopped = Counter(
            f"{p}_stops",
            "Stops of submitting by kind (budget, refused, fatal, unreachable, storage)",
            (*c, "kind"),
            registry=r,
        )
        # Every series of the run shown from the first scrape, before the first refresh.
        for gauge in (
            self._rpm_granted,
            self._rpm_limit,
            self._rpm_effective,
            self._in_flight,
            self._window,
            self._max_concurrent,
            self._downloading,
            self._spent,
            self._start,
            self._progress,
        ):
            gauge.labels(campaign)
        self._up.labels(campaign).set(1)
        self._exit.labels(campaign).set(float("nan"))
        self._rpm_learned.labels(campaign).set(float("nan"))
        self._budget.labels(campaign).set(float("nan"))
        # Every outcome shown from the start at 0: a rate() over a series that appears
        # late misses its first increase.
        for outcome in ("accepted", "refused", "rate_limited", "slots_full", "error"):
            self._submits.labels(campaign, outcome)
        for outcome in ("running", "finished", "rate_limited", "error", "refused"):
            self._polls.labels(campaign, outcome)
        for outcome in ("landed", "found", "error", "expired"):
            self._downloads.labels(campaign, outcome)
        for kind in ("rate", "slots"):
            self._throttled.labels(campaign, kind)
        self._bytes.labels(campaign)
        #: {job id: when its task was submitted}; only tasks submitted in this run
        self._submitted_at: dict[str, float] = {}
        #: {job id: when its result became known}
        self._known_at: dict[str, float] = {}
        #: {(model, state): count}, kept so a move decrements one and increments another
        self._counts: dict[tuple[str, str], int] = {}
        self._polls_seen: dict[str, int] = {}
        # A metric's labels() takes a lock and builds a key on every call: the children
        # this run uses, kept at hand (an event costs a few microseconds, not tens).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _of(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric``'s child for this campaign and ``values``."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.campaign, *values)
        return child

    # -- events ---------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if isinstance(event, _PROGRESS):
            self._of(self._progress).set(event.at)
        if isinstance(event, Started):
            self._of(self._start).set(event.at)
            self._of(self._progress).set(event.at)
            for model, states in event.per_model.items():
                for state, n in states.items():
                    self._set(model, state, n)
        elif isinstance(event, Submitted):
            self._of(self._submits, "accepted").inc()
            self._submitted_at[event.job_id] = event.at
            self._move(event.model, "queued", "submitted")
        elif isinstance(event, Succeeded):
            self._ended(event.job_id, event.model, event.at)
            self._known_at[event.job_id] = event.at
            if event.completed_at is not None:
                self._of(self._detect, event.model).observe(max(0.0, event.at - event.completed_at))
            self._move(event.model, "submitted", "succeeded")
        elif isinstance(event, Failed):
            if event.task_id is None:
                self._of(self._submits, "refused").inc()
                self._move(event.model, "queued", "failed")
            else:
                self._ended(event.job_id, event.model, event.at)
                self._move(event.model, "submitted", "failed")
        elif isinstance(event, Downloaded):
            known = self._known_at.pop(event.job_id, None)
            if known is not None:
                self._of(self._download, event.model).observe(max(0.0, event.at - known))
            self._of(self._downloads, "found" if event.found else "landed").inc()
            self._of(self._bytes).inc(max(0, event.bytes))
            self._move(event.model, "succeeded", "done")
        elif isinstance(event, Expired):
            self._known_at.pop(event.job_id, None)
            self._of(self._downloads, "expired").inc()
            self._move(event.model, "succeeded", "expired")
        elif isinstance(event, Retried):
            if event.call == "submit":
                self._of(self._submits, "error").inc()
            elif event.call == "download":
                self._of(self._downloads, "error").inc()
            # status: counted by refresh() from the follower's own tally
        elif isinstance(event, Throttled):
            self._of(self._throttled, "slots" if event.slots else "rate").inc()
            if event.slots is not None:  # a submit's 429 (a poll's says nothing of slots)
                self._of(self._submits, "slots_full" if event.slots else "rate_limited").inc()
        elif isinstance(event, Pending):
            self._submitted_at.pop(event.job_id, None)
        elif isinstance(event, Stopped):
            self._of(self._stopped, event.stop or "other").inc()
        elif isinstance(event, Summary):
            self._of(self._up).set(0)
            self._of(self._exit).set(event.exit_code)
            if event.spent_usd is not None:
                self._of(self._spent).set(event.spent_usd)
            for model, states in event.per_model.items():
                for state, n in states.items():
                    self._set(model, state, n)

    def _ended(self, job_id: str, model: str, at: float) -> None:
        submitted = self._submitted_at.pop(job_id, None)
        if submitted is not None:
            self._of(self._generation, model).observe(max(0.0, at - submitted))

    def _set(self, model: str, state: str, n: int) -> None:
        if state not in _STATES:
            return  # "submitting" and the like: a moment, not a place a job stays
        self._counts[(model, state)] = n
        self._of(self._jobs, model, state).set(n)

    def _move(self, model: str, old: str, new: str) -> None:
        # A job adopted from an earlier run may not be where this run thinks: never below 0.
        self._set(model, old, max(0, self._counts.get((model, old), 0) - 1))
        self._set(model, new, self._counts.get((model, new), 0) + 1)

    # -- statistics -----------------------------------------------------------
    def refresh(self, stats: RunStatistics) -> None:
        """The gauges of the run's limits and spend, from a snapshot taken on its loop."""
        self._of(self._rpm_granted).set(stats.requests_last_minute)
        self._of(self._rpm_limit).set(stats.rpm_limit)
        self._of(self._rpm_effective).set(stats.effective_rpm)
        self._of(self._rpm_learned).set(
            float("nan") if stats.learned_rpm is None else stats.learned_rpm
        )
        self._of(self._in_flight).set(stats.in_flight)
        self._of(self._window).set(stats.slot_window)
        self._of(self._max_concurrent).set(stats.max_concurrent)
        self._of(self._downloading).set(stats.downloading)
        self._of(self._spent).set(stats.spent_usd)
        self._of(self._budget).set(float("nan") if stats.budget_usd is None else stats.budget_usd)
        for outcome, n in stats.polls.items():
            new = n - self._polls_seen.get(outcome, 0)
            if new > 0:
                self._of(self._polls, outcome.replace("-", "_")).inc(new)
                self._polls_seen[outcome] = n

    def text(self) -> bytes:
        """The exposition text, as ``/metrics`` serves it."""
        return generate_latest(self.registry)


def write_textfile(metrics: RunMetrics, path: Path) -> None:
    """Write the metrics to ``path`` atomically: a temporary file beside it, then a rename,
    so node_exporter's textfile collector never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(metrics.text())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class MetricsServer:
    """``/metrics`` served from a thread of its own (prometheus_client's server): a scrape
    costs the run's loop nothing but the registry's locks."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(metrics: RunMetrics, host: str, port: int) -> MetricsServer:
    """Listen on ``host:port`` (0: a free port); raises OSError when it cannot."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)


#: how the CLI reads the engine's statistics: a callable, so this module needs no Engine
StatsSource = Callable[[], RunStatistics]
