"""Events the engine emits, one per state change, for progress, ``--json`` and embedders.

One frozen class per kind, with typed fields; the stages build them
(``emit(Submitted(job_id, task_id=…, model=…))``) and the :class:`Emitter`
stamps ``at`` from the run's clock. ``as_dict()`` is the ``--json`` line
(``docs/outputs.md``): ``event``, ``at``, ``job`` when about one job, then the
fields in the order they are declared here. A field made with :func:`_optional`
is left out of the line while it is None, as it always has been.

Embedders read ``event.kind``, ``event.job_id``, ``event.at`` and
``event.data`` (the other keys as a dict) on every kind, or the typed fields
of the class they match.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from .clock import Clock

__all__ = [
    "Downloaded",
    "Emitter",
    "Event",
    "EventKind",
    "EventSink",
    "Expired",
    "Failed",
    "Pending",
    "Preflight",
    "QueueSink",
    "Retried",
    "Running",
    "Started",
    "Stopped",
    "Submitted",
    "Succeeded",
    "Summary",
    "Throttled",
    "Warned",
]

log = logging.getLogger("apixo_batch")

EventKind = Literal[
    "started",  # the run began: counts of what is to do
    "preflight",  # the balance was read before the first submit
    "submitted",  # a task id was journaled
    "running",  # a poll saw the task processing for the first time
    "succeeded",  # result URLs are known
    "downloaded",  # files are on disk, verified
    "failed",  # the task or the submit failed for a reason of the job's own
    "expired",  # the result URL is gone
    "retried",  # a transient error; the call will be tried again
    "rate-limited",  # a 429: the bucket slowed down
    "pending",  # a task still running past --max-wait: left for the next run
    "warning",  # something the operator should know (balance unread, input changed)
    "stopped",  # submitting stopped: refusal, pre-flight, budget, API unreachable, our disk
    "summary",  # the final summary
]

_OMIT_NONE = {"omit_none": True}


def _optional() -> Any:
    """A field that defaults to None and is absent from the JSON line while None."""
    return field(default=None, metadata=_OMIT_NONE)


# Per class: (name, left out while None) for every field after ``job_id`` and ``at``.
_LAYOUTS: dict[type[Event], tuple[tuple[str, bool], ...]] = {}


@dataclass(frozen=True, slots=True)
class Event:
    """What every event has: its kind, the job it is about (if any) and when (Unix s)."""

    kind: ClassVar[EventKind]
    job_id: str | None = None
    _: KW_ONLY
    at: float = 0.0

    @property
    def data(self) -> dict[str, Any]:
        """The keys of the JSON line other than ``event``, ``at`` and ``job``."""
        layout = _LAYOUTS.get(type(self))
        if layout is None:
            layout = _LAYOUTS[type(self)] = tuple(
                (f.name, bool(f.metadata.get("omit_none")))
                for f in dataclasses.fields(self)
                if f.name not in ("job_id", "at")
            )
        out: dict[str, Any] = {}
        for name, omit_none in layout:
            value = getattr(self, name)
            if value is not None or not omit_none:
                out[name] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` line."""
        out: dict[str, Any] = {"event": self.kind, "at": round(self.at, 3)}
        if self.job_id is not None:
            out["job"] = self.job_id
        out.update(self.data)
        return out


@dataclass(frozen=True, slots=True)
class Started(Event):
    """The run began: what the journal holds and what is left to do."""

    kind: ClassVar[EventKind] = "started"
    _: KW_ONLY
    #: {model: {journal state: count}}
    per_model: dict[str, dict[str, int]]
    #: estimated, tasks submitted in earlier runs
    spent_usd: float
    jobs: int
    #: to submit (0 for ``download``)
    queued: int
    in_flight: int
    to_download: int
    done: int
    #: queued jobs of known price
    estimated_cost_usd: float
    unknown_price_jobs: int
    planned_wall_s: float | None


@dataclass(frozen=True, slots=True)
class Preflight(Event):
    """The balance was read and covers the estimate."""

    kind: ClassVar[EventKind] = "preflight"
    _: KW_ONLY
    message: str
    balance_usd: float
    estimated_usd: float
    unknown_price_jobs: int


