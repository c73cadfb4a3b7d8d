"""Events the engine emits, one per state change, for progress, ``--json`` and embedders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["Emitter", "Event", "EventKind", "EventSink", "QueueSink"]

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
    "stopped",  # submitting stopped: fatal answer to a submit, pre-flight refusal, budget
    "summary",  # the final summary
]


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: float  # Unix seconds
    job_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "at": round(self.at, 3)}
        if self.job_id is not None:
            out["job"] = self.job_id
        out.update(self.data)
        return out


EventSink = Callable[[Event], None]


class Emitter:
    """What the stages of a run call to tell: stamps each event with the run's clock."""

    __slots__ = ("_clock", "_sink")

    def __init__(self, sink: EventSink | None, clock: Clock) -> None:
        self._sink = sink
        self._clock = clock

    def __call__(self, kind: EventKind, job_id: str | None = None, **data: Any) -> None:
        if self._sink is not None:
            self._sink(Event(kind, self._clock.wall(), job_id, data))


class QueueSink:
    """An event sink that feeds an asyncio queue: the engine as an async iterator of events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)
