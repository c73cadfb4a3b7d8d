"""The poll scheduler: one timer heap for every task in flight.

No sleeping loop per task: one loop owns the timers, wakes when the earliest
poll is due, and hands due tasks to the engine's poll function. Because it
sees every timer, it can decide where the request budget goes:

* when the bucket has room, it polls each task at equal steps of probability
  over its completion-time distribution (learned, or the documented window),
  as many polls as the docs' cadence would spend, so completions are seen
  sooner for no more requests;
* when the bucket is the bottleneck, it waits until a task is very likely done
  (the upper end of the learned or documented completion time) and stretches
  the interval, so each request is more likely to find a finished task and
  submits are not starved.

Completion times are learned per kind (:attr:`~apixo_batch.planning.kind.Kind.key`) from
``costTime`` and observed completions; the engine persists them in the journal.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..catalog.models import Clock as ModelClock
from ..clock import Clock, sleep_or_wake
from ..planning.completion import CompletionModel, poll_step
from ..retry import Deadline

__all__ = ["PollScheduler", "SchedulerStats", "Tracked"]


@dataclass(eq=False)
class Tracked:
    """One task the scheduler follows."""

    job_id: str
    task_id: str
    model: str
    clock_key: str  # its kind's key (:attr:`~apixo_batch.planning.kind.Kind.key`)
    model_clock: ModelClock
    submitted_at: float  # monotonic, when the task was created (or adopted)
    max_wait: Deadline  # --max-wait, from when this run started following it
    polls: int = 0
    filename: str = ""  # where its result goes, relative to the output dir
    callback_mode: bool = False
    done: bool = False
    #: its final state was recorded (by a poll or a callback): never twice
    settled: bool = False
    #: the sequence number of the one live timer; older heap entries are stale
    timer: int = -1
    #: poll at the next chance, whatever the budget (poll_soon)
    urgent: bool = False
    #: consecutive 404 answers to its status call
    not_found: int = 0
    #: the step of its completion-time distribution its next poll is due on
    step: int = 0
    #: monotonic, when its end became known (a poll's answer or a callback)
    known_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    tracked: int
    polls: int
    polls_in_progress: int
    tight: bool


PollFn = Callable[[Tracked], Awaitable[bool]]


@dataclass
class PollScheduler:
    """Owns every poll timer; calls ``poll(tracked)`` when one is due.

    ``poll`` returns True when the task is finished (the scheduler forgets it)
    and False to have it polled again later.
    """

    clock: Clock
    poll: PollFn
    completions: CompletionModel
    time_scale: float = 1.0
    is_tight: Callable[[], bool] = lambda: False
    #: requests per second (real time) that polls may use; None means unlimited
    poll_rate: Callable[[], float | None] = lambda: None
    max_parallel: int = 256
    #: in callback mode a poll is only a safety net: wait this long past typical_max
    callback_margin: float = 60.0
    #: never wake more often than this (seconds): polls go out in rounds, one wake-up
    #: each, rather than one loop turn per timer
    min_gap: float = 0.0
    #: a round also takes the polls due up to this long after it (seconds): a task
    #: polled in one round is due again a poll's answer time after the next round
    #: would start, and without this slack it would wait for the round after
    early: float = 0.0
    #: called when the last task followed is forgotten: nothing is followed any more
    on_empty: Callable[[], None] | None = None
    _heap: list[tuple[float, int, Tracked]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _by_task: dict[str, Tracked] = field(default_factory=dict)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    _polls: int = 0
    _running: int = 0
    _active: int = 0  # tracked tasks past their first poll: they share the poll budget

    # -- timing policy ------------------------------------------------------
    def _step(self, t: Tracked) -> float:
        """:func:`poll_step` over the task's learned spread, or its documented window."""
        mc = t.model_clock
        learned = self.completions.samples(t.clock_key) >= self.completions.min_samples
        if learned:
            lo = self.completions.quantile(t.clock_key, 0.02, mc)
            hi = self.completions.quantile(t.clock_key, 0.98, mc)
            width = (hi - lo) / 0.96
        else:
            width = mc.typical_max - mc.typical_min
        return poll_step(width, mc.interval)

    def _on_quantiles(self, t: Tracked, elapsed: float) -> float | None:
        """Unscaled seconds from creation to the next poll on the distribution's steps:
        past ``elapsed`` and past the step its last poll was due on (a poll taken a little
        early by its round is not repeated), recorded as the task's step; None once the
        task outlived the distribution."""
        step = self._step(t)
        k = t.step + 1
        while k * step <= 1.0 + 1e-9:
            at = self.completions.quantile(t.clock_key, min(1.0, k * step), t.model_clock)
            if at > elapsed + 1e-9:
                t.step = k
                return at
            k += 1
        t.step = k
        return None

    def first_delay(self, t: Tracked) -> float:
        """Unscaled seconds from creation to the first poll (when the budget allows)."""
        mc = t.model_clock
        if t.callback_mode:
            return mc.typical_max + self.callback_margin
        return self.completions.quantile(t.clock_key, self._step(t), mc)

    def next_delay(self, t: Tracked) -> float:
        """Unscaled seconds from a not-finished poll to the next one, off the steps: in
        callback mode, with requests short, or once the task outlived its distribution."""
        mc = t.model_clock
        if t.callback_mode:
            return max(mc.interval * 2, 15.0)
        if self.is_tight():
            return mc.interval * 2
        # Late for its kind: a little faster than the docs so its end is seen promptly.
        return max(1.0, mc.interval * 0.6)

    def _next_due(self, t: Tracked, now: float) -> float:
        """Monotonic time of the next poll after an unfinished one at ``now``."""
        delay = self.next_delay(t) * self.time_scale
        if not t.callback_mode and not self.is_tight():
            elapsed = (now - t.submitted_at) / self.time_scale
            at = self._on_quantiles(t, elapsed)
            if at is not None:
                delay = (at - elapsed) * self.time_scale
        rate = self.poll_rate()
        if rate:
            # Every active task polled once per `spacing` must fit in the poll budget;
            # a round takes polls up to `early` ahead, so a stretched one is pushed
            # that much later and never goes out before its budgeted time.
            budgeted = self._active / rate
            if budgeted > delay:
                return now + budgeted + self.early
        return now + delay

    def _deferred_due(self, t: Tracked, now: float) -> float | None:
        """When requests are short, a first poll waits until the task is very likely done."""
        if t.polls or t.callback_mode or t.urgent or not self.is_tight():
            return None
        due = (
            t.submitted_at
            + self.completions.quantile(t.clock_key, 0.95, t.model_clock) * self.time_scale
        )
        return due if due > now else None

    # -- tracking -----------------------------------------------------------
    def add(self, t: Tracked, *, due: float | None = None) -> None:
        """Follow ``t``; its first poll is at ``due`` (monotonic) or from the policy."""
        if due is None:
            due = t.submitted_at + self.first_delay(t) * self.time_scale
            t.step = 1  # the first step's poll
        self._by_task[t.task_id] = t
        self._push(due, t)

    def _push(self, due: float, t: Tracked, *, wake: bool = False) -> None:
        was_first = not self._heap or due < self._heap[0][0]
        t.timer = next(self._seq)
        heapq.heappush(self._heap, (due, t.timer, t))
        if was_first or wake:
            self._wakeup.set()

    def forget(self, task_id: str) -> Tracked | None:
        """Stop following a task (its result arrived some other way)."""
        t = self._by_task.pop(task_id, None)
        if t is not None:
            t.done = True  # its heap entry is skipped when it comes up
            if t.polls:
                self._active -= 1
            if not self._by_task and self.on_empty is not None:
                self.on_empty()
        return t

    def get(self, task_id: str) -> Tracked | None:
        return self._by_task.get(task_id)

    def poll_soon(self, task_id: str) -> None:
        """Poll this task now (e.g. a callback said it ended: confirm with a status call)."""
        t = self._by_task.get(task_id)
        if t is not None:
            t.urgent = True
            self._push(self.clock.monotonic(), t, wake=True)

    @property
    def tracked(self) -> int:
        return len(self._by_task)

    def tracked_tasks(self) -> list[Tracked]:
        return list(self._by_task.values())

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    # -- the loop -----------------------------------------------------------
    async def run(self) -> None:
        """Poll due tasks until :meth:`close`; owns its poll tasks in a task group."""
        slots = asyncio.Semaphore(self.max_parallel)
        last_round = -math.inf
        async with asyncio.TaskGroup() as tg:
            while not self._closed:
                now = self.clock.monotonic()
                # Fixed for the round: a round slowed by busy slots still ends, and a
                # task it polled is not taken again ahead of time within it.
                horizon = now + self.early
                if self._heap and self._heap[0][0] <= horizon:
                    last_round = now
                first_of_round = next(self._seq)
                held: list[tuple[float, int, Tracked]] = []
                while self._heap and self._heap[0][0] <= (limit := max(horizon, now)):
                    due, seq, t = heapq.heappop(self._heap)
                    if t.done or seq != t.timer or self._by_task.get(t.task_id) is not t:
                        continue
                    if seq > first_of_round and due > now:
                        # Polled in this round already (slots were busy): not early twice.
                        held.append((due, seq, t))
                        continue
                    later = self._deferred_due(t, limit)
                    if later is not None:
                        self._push(later, t)
                        continue
                    await slots.acquire()
                    tg.create_task(self._poll_one(t, slots))
                    now = self.clock.monotonic()
                for entry in held:
                    heapq.heappush(self._heap, entry)
                if self._closed:
                    break
                self._wakeup.clear()
                # Rounds are min_gap apart counted from the last one, so a wake-up in
                # between (a new task, poll_soon) does not push the next one back.
                delay = (
                    max(self._heap[0][0] - now, last_round + self.min_gap - now)
                    if self._heap
                    else None
                )
                await sleep_or_wake(self.clock, self._wakeup, delay)

    async def _poll_one(self, t: Tracked, slots: asyncio.Semaphore) -> None:
        self._running += 1
        try:
            t.polls += 1
            t.urgent = False
            if t.polls == 1:
                self._active += 1
            self._polls += 1
            finished = await self.poll(t)
        finally:
            self._running -= 1
            slots.release()
        if finished:
            self.forget(t.task_id)
        elif not t.done and self._by_task.get(t.task_id) is t:
            self._push(self._next_due(t, self.clock.monotonic()), t)

    def statistics(self) -> SchedulerStats:
        return SchedulerStats(
            tracked=len(self._by_task),
            polls=self._polls,
            polls_in_progress=self._running,
            tight=self.is_tight(),
        )