@dataclass(frozen=True, slots=True)
class Submitted(Event):
    """A task id was journaled."""

    kind: ClassVar[EventKind] = "submitted"
    job_id: str
    _: KW_ONLY
    task_id: str
    model: str
    #: the fingerprint of the key that created the task (a pool of keys only)
    key: str | None = _optional()


@dataclass(frozen=True, slots=True)
class Running(Event):
    """A poll first saw the task processing."""

    kind: ClassVar[EventKind] = "running"
    job_id: str
    _: KW_ONLY
    task_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Succeeded(Event):
    """Result URLs are known."""

    kind: ClassVar[EventKind] = "succeeded"
    job_id: str
    _: KW_ONLY
    task_id: str
    model: str
    #: ``poll`` or ``callback``
    via: str
    #: how many result URLs
    urls: int
    #: when the task ended at APIXO (Unix s, its ``completeTime``), if it said
    completed_at: float | None = _optional()


@dataclass(frozen=True, slots=True)
class Downloaded(Event):
    """The job's files are at their final names, verified."""

    kind: ClassVar[EventKind] = "downloaded"
    job_id: str
    _: KW_ONLY
    model: str
    files: list[str]
    bytes: int
    #: files found whole at their final names (nothing downloaded for them)
    found: int | None = _optional()


@dataclass(frozen=True, slots=True)
class Failed(Event):
    """The task, or the submit, failed for a reason of the job's own."""

    kind: ClassVar[EventKind] = "failed"
    job_id: str
    _: KW_ONLY
    #: None for a submit the API refused (no task was made)
    task_id: str | None = _optional()
    model: str
    fail_code: str | None
    fail_msg: str | None
    #: what the documented ``fail_code`` means (catalog/failcodes.py): "input" refused,
    #: "content" flagged, or "transient" (--retry-failed may succeed); absent otherwise
    fail_class: str | None = _optional()


@dataclass(frozen=True, slots=True)
class Expired(Event):
    """The result URL is gone."""

    kind: ClassVar[EventKind] = "expired"
    job_id: str
    _: KW_ONLY
    model: str
    message: str


@dataclass(frozen=True, slots=True)
class Retried(Event):
    """Transient trouble: the call is tried again (a download: by a later run)."""

    kind: ClassVar[EventKind] = "retried"
    job_id: str
    _: KW_ONLY
    #: ``submit``, ``status`` or ``download``
    call: str
    #: submits only
    attempt: int | None = _optional()
    error: str


@dataclass(frozen=True, slots=True)
class Throttled(Event):
    """A 429 (kind ``rate-limited``): the bucket slowed down."""

    kind: ClassVar[EventKind] = "rate-limited"
    job_id: str
    _: KW_ONLY
    #: seconds the API asked for, if it said
    retry_after: float | None
    #: submits only: whether the account's slots (not the rate) were full
    slots: bool | None = _optional()


@dataclass(frozen=True, slots=True)
class Pending(Event):
    """A task passed --max-wait and is left for a later run."""

    kind: ClassVar[EventKind] = "pending"
    job_id: str
    _: KW_ONLY
    task_id: str
    model: str
    message: str


@dataclass(frozen=True, slots=True)
class Warned(Event):
    """Something the operator should know (kind ``warning``), about one job or the run."""

    kind: ClassVar[EventKind] = "warning"
    _: KW_ONLY
    #: a paid task the journal could not record
    task_id: str | None = _optional()
    message: str
    #: what the warning is about, for readers that act on it: ``outage`` (the API
    #: stopped answering) or ``recovered`` (it answers again); absent otherwise
    about: str | None = _optional()
    #: the fingerprint of the key it is about (a pool of keys only)
    key: str | None = _optional()


