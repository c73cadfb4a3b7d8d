"""The one place apixo-batch reads time and sleeps.

The scheduler, the request bucket, backoff and expiry all take a :class:`Clock`.
Production code uses :class:`SystemClock`; tests use :class:`FakeClock`, which
jumps instead of sleeping, so a test "waits" minutes in milliseconds.
:func:`human_duration` is how every message says how long something took or will take.
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
    """A clock that only moves when told to (``advance``) or when every sleeper waits.

    ``sleep`` parks the caller until the clock reaches its deadline. ``advance(dt)``
    moves time forward and wakes, in deadline order, everyone due.
    ``run_until_idle`` hops straight to the next deadline whenever every other
    task is blocked, like trio's autojump clock.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_767_965_610.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled sleepers
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in order as time passes."""
        target = self._now + seconds
        await _settle()  # let runnable tasks act (e.g. cancel a timer) before time moves
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._now = target
        await _settle()

    async def run_until_idle(self, limit: float = 86_400.0) -> None:
        """Jump from deadline to deadline until nobody sleeps (or ``limit`` seconds passed)."""
        end = self._now + limit
        while True:
            await _settle()
            deadline = self.next_deadline()
            if deadline is None or deadline > end:
                return
            await self.advance(deadline - self._now)


async def _settle(rounds: int = 20) -> None:
    # Give woken tasks a few loop turns to run up to their next await.
    for _ in range(rounds):
        await asyncio.sleep(0)
