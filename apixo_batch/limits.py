"""The two limits every API call passes: tasks in flight and requests per minute.

Both share one small interface (``acquire`` / ``release`` / ``statistics``) so
the engine asks "may I?" in one place, aiometer-style.

The request bucket is *paced*: it holds at most ``burst`` requests and drips
at ``(rpm - burst - margin) / 60`` per second, so no sliding 60-second window
can ever see more than ``rpm`` requests (burst + 60 s of drip < rpm). A bucket sized to
a whole minute would let up to twice ``rpm`` through in its first minute.
The leaky-bucket arithmetic is aiolimiter's; only its time source is swapped
for the injected clock, and waiting is done here so that waiters are served by
priority (submits are never starved by polls, nor polls by submits: the engine
picks the priority per call).

With a ``tick``, a caller that finds the bucket empty waits for a tick's worth
of tokens rather than one, so rate-bound requests leave in small groups and one
loop wake-up serves several of them: at 166 requests/s, aiohttp requests sent one
at a time cost about 700 µs of CPU each, in groups of 16 about 220 µs. The tick
only lengthens waits; no grant exceeds the bucket, so the window bound holds.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

from .clock import Clock

#: the API allows 1,000 tasks in flight and 10,000 requests a minute: stay strictly under
MAX_CONCURRENT_CAP = 999
RPM_CAP = 9_999

__all__ = [
    "MAX_CONCURRENT_CAP",
    "RPM_CAP",
    "BucketStats",
    "ConcurrencyLimit",
    "ConcurrencyStats",
    "Limit",
    "Priority",
    "RequestBucket",
    "SlotsClosed",
    "SlotsStranded",
]


class Limit(Protocol):
    async def acquire(self, priority: int = 0) -> None: ...

    def release(self) -> None: ...


class Priority:
    """Lower goes first."""

    CONTROL = 0  # balance check
    # Submits go before polls: a submit starts paid work, and the concurrency cap
    # already brakes them, so polls get the rest; the scheduler keeps polls
    # within what is left (see PollScheduler.poll_rate).
    SUBMIT = 1
    STATUS = 2


class _ClockedLimiter(AsyncLimiter):
    """aiolimiter's bucket with time read from our clock and an adjustable drip rate."""

    def __init__(self, max_rate: float, rate_per_sec: float, clock: Clock) -> None:
        super().__init__(max_rate, max_rate / rate_per_sec)
        self._clock = clock
        self.drip = rate_per_sec

    def _leak(self) -> None:
        now = self._clock.monotonic()
        if self._level:
            self._level = max(self._level - (now - self._last_check) * self.drip, 0.0)
        self._last_check = now

    def has_capacity(self, amount: float = 1) -> bool:
        self._leak()
        # Float rounding may leave the level a hair above a whole token after exactly one
        # token's drip time; without the epsilon that costs a second full wait.
        return self._level + amount <= self.max_rate + 1e-9


@dataclass(frozen=True, slots=True)
class BucketStats:
    rpm: int
    effective_rpm: float
    granted: int
    #: requests that left (a grant whose caller then stopped sends nothing)
    sent: int
    waiting: int
    rate_limited: int
    paused_for: float


