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

With a token source (the account shared by several runners, :mod:`.shared`), every
grant also takes one of its tokens: a route's gate paces its route, and its requests
then pass this bucket and take a token like any other (the route test's request
included), so no split learned by one runner sends past the account's shared rate.
A 429 on any route is told to the source, so every runner pauses and slows (the
source paces the account's total: a route's episode slows the other routes of the
other runners too, which costs rate, never a result). While the source cannot be
reached, the bucket paces this runner alone at the fair share it names (never more
than the rate granted of late), and goes back to the source once it answers.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

from ...clock import Clock
from .congestion import BETA, FLOOR, RateControl
from .estimate import AccountLimiter, Fit
from .shared import ASK_S, MAX_ASK, TOKEN_TTL_S, TokenGrant, TokenSource

__all__ = ["ROUTES", "BucketStats", "Limit", "Priority", "RequestBucket"]

#: after an episode, requests wait this long at most for the probe's answer
PROBE_WAIT_S = 10.0
#: probes go at most this often while the account keeps refusing them
MIN_PROBE_S = 0.25
#: the routes an account may limit in windows of their own (each may get its gate)
ROUTES = ("submit", "status")
#: a request of another route sent this soon after a refusal meets a full window, if the
#: window is one both routes share (and the window as fitted stays full this long yet)
TEST_SPAN_S = 0.25
#: what acquire()'s waiters are woken with: the turn; a route test to try; start over
_TURN, _TEST, _AGAIN = 0, 1, 2
#: local tickets whose global ticket is remembered (a 429 names the local one)
_TICKETS_KEPT = 4096
#: an unreachable source: this runner paces itself at the rate granted of late, but no
#: less than this share of its fair share (a runner that was idle still polls)
FALLBACK_FLOOR = 0.1


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


#: the route each priority's requests go to (what a route's own window counts)
ROUTE_OF = {Priority.SUBMIT: "submit", Priority.STATUS: "status", Priority.CONTROL: "balance"}
#: how the summary names a route
ROUTE_LABEL = {"submit": "submits", "status": "status polls"}


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

    def reopen(self, now: float) -> None:
        """An emptied bucket's pause is called off: tokens drip from ``now``."""
        self._last_check = min(self._last_check, now)

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

    def take(self) -> None:
        """One request's capacity, found there by :meth:`has_capacity` just before."""
        self._leak()
        self._level += 1

    def wait_s(self) -> float:
        """Seconds until one request's capacity (a microsecond at least: a virtual clock
        cannot sleep through less)."""
        self._leak()
        return max(1e-6, (self._level + 1 - self.max_rate) / self.drip)


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
    #: requests granted on local pacing while the token source could not be reached
    unshared: int = 0


@dataclass(slots=True)
class _RouteTest:
    """An episode whose refusals came on one route alone: is that window the route's own?

    The window is full (the refusals say so): a request of another route sent before
    ``until`` meets it full too if both routes share it, and is accepted if not."""

    #: the refused route
    route: str
    until: float
    #: the shared rate's control, rate and fit before the episode: the other routes go
    #: on from there if the window was the route's own
    control: RateControl
    learned: float | None
    fit: Fit | None
    #: the refusal's Retry-After and when its request left: what the route's fit obeys
    retry_after: float | None
    refused_at: float
    #: the test request's grant, once one left
    ticket: int | None = None
    #: when the source was last asked for the test's token (a token source)
    asked: float = -math.inf


