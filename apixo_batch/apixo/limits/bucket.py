"""The request bucket every API call passes (inside the client), paced and congestion-aware.

The bucket is *paced*: it holds at most ``burst`` requests and drips at the
allowed rate, at most ``(rpm - burst - margin) / 60`` per second, so no
sliding 60-second window can ever see more than ``rpm`` requests. The burst is
half a second's worth (at most 50): an account that enforces its limit over
windows as short as 5 s sees at most burst + 5 s of drip, which stays under
its share even when the engine is told 90 % of the real limit. A bucket sized
to a whole minute would let up to twice ``rpm`` through in its first minute.
The leaky-bucket arithmetic is aiolimiter's; only its time source is swapped
for the injected clock, and waiting is done here so that waiters are served by
priority (submits are never starved by polls, nor polls by submits: the caller
picks the priority per call).

The allowed rate is :class:`~.congestion.RateControl`'s: a 429 ends a
congestion episode with one decrease, then the rate probes back up. A 429's
Retry-After pauses every caller for that long (the server's own time: not
multiplied by ``--time-scale``).

With a ``tick``, a caller that finds the bucket empty waits for a tick's worth
of tokens rather than one, so rate-bound requests leave in small groups and one
loop wake-up serves several of them (bench/request_cost.py measures the cost
of a request sent alone and in a group). The tick only lengthens waits; no
grant exceeds the bucket, so the window bound holds.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

from ...clock import Clock
from .congestion import BETA, RateControl

__all__ = ["BucketStats", "Limit", "Priority", "RequestBucket"]


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
        # Before _last_check (an emptied bucket's pause) nothing leaks yet.
        if self._level and now > self._last_check:
            self._level = max(self._level - (now - self._last_check) * self.drip, 0.0)
        self._last_check = max(now, self._last_check)

    def empty_until(self, when: float) -> None:
        """No capacity until ``when``; then tokens drip from an empty bucket."""
        self._level = self.max_rate
        self._last_check = max(self._last_check, when)

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
    #: congestion episodes (one decrease each) and the rate that last overshot
    episodes: int = 0
    learned_rpm: float | None = None


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
        learned_rpm: float | None = None,
    ) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self._clock = clock
        #: multiplies the pause of a 429 that names no Retry-After (``--time-scale``)
        self.time_scale = time_scale
        # Half a second of burst at most (and never more than 50 requests): enough to
        # start quickly, small enough for limits enforced over 5 s windows (module doc).
        self.burst = burst if burst is not None else max(1.0, min(50.0, rpm / 120.0))
        # Half a percent of headroom: a token is taken a moment before its request
        # leaves, and those moments jitter; the margin keeps any window under rpm.
        margin = max(1.0, rpm * 0.005)
        self._base_drip = max(rpm - self.burst - margin, 1.0) / 60.0
        ceiling = None if learned_rpm is None else max(1.0, learned_rpm - self.burst) / 60.0
        self.control = RateControl(self._base_drip, clock.monotonic(), ceiling=ceiling)
        self._limiter = _ClockedLimiter(self.burst, self.control.rate, clock)
        #: seconds of drip an empty bucket waits for, so that grants come in groups
        self.tick = tick
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._busy = False
        self._paused_until = 0.0
        self._granted = 0
        self._sent = 0
        self._rate_limited = 0
        self._learned: float | None = learned_rpm
        # grants per whole second over the last minute, for utilization() and last_minute()
        self._recent: collections.deque[list[float]] = collections.deque()
        # (second, window) -> grants in the window: only whole past seconds count, so the
        # sum is fixed until the second changes, and polls ask for it several times a task
        self._used: tuple[int, int, float] = (-1, 0, 0.0)

    async def acquire(self, priority: int = Priority.STATUS) -> int:
        """Wait for one request's worth of budget; lower ``priority`` values are served first.

        Returns the grant's ticket (its number): a 429 to that request names it, so
        that the answers to one overshoot count as one congestion episode."""
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
            return self._granted
        finally:
            self._hand_over()

    async def _wait_for_capacity(self) -> None:
        waited = False
        while True:
            now = self._clock.monotonic()
            if now < self._paused_until:
                await self._clock.sleep(self._paused_until - now)
                continue
            # The rate binds when callers wait for it: only then may it climb.
            bound = waited or bool(self._waiters)
            self._limiter.drip = self.control.current(now, bound=bound)
            if self._limiter.has_capacity():
                return
            waited = True
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

    def rate_limited(
        self,
        retry_after: float | None,
        time_scale: float | None = None,
        *,
        ticket: int | None = None,
    ) -> None:
        """A 429 came back (to the request granted as ``ticket``): pause everyone for its
        Retry-After, and, once per congestion episode, drip slower (see ``congestion``).

        Retry-After is the server's time and is obeyed as given; without one the pause
        is one second x ``time_scale``. A ticket of None counts as a new episode."""
        now = self._clock.monotonic()
        self._rate_limited += 1
        if retry_after is None:
            pause = 1.0 * (self.time_scale if time_scale is None else time_scale)
        else:
            pause = retry_after
        self._paused_until = max(self._paused_until, now + pause)
        if self.control.congested(ticket, self._granted, now):
            # What the account accepted just before it said no is a safer rate to start
            # the next run under than the rate that overshot: over short windows a burst
            # overshoots at a rate well above the account's.
            accepted = self._recent_rpm(now)
            overshot = self.control.rate / BETA * 60.0 + self.burst
            self._learned = overshot if accepted is None else min(overshot, accepted)
            self._limiter.drip = self.control.rate
            # No burst after an episode: the bucket starts full (no capacity) at the end
            # of the pause and drips from there, at the lower rate.
            self._limiter.empty_until(self._paused_until)

    def start_under(self, learned_rpm: float | None) -> None:
        """Begin just under a rate an earlier run learned for this key (before any grant)."""
        ceiling = None if learned_rpm is None else max(1.0, learned_rpm - self.burst) / 60.0
        self.control = RateControl(self._base_drip, self._clock.monotonic(), ceiling=ceiling)
        self._limiter.drip = self.control.rate
        self._learned = learned_rpm

    @property
    def learned_rpm(self) -> float | None:
        """The account's rate as learned (a minute's worth): what it accepted in the seconds
        before this run's last 429, else what an earlier run learned; None if nothing is."""
        return self._learned

    def _recent_rpm(self, now: float) -> float | None:
        """Requests granted a minute, over the last whole seconds (up to 10); None if fewer
        than 3 whole seconds are known."""
        second = int(now)
        if not self._recent:
            return None
        span = min(10, second - int(self._recent[0][0]))
        if span < 3:
            return None
        used = sum(c for sec, c in self._recent if second - span <= sec < second)
        return used / span * 60.0

    @property
    def clock(self) -> Clock:
        return self._clock

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
            while len(self._recent) > 61:
                self._recent.popleft()

    def last_minute(self) -> int:
        """Requests granted in the last 60 seconds: what a limit over a minute counts (never
        above ``rpm``), unlike an average since the start, which the first burst inflates."""
        now = int(self._clock.monotonic())
        return int(sum(c for sec, c in self._recent if now - 60 < sec <= now))

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
            episodes=self.control.episodes,
            learned_rpm=self.learned_rpm,
            paused_for=max(0.0, self._paused_until - self._clock.monotonic()),
        )