class RequestBucket:
    """Paced request bucket shared by every API call (submit, status, balance)."""

    def __init__(
        self,
        rpm: int,
        clock: Clock,
        *,
        burst: float | None = None,
        tick: float = 0.0,
        time_scale: float = 1.0,
    ) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self._clock = clock
        #: multiplies the pause a 429 imposes (``--time-scale``)
        self.time_scale = time_scale
        # A second of burst at most (and never more than 50 requests): enough to
        # start quickly, small enough that the drip stays close to rpm / 60.
        self.burst = burst if burst is not None else max(1.0, min(50.0, rpm / 60.0))
        # Half a percent of headroom: a token is taken a moment before its request
        # leaves, and those moments jitter; the margin keeps any window under rpm.
        margin = max(1.0, rpm * 0.005)
        self._base_drip = max(rpm - self.burst - margin, 1.0) / 60.0
        self._limiter = _ClockedLimiter(self.burst, self._base_drip, clock)
        #: seconds of drip an empty bucket waits for, so that grants come in groups
        self.tick = tick
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._busy = False
        self._paused_until = 0.0
        self._granted = 0
        self._sent = 0
        self._rate_limited = 0
        self._recover_at = 0.0
        # grants per whole second over the last few seconds, for utilization()
        self._recent: collections.deque[list[float]] = collections.deque()
        # (second, window) -> grants in the window: only whole past seconds count, so the
        # sum is fixed until the second changes, and polls ask for it several times a task
        self._used: tuple[int, int, float] = (-1, 0, 0.0)

    async def acquire(self, priority: int = Priority.STATUS) -> None:
        """Wait for one request's worth of budget; lower ``priority`` values are served first."""
        if self._busy or self._waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._seq), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._hand_over()  # we were handed the turn: pass it on
                raise
        else:
            self._busy = True
        try:
            await self._wait_for_capacity()
            await self._limiter.acquire()
            self._granted += 1
            self._count_grant()
        finally:
            self._hand_over()

    async def _wait_for_capacity(self) -> None:
        while True:
            now = self._clock.monotonic()
            if now < self._paused_until:
                await self._clock.sleep(self._paused_until - now)
                continue
            self._maybe_recover(now)
            if self._limiter.has_capacity():
                return
            # Less than one token short: one token's drip time is always enough. A tick
            # waits longer, but never past half the bucket: drip beyond a full bucket is lost.
            drip = self._limiter.drip
            await self._clock.sleep(max(1.0, min(self.tick * drip, self.burst / 2)) / drip)

    def _hand_over(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._busy = False

    def release(self) -> None:
        """Requests are spent, not returned: nothing to do."""

    def sent(self) -> None:
        """A granted request left (the client calls this): what request counts read."""
        self._sent += 1

    def rate_limited(self, retry_after: float | None, time_scale: float | None = None) -> None:
        """A 429 came back: pause everyone, and drip slower for a while (AIMD)."""
        if time_scale is None:
            time_scale = self.time_scale
        now = self._clock.monotonic()
        self._rate_limited += 1
        pause = retry_after if retry_after is not None else 1.0
        self._paused_until = max(self._paused_until, now + pause * time_scale)
        self._limiter.drip = max(self._limiter.drip * 0.8, self._base_drip * 0.25)
        self._recover_at = now + 10.0

    def _maybe_recover(self, now: float) -> None:
        # Additive recovery: back towards the configured rate, 5% every 10 s without a 429.
        if self._limiter.drip < self._base_drip and now >= self._recover_at:
            self._limiter.drip = min(self._base_drip, self._limiter.drip + self._base_drip * 0.05)
            self._recover_at = now + 10.0

    @property
    def pressure(self) -> int:
        """How many callers are queued behind the bucket right now."""
        return len(self._waiters) + (1 if self._busy else 0)

    @property
    def rate_per_s(self) -> float:
        """Requests a second the bucket grants now (after any 429 slow-down)."""
        return self._limiter.drip + self.burst / 60.0

    def _count_grant(self) -> None:
        second = float(int(self._clock.monotonic()))
        if self._recent and self._recent[-1][0] == second:
            self._recent[-1][1] += 1
        else:
            self._recent.append([second, 1.0])
            while len(self._recent) > 16:
                self._recent.popleft()

    def backlog_s(self) -> float:
        """Seconds of requests already queued behind the bucket."""
        return self.pressure / self._limiter.drip

    def utilization(self, window_s: int = 10) -> float:
        """Share of the bucket's rate used over the last ``window_s`` whole seconds."""
        now = int(self._clock.monotonic())
        second, window, used = self._used
        if (second, window) != (now, window_s):
            used = sum(c for sec, c in self._recent if now - window_s <= sec < now)
            self._used = (now, window_s, used)
        return used / (self._limiter.drip * window_s)

    def is_tight(self) -> bool:
        """True when requests, not tasks, are the bottleneck: polls should be sparing."""
        return self.backlog_s() > 1.0 or self.utilization() > 0.9

    def statistics(self) -> BucketStats:
        return BucketStats(
            rpm=self.rpm,
            effective_rpm=self.rate_per_s * 60.0,
            granted=self._granted,
            sent=self._sent,
            waiting=len(self._waiters),
            rate_limited=self._rate_limited,
            paused_for=max(0.0, self._paused_until - self._clock.monotonic()),
        )


@dataclass(frozen=True, slots=True)
class ConcurrencyStats:
    limit: int
    in_flight: int
    peak: int
    waiting: int
    stranded: int = 0


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
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._in_flight = 0
        self._stranded = 0
        self._peak = 0
        self._closed: SlotsClosed | None = None
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, priority: int = 0) -> None:
        """Take a permit; raises :class:`SlotsClosed` once none will come."""
        if self._closed is not None:
            raise self._closed
        if self._in_flight < self.limit and not self._waiters:
            self._take()
            return
        if self._hopeless():
            raise SlotsStranded()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the permit was already ours: give it back
            else:
                self._waiters.remove(fut)
            raise

    def adopt(self) -> None:
        """Count a task already in flight (from an earlier run), even past the limit."""
        self._take()

    def close(self) -> None:
        """Hand out no more permits: every waiter, and every later acquire, raises."""
        self._fail_waiters(SlotsClosed())

    def strand(self) -> None:
        """A permit's task is no longer followed in this run; its permit stays taken."""
        self._stranded += 1
        if self._hopeless():
            self._fail_waiters(SlotsStranded())

    def _hopeless(self) -> bool:
        return self._in_flight >= self.limit and self._stranded >= self._in_flight

    def _fail_waiters(self, error: SlotsClosed) -> None:
        if self._closed is None:
            self._closed = error
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    def _take(self) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("released more concurrency permits than taken")
        self._in_flight -= 1
        while self._waiters and self._in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._take()
                fut.set_result(None)
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
            in_flight=self._in_flight,
            peak=self._peak,
            waiting=len(self._waiters),
            stranded=self._stranded,
        )