class RequestBucket:
    """Paced request bucket shared by every API call (submit, status, balance).

    A route the account limits in a window of its own (status polls, say: APIXO's
    limits "vary by account, API key and route") gets a gate of its own: a bucket of
    the same kind that paces that route alone, its episodes, pauses and probe its own,
    while the other routes keep this bucket's rate. A route's window is taken for its
    own only when a request of another route, sent while that window was full, was
    accepted (the first refusals cannot tell a submit-only window from a shared one:
    they fit both); one refused means a shared window. Once one route has a gate, the
    other's first episode gives it one too (see :meth:`_begin_test`).
    """

    def __init__(
        self,
        rpm: int,
        clock: Clock,
        *,
        burst: float | None = None,
        tick: float = 0.0,
        time_scale: float = 1.0,
        learned_rpm: float | None = None,
        route: str | None = None,
    ) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        #: the route this bucket is the gate of (None: every route's bucket)
        self.route = route
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
        #: the answers, and the limiter that explains them
        self.account = AccountLimiter()
        if learned_rpm is not None:
            self._fit_burst(learned_rpm / 60.0)
        #: seconds of drip an empty bucket waits for, so that grants come in groups
        self.tick = tick
        self._waiters: list[tuple[int, int, asyncio.Future[int], str]] = []
        self._seq = itertools.count()
        self._busy = False
        self._paused_until = 0.0
        self._granted = 0
        self._sent = 0
        self._rate_limited = 0
        self._learned: float | None = learned_rpm
        # episodes in a row with no request accepted between: the blind pause doubles
        self._dry_episodes = 0
        # After an episode one request goes alone (the probe, its ticket here) and the
        # rest wait for its answer: a limiter that counts refused requests is not fed a
        # stream of them while it is full.
        self._probing = False
        self._probe: int | None = None
        self._probe_answered: asyncio.Event | None = None
        #: routes the account limits in windows of their own, each paced by its gate
        self.routes: dict[str, RequestBucket] = {}
        # this bucket's ticket -> the gate and the gate's ticket of the same request
        self._gated: dict[int, tuple[RequestBucket, int]] = {}
        self._test: _RouteTest | None = None
        self._unpaused: asyncio.Event | None = None
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
        # The source unreachable: this runner's own pacing meanwhile (None: the source
        # answers), when to ask it again, and that ask, under way in the background.
        self._fallback: _ClockedLimiter | None = None
        self._retry_at = 0.0
        self._retrying: asyncio.Task[None] | None = None
        self._unshared = 0

    def share(self, source: TokenSource) -> None:
        """Take every grant's token from ``source`` too (before the first grant): the
        account's budget is shared with other runners (see :mod:`.shared`)."""
        self.source = source

    async def acquire(self, priority: int = Priority.STATUS) -> int:
        """Wait for one request's worth of budget; lower ``priority`` values are served first.

        Returns the grant's ticket (its number): a 429 to that request names it, so
        that the answers to one overshoot count as one congestion episode."""
        route = ROUTE_OF.get(priority, "")
        while True:
            gate = self.routes.get(route)
            # The route's own window first: its callers then queue here as any other, and
            # never hold this bucket's turn while their route is paused.
            inner = None if gate is None else await gate.acquire(priority)
            try:
                ticket = await self._acquire(priority, route, gated=gate is not None)
            except BaseException:
                if gate is not None and inner is not None:
                    gate.unanswered(inner)
                raise
            if ticket is None:
                continue  # the route got a gate while its caller waited: through it
            if gate is not None and inner is not None:
                self._gated[ticket] = (gate, inner)
            return ticket

    async def _acquire(self, priority: int, route: str, *, gated: bool) -> int | None:
        while True:
            ticket = self._try_test(route)
            if ticket is None and self._test_wants_token(route):
                await self._ask_for_test()
                ticket = self._try_test(route)
            if ticket is not None:
                return ticket
            if not (self._busy or self._waiters):
                self._busy = True
                break
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._seq), fut, route))
            try:
                woken = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() == _TURN:
                    self._hand_over()  # we were handed the turn: pass it on
                raise
            if woken == _TURN:
                break
            if woken == _AGAIN:
                return None
        try:
            while True:
                await self._wait_for_capacity()
                if not gated and route in self.routes:
                    return None  # its route got a gate during the pause: through it
                await self._limiter.acquire()
                if self.source is None:
                    shared = None
                    break
                shared = self._take_shared(self._clock.monotonic())
                if shared is not None:
                    break
                # The shared token expired between the wait and the local turn (a process
                # stopped, or a loop stalled, past its 0.15 s): another one, never unshared.
            self._granted += 1
            if shared:
                self._note_global(self._granted, shared)
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
            # Under a microsecond is over: float rounding may leave a pause of 1e-13 s,
            # which a virtual clock cannot sleep through.
            if self._paused_until - now > 1e-6:
                await self._sleep_paused(self._paused_until - now)
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
                if self._fallback is not None:
                    # The source unreachable: paced here, at this runner's fair share.
                    self._look_again(now)
                    if self._fallback.has_capacity():
                        return
                    waited = True
                    await self._clock.sleep(self._fallback.wait_s())
                    continue
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

    async def _sleep_paused(self, seconds: float) -> None:
        """Sleep through a pause, or until it is called off (see :meth:`_split`)."""
        if self._unpaused is None or self._unpaused.is_set():
            self._unpaused = asyncio.Event()
        called_off = asyncio.ensure_future(self._unpaused.wait())
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait((called_off, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            called_off.cancel()
            timer.cancel()

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
        if self._took(grant):
            return True
        await self._clock.sleep(max(grant.wait_s, ASK_S))
        return False

    def _took(self, grant: TokenGrant) -> bool:
        """Keep what the source answered; True if requests may go (tokens came, or the
        source is unreachable and this runner paces itself)."""
        now = self._clock.monotonic()
        if grant.fallback_per_s is not None:
            if self._fallback is None:
                self._fallback = self._local_pacing(grant.fallback_per_s, now)
            self._retry_at = now + max(grant.wait_s, ASK_S)
            return True
        self._fallback = None  # it answers: the account's row paces again
        if grant.n > 0:
            self._tokens.extend((grant.first_ticket + i, now) for i in range(grant.n))
            return True
        return False

    def _local_pacing(self, fair_per_s: float, now: float) -> _ClockedLimiter:
        """The pacing of a runner whose source is away: the rate granted of late (the
        shared row's, slowed by every runner's 429s), never above the fair share, and
        never under FALLBACK_FLOOR of it."""
        recent = self._recent_rpm(now)
        rate = fair_per_s
        if recent is not None:
            rate = min(fair_per_s, max(recent / 60.0, FALLBACK_FLOOR * fair_per_s))
        rate = max(rate, 1e-3)
        return _ClockedLimiter(max(1.0, min(self.burst, rate * ASK_S)), rate, self._clock)

    def _look_again(self, now: float) -> None:
        """Ask the unreachable source again, once its wait is over, in the background:
        requests meanwhile go on at the local pace, and never wait on the database."""
        if now < self._retry_at or self._retrying is not None:
            return
        self._retrying = asyncio.ensure_future(self._ask_again())

    async def _ask_again(self) -> None:
        assert self.source is not None
        try:
            grant = await self.source.take(1 + len(self._waiters))
        finally:
            self._retrying = None
        self._took(grant)

    def _take_shared(self, now: float) -> int | None:
        """One request's share: a fresh token's global ticket, or 0 when paced locally
        (the source unreachable); None when neither is there."""
        if self._fresh_token(now):
            ticket, _ = self._tokens.popleft()
            return ticket
        if self._fallback is not None and self._fallback.has_capacity():
            self._fallback.take()
            self._unshared += 1
            return 0
        return None

    def _note_global(self, local: int, shared: int) -> None:
        self._global[local] = shared
        if len(self._global) > _TICKETS_KEPT:
            self._global.popitem(last=False)

    def _tell_source(self, ticket: int | None, pause_s: float) -> None:
        """A 429 (on any route, gated or not): every runner of the account pauses as
        long, and slows once per episode."""
        if self.source is not None:
            shared = None if ticket is None else self._global.get(ticket)
            self.source.rate_limited(shared or 0, max(0.0, pause_s))

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
        gated = self._gated.pop(ticket, None)
        if gated is not None:
            gated[0].unanswered(gated[1])
        if self._test is not None and self._test.ticket == ticket:
            self._test.ticket = None  # another request may test
        self._probe_over(ticket, opened=False)

    def _gate_of(self, ticket: int | None, route: str) -> tuple[RequestBucket | None, int | None]:
        """The gate that paced the request granted as ``ticket`` (and its ticket there);
        a request of a gated route granted before its gate was: the gate, no ticket."""
        gated = None if ticket is None else self._gated.pop(ticket, None)
        if gated is not None and self.routes.get(route) is gated[0]:
            return gated
        return self.routes.get(route), None

    def _hand_over(self) -> None:
        while self._waiters:
            _, _, fut, _ = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(_TURN)
                return
        self._busy = False

    def _wake(self, route: str, how: int, *, first: bool) -> None:
        """Wake the waiters of ``route`` (the first only, with ``first``) with ``how``."""
        for _, _, fut, of in sorted(self._waiters, key=lambda w: (w[0], w[1])):
            if of == route and not fut.done():
                fut.set_result(how)
                if first:
                    return

    def _open_test(self, route: str) -> _RouteTest | None:
        """The route test ``route``'s request may be now, if any."""
        test = self._test
        if test is None or test.ticket is not None or route == test.route or route not in ROUTES:
            return None
        if self._clock.monotonic() >= test.until:
            self._test = None  # the window may have room by now: the answer would prove nothing
            return None
        return test

    def _try_test(self, route: str) -> int | None:
        """Grant the route test's request now, through the pause, if ``route`` may be it
        (and, with a token source, a token is in hand: the test is a request as any)."""
        test = self._open_test(route)
        if test is None:
            return None
        shared = None if self.source is None else self._take_shared(self._clock.monotonic())
        if self.source is not None and shared is None:
            return None
        self._granted += 1
        if shared:
            self._note_global(self._granted, shared)
        self._count_grant()
        test.ticket = self._granted
        return self._granted

    def _test_wants_token(self, route: str) -> bool:
        """A test ``route`` may be, short of only a token (asked at most once per ASK_S)."""
        if self.source is None or self._fallback is not None:
            return False
        test = self._open_test(route)
        return test is not None and self._clock.monotonic() >= test.asked + ASK_S

    async def _ask_for_test(self) -> None:
        """One token for the route test's request: the account's row may have one through
        this runner's pause (it may not: the row was told to pause too; the test then
        lapses, and the episode counts as the shared window's)."""
        assert self.source is not None and self._test is not None
        self._test.asked = self._clock.monotonic()
        self._took(await self.source.take(1))

    def release(self) -> None:
        """Requests are spent, not returned: nothing to do."""

    def sent(self) -> None:
        """A granted request left (the client calls this): what request counts read."""
        self._sent += 1

    def accepted(self, sent_at: float, route: str = "", *, ticket: int | None = None) -> None:
        """A request that left at ``sent_at`` (clock time) got past the rate limit (any
        answer but a rate 429); ``ticket``: its grant."""
        gate, inner = self._gate_of(ticket, route)
        if gate is not None:
            if inner is None:
                gate.account.answered(sent_at, True, route)
            else:
                gate.accepted(sent_at, route, ticket=inner)
        else:
            self.account.answered(sent_at, True, route)
        test = self._test
        if test is not None and ticket is not None and ticket == test.ticket:
            self._test = None
            # Answered before the window could have room: the request left before it did,
            # but may have waited for a connection (and the network) on its way.
            if self._clock.monotonic() < test.until:
                self._split(test)
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
        gate, inner = self._gate_of(ticket, route)
        test = self._test
        if test is not None:
            if ticket is not None and ticket == test.ticket:
                # Another route refused while the refused one's window was full: a window
                # both share. What the episode settled at stands; it is full a while yet.
                self._test = None
                if sent_at is not None:
                    self.account.answered(sent_at, False, route)
                self._pause(now, retry_after, self.account.fit, blind=False)
                self._tell_source(ticket, self._paused_until - now)
                return
            if route == test.route and sent_at is not None and test.ticket is None:
                # An echo: the window was still full when this one left.
                test.until = max(test.until, self._test_until(now, retry_after, sent_at))
            elif route != test.route:
                self._test = None  # both routes refused: the test would tell nothing
        if gate is not None:
            if inner is None:
                if sent_at is not None:
                    gate.account.answered(sent_at, False, route)
            else:
                gate.rate_limited(retry_after, ticket=inner, sent_at=sent_at, route=route)
            # The request took this bucket's token: the other runners hear of it as of
            # any 429 (their requests of this route meet the same window).
            self._tell_source(ticket, max(retry_after or 0.0, gate._paused_until - now))
            return
        if sent_at is not None:
            self.account.answered(sent_at, False, route)
        fit = self.account.fit
        before = (copy.copy(self.control), self._learned, fit)
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
            if sent_at is not None:
                self._begin_test(route, now, retry_after, sent_at, before)
        else:
            self._pause(now, retry_after, fit, blind=False)
        self._tell_source(ticket, self._paused_until - now)

    def _test_until(self, now: float, retry_after: float | None, sent_at: float) -> float:
        """Until when a request of another route would meet the window full, if shared:
        a Retry-After's whole seconds (less one, and the clocks' jitter), else a moment;
        never past when the window as fitted has room."""
        until = sent_at + max(TEST_SPAN_S, (retry_after or 0.0) - 1.1)
        fit = self.account.fit
        if fit is not None:
            until = min(until, self.account.room_at(fit, now) - TEST_SPAN_S)
        return until

    def _begin_test(
        self,
        route: str,
        now: float,
        retry_after: float | None,
        sent_at: float,
        before: tuple[RateControl, float | None, Fit | None],
    ) -> None:
        """An episode refused on ``route``: let one request of another route through the
        pause, while the window is full, to tell whose window it is.

        With another route already paced by its gate (a test told it had a window of its
        own), this one's is taken for its own too: the other route's request may not
        come while this window is full (its gate may be paused), and the episode, read as
        a shared window, would slow that route to this one's rate."""
        if self.route is not None or route not in ROUTES:
            return
        pending = self._test
        if pending is not None and (pending.ticket is not None or now < pending.until):
            return  # one test at a time (an expired one no request took is void)
        control, learned, fit = before
        test = _RouteTest(route, now, control, learned, fit, retry_after, sent_at)
        if self.routes:
            self._split(test)
            return
        test.until = self._test_until(now, retry_after, sent_at)
        if test.until <= now:
            return
        self._test = test
        for other in ROUTES:
            if other != route:
                self._wake(other, _TEST, first=True)

    def _split(self, test: _RouteTest) -> None:
        """``test.route``'s window is its own: a gate paces it from now on, and the other
        routes go on as before the episode (it was not theirs)."""
        now = self._clock.monotonic()
        route = test.route
        own = self.account.split(route)
        fit = own.refit(now, test.retry_after, test.refused_at)
        if fit is None:  # nothing to pace it by (cannot be: it was refused)
            self.account.join(own)
            return
        gate = RequestBucket(
            self.rpm, self._clock, tick=self.tick, time_scale=self.time_scale, route=route
        )
        gate.account = own
        gate.hold(fit, now)
        self.routes[route] = gate
        episodes = self.control.episodes
        if all(r in self.routes for r in ROUTES):
            # Every route paced by its gate: this bucket holds nothing back of its own.
            self.control = RateControl(self._base_drip, now)
        else:
            # The other routes were not to blame: they go on from the rate they had, but
            # no faster than this one's to begin with (one account's routes have limits of
            # one order, more often than not), and climb from there: from --rpm, the first
            # overshoot of their own windows would be answered by a volley of 429s. The
            # gated route's requests pass this bucket too: its rate, and as much again.
            self.control = test.control
            start = max(2.0 * fit.rate, FLOOR * self._base_drip)
            self.control.rate = min(self.control.rate, start)
        self.control.episodes = episodes
        self._learned = test.learned
        self.account.fit = test.fit
        self._limiter.drip = self.control.rate
        self._limiter.max_rate = self.burst
        if self._learned is not None:
            self._fit_burst(self._learned / 60.0)
        self._paused_until = now
        if self._unpaused is not None:
            self._unpaused.set()
        self._limiter.reopen(now)
        self._probing = False
        self._probe_over(self._probe, opened=True)
        self._dry_episodes = 0
        # The route's callers waiting here go through the gate now.
        self._wake(route, _AGAIN, first=False)

    def hold(self, fit: Fit, now: float) -> None:
        """Settle just under ``fit`` (what this gate's route was seen to accept), paused
        until its window has room, then one request probes."""
        self.account.fit = fit
        self.control.settle(min(fit.rate, self._base_drip), now)
        self._fit_burst(fit.rate)
        self._learned = fit.rate * 60.0
        self._limiter.drip = self.control.rate
        self._probing = True
        self._pause(now, None, fit, blind=True)
        self._limiter.empty_until(self._paused_until)

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
        for gate in self.routes.values():
            gate.conclude()
        if self._retrying is not None:
            self._retrying.cancel()
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

    def start_routes(self, learned: dict[str, float]) -> None:
        """Pace each route an earlier run found limited in a window of its own (requests a
        minute) by a gate of its own, just under that rate, from the start."""
        for route, rpm in learned.items():
            self.routes[route] = RequestBucket(
                self.rpm,
                self._clock,
                tick=self.tick,
                time_scale=self.time_scale,
                learned_rpm=rpm,
                route=route,
            )

    @property
    def learned_routes(self) -> dict[str, float]:
        """The routes limited in windows of their own, each one's rate as learned (a
        minute's worth): what the journal keeps for them."""
        return {
            route: gate.learned_rpm
            for route, gate in self.routes.items()
            if gate.learned_rpm is not None
        }

    def _fit_burst(self, account_rate: float) -> None:
        """A burst within the headroom the settled rate leaves (``1 - SETTLE`` of the
        account's rate, here 3 %): one sized to ``--rpm`` would overfill an account's 1 s
        window when the account allows much less.

        A route's gate knows its window (the fit it was opened for): its headroom is
        that window's. A bucket of one request loses every late wake-up, and a gate
        paces one route, at a fraction of what the shared bucket does."""
        headroom = account_rate * 0.03
        fit = self.account.fit
        if self.route is not None and fit is not None:
            headroom *= fit.window_s
        self._limiter.max_rate = max(1.0, min(self.burst, headroom))

    @property
    def learned_limit(self) -> str | None:
        """How the account limits, as this run learned it; None if nothing explains it.
        Routes limited on their own are named: ``status polls: 225 per 10 s, ...``."""
        parts = [] if self.account.fit is None else [self.account.fit.describe()]
        for route, gate in sorted(self.routes.items()):
            how = gate.learned_limit
            if how is None and gate.learned_rpm is not None:
                how = f"about {gate.learned_rpm:,.0f}/min"
            if how is not None:
                parts.append(f"{ROUTE_LABEL.get(route, route)} on their own: {how}")
        return "; ".join(parts) or None

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
        """True when requests, not tasks, are the bottleneck: polls should be sparing.
        A status window of its own binds polls as much."""
        gate = self.routes.get("status")
        if gate is not None and gate.is_tight():
            return True
        return self.backlog_s() > 1.0 or self.utilization() > 0.9

    def window_full(self, at: float, route: str) -> bool:
        """Whether the window of ``route`` (its gate's, else this bucket's), as learned, was
        full when a request left at ``at``; False while no window is known."""
        gate = self.routes.get(route)
        if gate is not None:
            return gate.window_full(at, route)
        fit = self.account.fit
        return fit is not None and self.account.room_at(fit, at) > at

    def route_rate_per_s(self, route: str) -> float:
        """Requests a second ``route`` may have now: its gate's rate if it has one."""
        gate = self.routes.get(route)
        own = self.rate_per_s
        return own if gate is None else min(own, gate.rate_per_s)

    def statistics(self) -> BucketStats:
        learned = self.learned_rpm
        routes = self.learned_routes
        if routes:
            # What the account accepts over every route: the gated ones' and the rest's.
            learned = (learned or 0.0) + sum(routes.values())
        return BucketStats(
            rpm=self.rpm,
            effective_rpm=self.rate_per_s * 60.0,
            granted=self._granted,
            sent=self._sent,
            waiting=len(self._waiters),
            rate_limited=self._rate_limited,
            episodes=self.control.episodes,
            learned_rpm=learned,
            learned_limit=self.learned_limit,
            paused_for=max(0.0, self._paused_until - self._clock.monotonic()),
            tokens_dropped=self._dropped,
            unshared=self._unshared,
        )
