"""The request bucket every API call passes (inside the client), paced and congestion-aware.

The bucket is *paced*: it holds at most ``burst`` requests and drips at the
allowed rate, at most ``(rpm - burst - margin) / 60`` per second, so no
sliding 60-second window can ever see more than ``rpm`` requests. The burst is
a tenth of a second's worth (at most 50): an account that enforces its limit
over windows as short as 1 s sees at most burst + 1 s of drip, which stays
under its share even when the engine is told 90 % of the real limit. A bucket
sized to a whole minute would let up to twice ``rpm`` through in its first
minute.
The leaky-bucket arithmetic is aiolimiter's; only its time source is swapped
for the injected clock, and waiting is done here so that waiters are served by
priority (submits are never starved by polls, nor polls by submits: the caller
picks the priority per call).

The allowed rate is :class:`~.congestion.RateControl`'s: a 429 ends a
congestion episode, then the rate probes back up. Each answer is logged
(:class:`~.estimate.AccountLimiter`): at an episode the limiter that explains
the answers says what the account accepts over its window; the rate settles
just under that, and every caller pauses until that window has room again, or
for the Retry-After if longer (a Retry-After may be too short; a limiter that
counts refused requests must not be fed them while it is full). With nothing
known yet and no Retry-After, the pause doubles from 1 s per episode that
follows another with no request accepted between, up to 60 s, the longest
window gateways use. Pauses are the account's time: never multiplied by
``--time-scale``.

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
import math
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

from ...clock import Clock
from .congestion import BETA, RateControl
from .estimate import AccountLimiter, Fit
from .shared import ASK_S, MAX_ASK, TOKEN_TTL_S, TokenSource

__all__ = ["BucketStats", "Limit", "Priority", "RequestBucket"]

#: after an episode, requests wait this long at most for the probe's answer
PROBE_WAIT_S = 10.0
#: probes go at most this often while the account keeps refusing them
MIN_PROBE_S = 0.25
#: local tickets whose global ticket is remembered (a 429 names the local one)
_TICKETS_KEPT = 4096


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

    def room(self) -> int:
        """Whole requests that may leave now."""
        self._leak()
        return int(self.max_rate - self._level + 1e-9)


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
    #: congestion episodes (one decrease each) and the account's rate as learned
    episodes: int = 0
    learned_rpm: float | None = None
    #: how the account limits, as learned ("2,700 per 60 s (sliding)"), if it is known
    learned_limit: str | None = None
    #: shared tokens (a token source) dropped unused past their time to live
    tokens_dropped: int = 0


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
        # A tenth of a second of burst at most (and never more than 50 requests): enough
        # to start quickly, small enough for limits enforced over 1 s windows (module doc).
        self.burst = burst if burst is not None else max(1.0, min(50.0, rpm / 600.0))
        # Half a percent of headroom: a token is taken a moment before its request
        # leaves, and those moments jitter; the margin keeps any window under rpm.
        margin = max(1.0, rpm * 0.005)
        self._base_drip = max(rpm - self.burst - margin, 1.0) / 60.0
        ceiling = None if learned_rpm is None else max(1.0, learned_rpm - self.burst) / 60.0
        self.control = RateControl(self._base_drip, clock.monotonic(), ceiling=ceiling)
        self._limiter = _ClockedLimiter(self.burst, self.control.rate, clock)
        if learned_rpm is not None:
            self._fit_burst(learned_rpm / 60.0)
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
        #: the answers, and the limiter that explains them
        self.account = AccountLimiter()
        # episodes in a row with no request accepted between: the blind pause doubles
        self._dry_episodes = 0
        # After an episode one request goes alone (the probe, its ticket here) and the
        # rest wait for its answer: a limiter that counts refused requests is not fed a
        # stream of them while it is full.
        self._probing = False
        self._probe: int | None = None
        self._probe_answered: asyncio.Event | None = None
        # grants per whole second over the last minute, for utilization() and last_minute()
        self._recent: collections.deque[list[float]] = collections.deque()
        # (second, window) -> grants in the window: only whole past seconds count, so the
        # sum is fixed until the second changes, and polls ask for it several times a task
        self._used: tuple[int, int, float] = (-1, 0, 0.0)
        #: the account's shared budget (several runners), or None: this bucket alone
        self.source: TokenSource | None = None
        # shared tokens in hand: (global ticket, when granted), oldest first
        self._tokens: collections.deque[tuple[int, float]] = collections.deque()
        # local ticket -> global ticket, for the 429s the source must hear of
        self._global: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._dropped = 0

    def share(self, source: TokenSource) -> None:
        """Take every grant's token from ``source`` too (before the first grant): the
        account's budget is shared with other runners (see :mod:`.shared`)."""
        self.source = source

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
            if self.source is not None:
                self._spend_token()
            self._count_grant()
            if self._probing:
                self._probe = self._granted
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
            if self._probing and self._probe is not None:
                await self._await_probe()
                continue
            # The rate binds when callers wait for it: only then may it climb.
            bound = waited or bool(self._waiters)
            self._limiter.drip = self.control.current(now, bound=bound)
            if self._limiter.has_capacity():
                if self.source is None or self._fresh_token(now):
                    return
                if await self._ask_source():
                    continue  # time passed while asking: look at the pause and the bucket again
                waited = True
                continue
            waited = True
            # Less than one token short: one token's drip time is always enough. A tick
            # waits longer, but never past 0.8 of the bucket: drip beyond a full bucket is
            # lost, and a wake-up a little late must not reach it.
            drip = self._limiter.drip
            cap = 0.8 * self._limiter.max_rate
            await self._clock.sleep(max(1.0, min(self.tick * drip, cap)) / drip)

    def _fresh_token(self, now: float) -> bool:
        """A shared token in hand that may still be sent (older ones are dropped)."""
        while self._tokens and now - self._tokens[0][1] > TOKEN_TTL_S:
            self._tokens.popleft()
            self._dropped += 1
        return bool(self._tokens)

    async def _ask_source(self) -> bool:
        """Ask the source for as many tokens as there are callers (no more than the local
        bucket lets leave now); True if some came, else wait as told (at least ASK_S)."""
        assert self.source is not None
        # For the callers waiting, and for those the recent rate says will come within
        # half a token's life: a request arriving alone then rarely waits on the source
        # (a round trip to the database); a token it does not use expires unsent.
        recent = self._recent_rpm(self._clock.monotonic())
        coming = 0 if recent is None else math.ceil(recent / 60.0 * TOKEN_TTL_S / 2)
        want = max(1, min(MAX_ASK, max(1 + len(self._waiters), coming), self._limiter.room()))
        grant = await self.source.take(want)
        if grant.n > 0:
            at = self._clock.monotonic()
            self._tokens.extend((grant.first_ticket + i, at) for i in range(grant.n))
            return True
        await self._clock.sleep(max(grant.wait_s, ASK_S))
        return False

    def _spend_token(self) -> None:
        ticket, _ = self._tokens.popleft()
        self._global[self._granted] = ticket
        if len(self._global) > _TICKETS_KEPT:
            self._global.popitem(last=False)

    async def _await_probe(self) -> None:
        """Wait for the probe's answer, or PROBE_WAIT_S (an answer may never come: the
        request may be lost; then another request probes)."""
        if self._probe_answered is None or self._probe_answered.is_set():
            self._probe_answered = asyncio.Event()
        answered = asyncio.ensure_future(self._probe_answered.wait())
        timer = asyncio.ensure_future(self._clock.sleep(PROBE_WAIT_S))
        try:
            await asyncio.wait((answered, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            timer.cancel()
        if not answered.done() or answered.cancelled():
            self._probe = None  # no answer in time: let another request probe

    def _probe_over(self, ticket: int | None, *, opened: bool) -> None:
        """The probe (``ticket``) was answered: the gate opens if it was accepted."""
        if ticket is None or ticket != self._probe:
            return
        self._probe = None
        if opened:
            self._probing = False
        if self._probe_answered is not None:
            self._probe_answered.set()

    def unanswered(self, ticket: int) -> None:
        """The request granted as ``ticket`` got no answer (or was never sent)."""
        self._probe_over(ticket, opened=False)

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

    def accepted(self, sent_at: float, route: str = "", *, ticket: int | None = None) -> None:
        """A request that left at ``sent_at`` (clock time) got past the rate limit (any
        answer but a rate 429); ``ticket``: its grant."""
        self.account.answered(sent_at, True, route)
        self._dry_episodes = 0
        self._probe_over(ticket, opened=True)

    def rate_limited(
        self,
        retry_after: float | None,
        time_scale: float | None = None,
        *,
        ticket: int | None = None,
        sent_at: float | None = None,
        route: str = "",
    ) -> None:
        """A 429 came back (to the request granted as ``ticket``, which left at ``sent_at``):
        pause everyone until the account's window has room again, and, once per
        congestion episode, settle just under what the account accepts (see module doc).

        A ticket of None counts as a new episode. ``time_scale`` is accepted for callers
        of old and ignored: the account's windows are real time."""
        now = self._clock.monotonic()
        self._rate_limited += 1
        if sent_at is not None:
            self.account.answered(sent_at, False, route)
        fit = self.account.fit
        if self.control.congested(ticket, self._granted, now):
            self._dry_episodes += 1
            fit = self.account.refit(now, retry_after, sent_at)
            if fit is None:
                # Nothing explains the answers yet: what the account accepted just before
                # it said no, never more than the rate that overshot.
                accepted = self._recent_rpm(now)
                overshot = self.control.rate / BETA * 60.0 + self.burst
                self._learned = overshot if accepted is None else min(overshot, accepted)
            else:
                rate = fit.rate
                if fit.route is not None:
                    # One route's window: the bucket, shared, may send that route's share,
                    # counted as half at least: shares move (polls follow submits), and
                    # never more than twice the limited route's rate is a safe start.
                    rate /= max(0.5, self.account.share(fit.route, now))
                self.control.settle(min(rate, self._base_drip), now)
                self._fit_burst(rate)
                self._learned = rate * 60.0
            self._limiter.drip = self.control.rate
            self._probing = True
            self._probe_over(self._probe, opened=False)
            self._pause(now, retry_after, fit, blind=True)
            # No burst after an episode: the bucket starts full (no capacity) at the end
            # of the pause and drips from there, at the lower rate.
            self._limiter.empty_until(self._paused_until)
        else:
            self._pause(now, retry_after, fit, blind=False)
        if self.source is not None:
            # Every runner of the account pauses as long, and slows once per episode.
            shared = None if ticket is None else self._global.get(ticket)
            self.source.rate_limited(shared or 0, max(0.0, self._paused_until - now))

    def _pause(
        self, now: float, retry_after: float | None, fit: Fit | None, *, blind: bool
    ) -> None:
        """Pause every caller until the window has room (and at least the Retry-After)."""
        pause = retry_after or 0.0
        if fit is not None:
            # A probe refused while the fit said there was room rules that fit out; the
            # next may say room at once again: probe no faster than MIN_PROBE_S.
            pause = max(pause, self.account.room_at(fit, now) - now, MIN_PROBE_S)
        elif retry_after is None and blind:
            pause = min(60.0, 2.0 ** (self._dry_episodes - 1))
        self._paused_until = max(self._paused_until, now + pause)
        if self._paused_until > now and blind is False:
            self._limiter.empty_until(self._paused_until)

    def conclude(self) -> None:
        """The run is over: keep the slowest rate that explains its answers as well as
        the fastest (see ``AccountLimiter.refit``), if this run learned one."""
        if self.account.fit is None:
            return
        now = self._clock.monotonic()
        fit = self.account.refit(now, conclude=True)
        if fit is not None:
            rate = fit.rate
            if fit.route is not None:
                rate /= max(0.5, self.account.share(fit.route, now))
            self._learned = rate * 60.0

    def start_under(self, learned_rpm: float | None) -> None:
        """Begin just under a rate an earlier run learned for this key (before any grant)."""
        ceiling = None if learned_rpm is None else max(1.0, learned_rpm - self.burst) / 60.0
        self.control = RateControl(self._base_drip, self._clock.monotonic(), ceiling=ceiling)
        self._limiter.drip = self.control.rate
        self._learned = learned_rpm
        if learned_rpm is not None:
            self._fit_burst(learned_rpm / 60.0)

    def _fit_burst(self, account_rate: float) -> None:
        """A burst within the headroom the settled rate leaves (``1 - SETTLE`` of the
        account's rate, here 3 %): one sized to ``--rpm`` would overfill an account's 1 s
        window when the account allows much less."""
        self._limiter.max_rate = max(1.0, min(self.burst, account_rate * 0.03))

    @property
    def learned_limit(self) -> str | None:
        """How the account limits, as this run learned it; None if nothing explains it."""
        fit = self.account.fit
        return None if fit is None else fit.describe()

    @property
    def learned_rpm(self) -> float | None:
        """The account's rate as learned (a minute's worth): what it accepted over its window
        (:mod:`.estimate`), else what an earlier run learned; None if nothing is."""
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
            learned_limit=self.learned_limit,
            paused_for=max(0.0, self._paused_until - self._clock.monotonic()),
            tokens_dropped=self._dropped,
        )
