"""How long a campaign should take: the model that orders admission and that ``plan`` and
``run`` predict the wall time with.

A task holds one slot for its generation plus the time its end takes to be seen (half
a poll step, :func:`~.completion.poll_step`), and costs a submit and the polls of its
steps. Jobs start in admission order on the first slot free, no faster than the
request rate allows; the campaign ends when its last task does. Times are APIXO's
(unscaled) seconds; expected generations are the learned medians per kind, the
catalog's window until enough is learned.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from .completion import CompletionModel, poll_step
from .kind import Kind
from .order import longest_first

__all__ = [
    "Forecast",
    "TaskShape",
    "expected_generation_s",
    "forecast",
    "forecast_run",
    "shapes_in_start_order",
    "task_shape",
]


@dataclass(frozen=True, slots=True)
class TaskShape:
    """What one task costs a campaign: seconds of a slot, and API requests."""

    generation_s: float
    seen_after_s: float
    requests: float

    @property
    def slot_s(self) -> float:
        return self.generation_s + self.seen_after_s


@dataclass(frozen=True, slots=True)
class Forecast:
    wall_s: float
    tasks: int
    #: generation seconds over the slots, or the longest task if longer: no run is faster
    lower_bound_s: float


def expected_generation_s(completions: CompletionModel | None, kind: Kind) -> float:
    """The median generation time of a task of this kind (0 for an unknown model): the
    catalog's window without ``completions``, the learned median once there are enough."""
    clock = kind.clock()
    if clock is None:
        return 0.0
    if completions is None:
        return (clock.typical_min + clock.typical_max) / 2
    return completions.quantile(kind.key, 0.5, clock)


def task_shape(completions: CompletionModel | None, kind: Kind, *, callback: bool) -> TaskShape:
    """What one task of ``kind`` costs: ``plan`` and ``run``'s forecast both read it here."""
    generation = expected_generation_s(completions, kind)
    clock = kind.clock()
    if clock is None or callback:
        return TaskShape(generation, 0.0, 1.0)
    width = clock.typical_max - clock.typical_min
    step = poll_step(width, clock.interval)
    # Polls on equal steps of probability: about (1/step + 1) / 2 until the end is seen.
    return TaskShape(generation, width * step / 2, 1.0 + (1.0 / step + 1.0) / 2)


def forecast(
    tasks: Iterable[TaskShape], *, slots: int, rpm: float, startup_s: float = 1.0
) -> Forecast:
    """The wall time of ``tasks`` started in this order on ``slots`` slots at ``rpm``."""
    free: list[float] = []  # when each busy slot frees, a heap of at most `slots`
    next_submit = 0.0
    end = 0.0
    count = 0
    slot_seconds = 0.0
    longest = 0.0
    per_request = 60.0 / max(rpm, 1e-9)
    for shape in tasks:
        count += 1
        start = next_submit
        if len(free) >= slots:
            start = max(start, heapq.heappop(free))
        done = start + shape.slot_s
        heapq.heappush(free, done)
        # Its requests leave over its life; the rate lets the next submit go this much later.
        next_submit = start + shape.requests * per_request
        end = max(end, done)
        slot_seconds += shape.generation_s
        longest = max(longest, shape.generation_s)
    if not count:
        return Forecast(0.0, 0, 0.0)
    return Forecast(end + startup_s, count, max(slot_seconds / slots, longest))


def shapes_in_start_order(
    runs: Iterable[tuple[Kind, int]],
    completions: CompletionModel | None,
    *,
    order: str,
    callback: bool = False,
) -> Iterable[TaskShape]:
    """Task shapes in the order admission starts them: ``runs`` are (kind, jobs in a row)
    in file order; ``longest`` takes the kinds in :func:`~.order.longest_first`'s order."""
    runs = list(runs)
    if order == "longest":
        totals: dict[Kind, int] = {}  # in the file order of each kind's first job
        for kind, count in runs:
            totals[kind] = totals.get(kind, 0) + count
        ranked = longest_first(totals, partial(expected_generation_s, completions))
        runs = [(kind, totals[kind]) for kind in ranked]
    for kind, count in runs:
        shape = task_shape(completions, kind, callback=callback)
        for _ in range(count):
            yield shape


def forecast_run(
    runs: Iterable[tuple[Kind, int]],
    completions: CompletionModel,
    *,
    order: str,
    callback: bool,
    slots: int,
    rpm: float,
    time_scale: float,
) -> float:
    """A run's queued jobs' wall time, in the run's own seconds: ``rpm`` is real requests
    a minute, and a run at ``time_scale`` sees every APIXO time shrunk by it."""
    shapes = shapes_in_start_order(runs, completions, order=order, callback=callback)
    told = forecast(shapes, slots=slots, rpm=rpm * time_scale, startup_s=0.0)
    return told.wall_s * time_scale
