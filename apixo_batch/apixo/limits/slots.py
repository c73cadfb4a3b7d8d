"""The slot limit: tasks in flight at APIXO, a permit each from submit to the task's end."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from .shared import SlotSource

__all__ = ["SLOW_START", "ConcurrencyLimit", "ConcurrencyStats", "SlotsClosed", "SlotsStranded"]

#: the slot window a run starts with, before tasks are created
SLOW_START = 10


@dataclass(frozen=True, slots=True)
class ConcurrencyStats:
    limit: int
    in_flight: int
    peak: int
    waiting: int
    stranded: int = 0
    #: the learned slot window (the limit until a submit is refused for slots)
    window: int = 0
    shrinks: int = 0


class SlotsClosed(Exception):
    """No permit will be handed out any more: admission has stopped."""


class SlotsStranded(SlotsClosed):
    """Every permit is held by a task this run no longer follows: none can come back."""


class ConcurrencyLimit:
    """Tasks in flight at APIXO: a permit is taken before submit, returned when the task ends.

    A released permit is handed straight to the longest waiter, so a burst of
    new acquirers cannot overtake it and the count never passes the limit.
    A permit whose task is left running (``--max-wait``) is *stranded*: it stays
    taken (the task still runs at APIXO), and once every permit is stranded no
    waiter can ever be served, so they are told (:class:`SlotsStranded`).

    With a :class:`~.shared.SlotSource` (the account's slots shared by several runners)
    ``limit`` is the slots this runner holds, changed by :meth:`resize` (0 until the
    first grant), while ``top`` stays the account's figure; the learned window is the
    account's and keeps its meaning.
    """

    def __init__(self, limit: int, *, source: SlotSource | None = None) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        #: the account's slots (``--max-concurrent``): the most ``limit`` may become
        self.top = limit
        self.source = source
        #: the account's real slot limit as learned (a 429 on submit), at most ``limit``;
        #: it starts small and grows by one per task created (doubling per round trip,
        #: TCP's slow start), so an account that holds fewer slots refuses few submits
        self._window = float(min(limit, SLOW_START))
        self._slow_start = True
        self._running = 0  # permits whose task exists at APIXO (a task id came back)
        self._shrinks = 0
        # submits refused for the account's slots, each waiting for a task to end
        self._retries: collections.deque[asyncio.Future[None]] = collections.deque()
        self._in_flight = 0
        self._stranded = 0
        self._peak = 0
        self._closed: SlotsClosed | None = None
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, priority: int = 0) -> None:
        """Take a permit; raises :class:`SlotsClosed` once none will come."""
        if self._closed is not None:
            raise self._closed
        if self._in_flight < self.cap and not self._waiters:
            self._take()
            return
        if self._hopeless():
            raise SlotsStranded()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self.source is not None and self._in_flight >= self.limit:
            self.source.short()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the permit was already ours: give it back
            elif fut in self._waiters:  # a close may have taken it off already
                self._waiters.remove(fut)
            raise

    def adopt(self) -> None:
        """Count a task already in flight (from an earlier run), even past the limit."""
        self._take()
        self._running += 1
        self._window = min(float(self.top), max(self._window, float(self._running)))

    def resize(self, limit: int) -> None:
        """Use at most ``limit`` permits from now on (the slots held: 0 is allowed);
        permits in use over it are kept until their tasks end."""
        if limit < 0:
            raise ValueError("a slot limit cannot be negative")
        self.limit = min(limit, self.top)
        self._serve()

    @property
    def short(self) -> bool:
        """Permits are waited for, and the held limit (not the window) is what binds."""
        return bool(self._waiters) and self._in_flight >= self.limit and self.limit < self.top

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """No permit will be handed out any more (admission has ended)."""
        return self._closed is not None

    def close(self) -> None:
        """Hand out no more permits: every waiter, and every later acquire, raises."""
        self._fail_waiters(SlotsClosed())

    def strand(self) -> None:
        """A permit's task is no longer followed in this run; its permit stays taken."""
        self._stranded += 1
        if self._running <= self._stranded:
            while self._retries:  # no task that could end is left to free a slot
                fut = self._retries.popleft()
                if not fut.done():
                    fut.set_exception(SlotsStranded())
        if self._hopeless():
            self._fail_waiters(SlotsStranded())

    def _hopeless(self) -> bool:
        # No permit in flight: a limit of 0 (shared slots not granted yet) is not hopeless.
        return 0 < self._in_flight >= self.cap and self._stranded >= self._in_flight

    @property
    def cap(self) -> int:
        """Permits handed out at most now: the limit (the slots held), or the learned
        window if smaller."""
        window = max(1, int(self._window))
        return window if self.source is None else min(self.limit, window)

    def running(self) -> None:
        """A permit's task now exists at APIXO (its submit was answered with a task id)."""
        self._running += 1
        # The account evidently holds this many: the window is never under it.
        self._window = max(self._window, float(self._running))
        # Past slow start (congestion avoidance) the window opens by one slot per
        # window's worth of tasks created: probing past the account's limit costs one
        # 429 per window.
        step = 1.0 if self._slow_start else 1.0 / self._window
        self._window = min(float(self.top), self._window + step)
        self._serve()

    def full(self) -> None:
        """A submit was refused for the account's slot limit: the window closes to the
        tasks that exist (at least one); what is over it waits for a slot to free."""
        self._window = float(max(1, self._running))
        self._slow_start = False
        self._shrinks += 1
        if self.source is not None:
            self.source.refused()

    async def freed(self) -> None:
        """Wait for the next task to end (a refused submit keeps its permit meanwhile, and
        takes that task's slot: one retry per slot freed); at once when no task of this
        run exists. Raises :class:`SlotsStranded` when every task is stranded."""
        if self._running == 0:
            return  # none of this run's tasks holds a slot: the account's may be free now
        if self._running <= self._stranded:
            raise SlotsStranded()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._retries.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._pass_on_the_freed_slot()
            elif fut in self._retries:
                self._retries.remove(fut)
            raise

    def _fail_waiters(self, error: SlotsClosed) -> None:
        if self._closed is None:
            self._closed = error
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    def _serve(self) -> bool:
        """Hand permits to waiters while the window has room; True if one was handed."""
        served = False
        while self._waiters and self._in_flight < self.cap:
            fut = self._waiters.popleft()
            if not fut.done():
                self._take()
                fut.set_result(None)
                served = True
        return served

    def _pass_on_the_freed_slot(self) -> bool:
        """Hand a freed slot to the oldest refused submit, if one waits."""
        while self._retries:
            fut = self._retries.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False

    def _take(self) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    def release(self, *, running: bool = False) -> None:
        """A permit comes back (``running``: its task existed at APIXO and has ended)."""
        if self._in_flight <= 0:
            raise RuntimeError("released more concurrency permits than taken")
        self._in_flight -= 1
        if running:
            self._running -= 1
        if self._pass_on_the_freed_slot():
            return
        if self._serve():
            return
        # Adopted tasks may hold more than the limit: one ending can leave only
        # stranded permits behind, and then the waiters must be told.
        if self._waiters and self._hopeless():
            self._fail_waiters(SlotsStranded())

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def statistics(self) -> ConcurrencyStats:
        return ConcurrencyStats(
            limit=self.limit,
            window=self.cap,
            shrinks=self._shrinks,
            in_flight=self._in_flight,
            peak=self._peak,
            waiting=len(self._waiters),
            stranded=self._stranded,
        )