@dataclass(frozen=True, slots=True)
class Stopped(Event):
    """Submitting stopped: a fatal answer, the budget reached, the balance too low, the API
    unreachable past --max-wait, or our disk (journal or results) refusing."""

    kind: ClassVar[EventKind] = "stopped"
    _: KW_ONLY
    reason: str
    #: when the pre-flight check refused
    balance_usd: float | None = _optional()
    #: the kind of stop: ``budget``, ``refused``, ``fatal``, ``unreachable`` or ``storage``
    stop: str | None = _optional()


@dataclass(frozen=True, slots=True)
class Summary(Event):
    """The run's last event: what it did and how it ended (``docs/outputs.md``).

    ``RunResult.summary()`` builds it, figures rounded as the JSON shows them.
    """

    kind: ClassVar[EventKind] = "summary"
    _: KW_ONLY
    exit_code: int
    counts: dict[str, int]
    jobs: int
    submitted: int
    possibly_duplicated: int | None
    requests: int
    requests_per_task: float | None
    rate_limited: int
    learned_rpm: int | None
    #: how the account limits requests, when this run's answers told ("450 per 10 s
    #: (sliding)"), else None
    learned_limit: str | None
    learned_slots: int | None
    #: ``count``, ``p50``, ``p90``, ``max`` (seconds), or None before any slot was freed
    slot_turnaround_s: dict[str, float] | None
    retries: int
    wall_s: float
    planned_wall_s: float | None
    #: None when the journal's totals could not be read
    spent_usd: float | None
    unknown_price_jobs: int | None
    fatal: str | None
    stop_reason: str | None
    interrupted: bool
    input_changed: list[str]
    arrived: dict[str, int]
    #: up to five job ids per code
    fail_codes: dict[str, list[str]]
    fail_counts: dict[str, int]
    per_model: dict[str, dict[str, int]]
    never_submitted: int | None
    manifest: str | None
    review: str | None
    output_dir: str | None
    store_requests: dict[str, int] | None
    #: the one thing to do next, from the stop that chose the exit code (None: nothing)
    next_step: str | None = None
    #: pending jobs whose submit was cut off before its answer was journaled: a task may
    #: exist, the next run submits them again (in ``possibly_duplicated``, not in
    #: ``never_submitted``)
    submit_cut_off: int | None = None
    #: a run that could not start (the CLI's exit 2 and 74 before the engine ran)
    error: str | None = _optional()
    #: each key of a pool by fingerprint: in flight, limits, requests, spend, state
    keys: list[dict[str, Any]] | None = field(default=None, metadata=_OMIT_NONE)


EventSink = Callable[[Event], None]


class Emitter:
    """What the stages of a run call to tell: stamps each event with the run's clock.

    The sink is someone else's code (an embedder's ``on_event``, the command line's
    printer), called from inside a stage: an exception it raises must not end the
    stage, or a paid task would be left unfollowed for a bug in a progress bar. The
    first one is told once (a ``warning`` event through the same sink, and the
    ``apixo_batch`` logger with its traceback); later ones are only counted."""

    __slots__ = ("_clock", "_sink", "sink_errors")

    def __init__(self, sink: EventSink | None, clock: Clock) -> None:
        self._sink = sink
        self._clock = clock
        #: exceptions the sink raised (and that the run went on past)
        self.sink_errors = 0

    def __call__(self, event: Event) -> None:
        if self._sink is None:
            return
        stamped = dataclasses.replace(event, at=self._clock.wall())
        try:
            self._sink(stamped)
        except Exception as exc:
            self._sink_failed(stamped, exc)

    def _sink_failed(self, event: Event, exc: Exception) -> None:
        self.sink_errors += 1
        if self.sink_errors > 1:
            return
        message = (
            f"the on_event callback raised {type(exc).__name__}: {exc} on a {event.kind!r} "
            "event; the run goes on without it for that event (its later errors are not told)"
        )
        log.warning("%s", message, exc_info=exc)
        assert self._sink is not None
        # The sink may fail on every event, this one included: the log has told it then.
        with contextlib.suppress(Exception):
            self._sink(Warned(message=message, at=self._clock.wall()))


class QueueSink:
    """An event sink that feeds an asyncio queue: the engine as an async iterator of events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)
