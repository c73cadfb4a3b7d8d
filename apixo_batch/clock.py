"""The one place apixo-batch reads time and sleeps.

The scheduler, the request bucket, backoff and expiry all take a :class:`Clock`.
Production code uses :class:`SystemClock`; tests use :class:`FakeClock`, which
reads and sleeps on the event loop's virtual time (looptime), so a test "waits"
minutes in milliseconds. :func:`human_duration` is how every message says how long
something took or will take.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Literal, Protocol

__all__ = [
    "Clock",
    "FakeClock",
    "SystemClock",
    "human_duration",
    "sleep_or_wake",
    "wait_until",
]


class Clock(Protocol):
    """Monotonic time for waits, wall time for timestamps, and a sleep."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


async def sleep_or_wake(clock: Clock, event: asyncio.Event, seconds: float | None) -> None:
    """Sleep on ``clock`` until ``seconds`` have passed or ``event`` is set (None: until set).

    Not ``asyncio.timeout``: that one runs on the loop's time, not the injected clock."""
    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    if seconds is None:
        await waiter
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()


async def wait_until(clock: Clock, aws: set[asyncio.Future[Any]], deadline: float) -> bool:
    """Wait on ``clock`` until one of ``aws`` is done or ``deadline`` (monotonic) passes.

    True if one is done. The futures are not cancelled; the wait for time is."""
    if any(f.done() for f in aws):
        return True
    remaining = deadline - clock.monotonic()
    if remaining <= 0:
        return False
    sleeper = asyncio.ensure_future(clock.sleep(remaining))
    try:
        await asyncio.wait({*aws, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
    return any(f.done() for f in aws)


def human_duration(seconds: float, *, unit: Literal["h"] | None = None) -> str:
    """How long, for people: ``4.2 s``, ``45 s``, ``2 min 5 s``, ``3 h 12 min``, ``2 d 3 h``.

    Tenths under ten seconds, whole units above; two units at most, the second left out
    when zero (``2 min``). ``unit="h"`` says it in hours with one decimal (``1.5 h``):
    result expiries, which count in hours."""
    if unit == "h":
        return f"{seconds / 3600:.1f} h"
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return _two(minutes, "min", secs, "s")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return _two(hours, "h", minutes, "min")
    days, hours = divmod(hours, 24)
    return _two(days, "d", hours, "h")


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big} {big_unit} {small} {small_unit}" if small else f"{big} {big_unit}"


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock on the event loop's virtual time: a test "waits" minutes in milliseconds.

    It runs on a loop whose time jumps only when every task waits (looptime's loop:
    mark the test ``@pytest.mark.looptime``). Its sleepers wake on one of the loop's
    own timers, so this clock, ``asyncio.timeout`` and anything else on the loop
    share one time, and time moves only once nothing can run (never after some count
    of loop turns). On any other loop ``sleep`` raises rather than sleep for real,
    and the time it reads stands still.

    ``monotonic`` starts at ``start`` when first read on such a loop (``wall`` at
    ``wall_start``); sleepers due at the same time wake in the order they went to
    sleep. ``advance(dt)`` moves time forward, waking everyone due in deadline order;
    ``settle`` lets every task run until all wait, time standing still;
    ``run_until_idle`` jumps from deadline to deadline while someone sleeps on this
    clock, like trio's autojump clock.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_767_965_610.0) -> None:
        self._start = start
        self._wall_offset = wall_start - start
        self._origin: float | None = None  # the loop's time when this clock was first read
        self._last = start  # what it read last: its time outside a virtual loop
        # (the loop's time it is due, arrival, the sleeper's future)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None  # wakes the earliest sleeper

    def monotonic(self) -> float:
        loop = _running_loop()
        if loop is None or not _is_virtual(loop):
            return self._last
        if self._origin is None:
            self._origin = loop.time()
        self._last = self._start + (loop.time() - self._origin)
        return self._last

    def wall(self) -> float:
        return self.monotonic() + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        loop = _virtual_loop()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self.monotonic()  # time starts now if it had not
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (loop.time() + seconds, next(self._seq), fut))
        self._arm(loop)
        try:
            await fut
        finally:
            if fut.cancelled():  # it may have been the earliest: the timer moves on
                self._arm(loop)

    @property
    def sleepers(self) -> int:
        """How many tasks sleep on this clock now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """The earliest deadline (monotonic) of those sleeping on this clock, if any."""
        self._drop_cancelled()
        if not self._sleepers or self._origin is None:
            return None
        return self._start + (self._sleepers[0][0] - self._origin)

    async def settle(self) -> None:
        """Let every task run until all wait; time does not move (trio's
        ``wait_all_tasks_blocked``).

        Asks the loop: returns once no callback is ready and no timer is due, so no
        task can go on before time moves. Work handed to another thread or a socket
        is not seen here: await its result instead."""
        loop = _virtual_loop()
        while _runnable(loop):  # noqa: ASYNC110 (the loop's state: no event to wait on)
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in order as time passes;
        returns once everyone due has run up to its next wait."""
        self.monotonic()  # time starts now if it had not
        await self.settle()  # runnable tasks act (e.g. cancel a timer) before time moves
        if seconds > 0:
            # The loop moves its time only when idle: whoever is due earlier runs first.
            await asyncio.sleep(seconds)
        await self.settle()

    async def run_until_idle(self, limit: float = 86_400.0) -> None:
        """Jump from deadline to deadline until nobody sleeps (or ``limit`` seconds passed)."""
        end = self.monotonic() + limit
        while True:
            await self.settle()
            deadline = self.next_deadline()
            if deadline is None or deadline > end:
                return
            await self.advance(deadline - self.monotonic())

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """One loop timer, at the earliest sleeper's time."""
        self._drop_cancelled()
        when = self._sleepers[0][0] if self._sleepers else None
        if self._timer is not None:
            if when is not None and self._timer.when() == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = loop.call_at(when, self._wake, loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called by the loop at the earliest sleeper's time: everyone due, in
        # deadline order and, for equal deadlines, in arrival order.
        self._timer = None
        due = _due(loop)
        while self._sleepers and self._sleepers[0][0] <= due:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        self._arm(loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _is_virtual(loop: asyncio.AbstractEventLoop) -> bool:
    return bool(getattr(loop, "looptime_on", False))


def _virtual_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    if not _is_virtual(loop):
        raise RuntimeError(
            "FakeClock runs on the loop's virtual time: run this under looptime "
            "(@pytest.mark.looptime); a FakeClock never sleeps for real"
        )
    return loop


def _due(loop: asyncio.AbstractEventLoop) -> float:
    """Timers up to this loop time are due: the loop's own rule (a looptime loop is an
    ``asyncio.BaseEventLoop``, as are the attributes read here and in ``_runnable``)."""
    base: Any = loop
    return float(base.time() + base._clock_resolution)


def _runnable(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a callback is ready or a timer due: some task can go on at this time."""
    base: Any = loop
    if base._ready:
        return True
    due = _due(loop)
    return any(not h.cancelled() and h.when() <= due for h in base._scheduled)
