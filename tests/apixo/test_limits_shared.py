"""The limits' seams for an account shared by several runners (apixo/limits/shared.py):
a RequestBucket whose grants also take a token of a source, a ConcurrencyLimit resized
to the slots held. The sources here are in-memory fakes on the injected clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from apixo_batch.apixo.limits import ConcurrencyLimit, Priority, RequestBucket
from apixo_batch.apixo.limits.shared import ASK_S, TOKEN_TTL_S, TokenGrant
from apixo_batch.clock import FakeClock

pytestmark = pytest.mark.looptime


class GcraSource:
    """The shared GCRA row, in memory: ``burst`` tokens at most, one per ``1/drip`` s; global
    tickets; every take, 429 report and grant time recorded."""

    def __init__(self, clock: FakeClock, drip: float, burst: int) -> None:
        self.clock = clock
        self.interval = 1.0 / drip
        self.tau = (burst - 1) * self.interval
        self.tat = clock.monotonic()
        self.granted = 0
        self.takes: list[tuple[float, int, int]] = []  # (time, want, n)
        self.reports: list[tuple[int, float]] = []

    async def take(self, want: int) -> TokenGrant:
        now = self.clock.monotonic()
        base = max(self.tat, now)
        n = max(0, min(want, math.floor((now - base + self.tau) / self.interval) + 1))
        self.tat = base + n * self.interval
        first = self.granted + 1
        self.granted += n
        self.takes.append((now, want, n))
        wait = 0.0 if n else max(0.0, base - now - self.tau)
        return TokenGrant(n, first, wait)

    def rate_limited(self, ticket: int, pause_s: float) -> None:
        self.reports.append((ticket, pause_s))


class Slots:
    """A slot source that only counts what it is told."""

    def __init__(self) -> None:
        self.shorts = 0
        self.refusals = 0

    def short(self) -> None:
        self.shorts += 1

    def refused(self) -> None:
        self.refusals += 1


async def _hammer(bucket: RequestBucket, stamps: list[float], workers: int, until: float) -> None:
    """``workers`` callers acquiring back to back until ``until``; grant times recorded."""

    async def one() -> None:
        while bucket.clock.monotonic() < until:
            await bucket.acquire(Priority.SUBMIT)
            bucket.sent()
            stamps.append(bucket.clock.monotonic())

    tasks = [asyncio.ensure_future(one()) for _ in range(workers)]
    try:
        await bucket.clock.sleep(until - bucket.clock.monotonic())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_buckets_sharing_a_source_keep_its_rate_together() -> None:
    """Two runners' buckets, each allowed the whole rpm, sharing one row: together they
    send the row's rate (not twice it), neither starved, and no 10-s window exceeds the
    row's bound (burst + drip x (10 s + TTL))."""
    clock = FakeClock()
    rpm = 600
    a = RequestBucket(rpm, clock, tick=0.1)
    b = RequestBucket(rpm, clock, tick=0.1)
    drip = (rpm - a.burst - rpm * 0.005) / 60.0
    source = GcraSource(clock, drip, burst=math.ceil(drip * ASK_S))
    a.share(source)
    b.share(source)
    sa: list[float] = []
    sb: list[float] = []
    end = clock.monotonic() + 60.0
    await asyncio.gather(_hammer(a, sa, 8, end), _hammer(b, sb, 8, end))
    together = sorted(sa + sb)
    assert len(together) <= drip * 60.0 + 2
    assert len(together) >= 0.97 * drip * 60.0
    # Shares are uneven (whoever asks first after credit accrues wins: the design's
    # "uneven shares", tuning), but neither runner starves.
    assert 0.25 < len(sa) / len(together) < 0.75
    bound = math.ceil(drip * ASK_S) + drip * (10.0 + TOKEN_TTL_S)
    for i, t in enumerate(together):
        in_window = sum(1 for u in together[i:] if u < t + 10.0)
        assert in_window <= bound


async def test_one_runner_sends_what_the_bucket_alone_sends() -> None:
    """With one runner, the row (at the bucket's own drip) costs no rate: a minute of
    back-to-back requests sends at least 0.98 of what the same bucket sends alone."""
    clock = FakeClock()
    rpm = 3000
    alone = RequestBucket(rpm, clock, tick=0.1)
    stamps_alone: list[float] = []
    await _hammer(alone, stamps_alone, 16, clock.monotonic() + 60.0)
    shared = RequestBucket(rpm, clock, tick=0.1)
    drip = (rpm - shared.burst - rpm * 0.005) / 60.0
    source = GcraSource(clock, drip, burst=max(math.ceil(drip * ASK_S), 1))
    shared.share(source)
    stamps: list[float] = []
    await _hammer(shared, stamps, 16, clock.monotonic() + 60.0)
    assert len(stamps) >= 0.98 * len(stamps_alone)
    # Tokens are asked for in groups: far fewer statements than requests.
    assert len(source.takes) <= 0.5 * len(stamps)


async def test_an_empty_source_is_asked_again_after_its_wait_never_before_the_floor() -> None:
    """A row that says "none for 0.01 s" is asked again only after ASK_S; one that says
    "none for 0.5 s" after 0.5 s."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)

    class Dry:
        def __init__(self, wait: float) -> None:
            self.wait = wait
            self.asked: list[float] = []

        async def take(self, want: int) -> TokenGrant:
            self.asked.append(clock.monotonic())
            if len(self.asked) < 3:
                return TokenGrant(0, 1, self.wait)
            return TokenGrant(1, 1, 0.0)

        def rate_limited(self, ticket: int, pause_s: float) -> None:
            raise AssertionError("no 429 here")

    for wait, gap in ((0.01, ASK_S), (0.5, 0.5)):
        dry = Dry(wait)
        bucket.share(dry)
        await bucket.acquire()
        gaps = [b - a for a, b in zip(dry.asked, dry.asked[1:], strict=False)]
        assert gaps == pytest.approx([gap, gap])


async def test_a_429_is_told_to_the_source_with_its_global_ticket_and_the_pause() -> None:
    """The 429 of a request names its local ticket; the source hears the global ticket of
    the token that request used, and the pause every runner should keep."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    source = GcraSource(clock, drip=9.0, burst=3)
    source.granted = 500  # other runners took 500 tokens before
    bucket.share(source)
    tickets = [await bucket.acquire() for _ in range(3)]
    bucket.rate_limited(2.0, ticket=tickets[1], sent_at=clock.monotonic())
    assert len(source.reports) == 1
    ticket, pause = source.reports[0]
    assert ticket == 502
    assert pause >= 2.0


async def test_a_token_not_used_within_its_time_to_live_is_dropped() -> None:
    """Tokens asked for callers who then left, held while a 429's pause runs: older than
    the TTL when it ends, dropped, never sent; the next grant uses a fresh token."""
    clock = FakeClock()
    bucket = RequestBucket(6000, clock)
    source = GcraSource(clock, drip=90.0, burst=10)
    real_take = source.take

    async def slow_take(want: int) -> TokenGrant:
        await clock.sleep(0.002)  # the database's round trip
        return await real_take(want)

    source.take = slow_take  # type: ignore[method-assign]
    bucket.share(source)
    callers = [asyncio.ensure_future(bucket.acquire()) for _ in range(5)]
    await asyncio.sleep(0)
    for c in callers[2:]:
        c.cancel()  # three leave while the first asks for five
    first, _ = await asyncio.gather(*callers[:2])
    await asyncio.gather(*callers[2:], return_exceptions=True)
    assert source.granted == 5
    bucket.rate_limited(1.0, ticket=first, sent_at=clock.monotonic())
    await bucket.acquire()
    assert bucket.statistics().tokens_dropped == 3
    assert source.granted > 5  # the grant after the pause used a fresh token
    assert clock.monotonic() >= 1_000.0 + 1.0


async def test_slots_wait_at_the_number_held_and_tell_the_source() -> None:
    """Resized to 0, a permit waits and the source hears it is short; resized to 2, two
    permits go; shrunk to 1 with 2 in flight, a released permit is not handed on."""
    slots = ConcurrencyLimit(20)
    source = Slots()
    slots.source = source
    slots.resize(0)
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert not waiter.done() and source.shorts == 1 and slots.short
    slots.resize(2)
    await asyncio.sleep(0)
    assert waiter.done()
    await slots.acquire()  # within the window of 10 and the 2 held
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert not third.done() and source.shorts == 2
    slots.resize(1)
    slots.release()
    await asyncio.sleep(0)
    assert not third.done()  # 1 in flight, 1 held
    slots.release()
    await asyncio.sleep(0)
    assert third.done()
    assert slots.statistics().peak == 2
    third.result()


async def test_held_slots_bound_the_window_and_the_window_still_learns() -> None:
    """The learned window is the account's (it may grow past the slots held, up to the
    account's figure); the cap is the smaller; a refusal is told to the source."""
    slots = ConcurrencyLimit(50)
    source = Slots()
    slots.source = source
    slots.resize(12)
    for _ in range(12):
        await slots.acquire()
        slots.running()
    assert slots.cap == 12  # held binds, the window (10 + 12) does not
    slots.resize(30)
    assert slots.cap == 22  # now the window binds
    slots.full()
    assert source.refusals == 1 and slots.cap == 12
    with pytest.raises(ValueError):
        slots.resize(-1)
    slots.resize(80)
    assert slots.limit == 50  # never past the account's figure


async def test_no_source_keeps_the_one_runner_limit() -> None:
    """Without a source the limit is what it always was: the window alone is the cap
    (adopted tasks past the limit included), and nobody is told anything."""
    slots = ConcurrencyLimit(3)
    for _ in range(5):
        slots.adopt()
    slots.full()
    assert slots.cap == 5
    assert slots.top == slots.limit == 3


# -- route gates with a shared source, and a source that cannot be reached ----------


async def test_a_gated_routes_429_is_told_to_the_source_with_its_ticket_and_pause() -> None:
    """Status polls paced by a gate of their own: a 429 on a poll is told to the source
    as any other (its global ticket, the gate's pause), so every runner slows on it."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    bucket.start_routes({"status": 300.0})
    source = GcraSource(clock, drip=9.0, burst=3)
    source.granted = 40
    bucket.share(source)
    polls = [await bucket.acquire(Priority.STATUS) for _ in range(2)]
    assert source.granted == 42  # a gated request takes a token as any other
    bucket.rate_limited(4.0, ticket=polls[1], sent_at=clock.monotonic(), route="status")
    assert len(source.reports) == 1
    ticket, pause = source.reports[0]
    assert ticket == 42
    assert pause >= 4.0
    assert bucket.routes["status"].statistics().paused_for >= 4.0


async def test_the_route_tests_request_takes_a_token_and_its_429_is_told() -> None:
    """A submit refused: a poll goes through the pause to tell whose window it was. It
    takes a token of the source (the test is a request as any: the account's shared rate
    binds it), and its 429 is told with that token's ticket."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    source = GcraSource(clock, drip=9.0, burst=5)
    bucket.share(source)
    submit = await bucket.acquire(Priority.SUBMIT)
    bucket.rate_limited(3.0, ticket=submit, sent_at=clock.monotonic(), route="submit")
    taken = source.granted
    poll = asyncio.ensure_future(bucket.acquire(Priority.STATUS))
    await clock.advance(0.01)
    assert poll.done()  # through the 3 s pause: the test
    assert source.granted > taken
    bucket.rate_limited(3.0, ticket=poll.result(), sent_at=clock.monotonic(), route="status")
    assert [t for t, _ in source.reports] == [1, 2]
    assert bucket.routes == {}  # refused: a shared window


async def test_no_token_no_route_test_and_the_source_is_not_hammered() -> None:
    """The account's row has no token through the pause (it was told of the 429 too):
    the poll does not go as the test; it waits for the pause like any request, and the
    source is asked for the test's token at most once per ASK_S, however many callers."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    source = GcraSource(clock, drip=9.0, burst=5)
    bucket.share(source)
    submit = await bucket.acquire(Priority.SUBMIT)
    start = clock.monotonic()
    bucket.rate_limited(3.0, ticket=submit, sent_at=start, route="submit")
    source.tat = start + 3.0 + source.tau  # the row paused as long
    takes = len(source.takes)
    polls = [asyncio.ensure_future(bucket.acquire(Priority.STATUS)) for _ in range(20)]
    await clock.advance(1.0)
    assert not any(p.done() for p in polls)
    assert len(source.takes) - takes <= 1.0 / ASK_S + 1
    await clock.advance(2.5)
    # The pause over, a poll goes (the probe: the rest wait for its answer).
    assert any(p.done() for p in polls)
    assert bucket.routes == {}
    for p in polls:
        p.cancel()
    await asyncio.gather(*polls, return_exceptions=True)


class Flaky:
    """The shared row behind a database that may be away: while ``down``, no tokens but
    the fair share to pace by, and a wait of ``retry_s`` before the next ask."""

    def __init__(self, row: GcraSource, fair_per_s: float, retry_s: float = 1.0) -> None:
        self.row = row
        self.fair = fair_per_s
        self.retry_s = retry_s
        self.down = False
        self.asked_down: list[float] = []

    async def take(self, want: int) -> TokenGrant:
        if self.down:
            self.asked_down.append(self.row.clock.monotonic())
            return TokenGrant(0, 0, self.retry_s, fallback_per_s=self.fair)
        return await self.row.take(want)

    def rate_limited(self, ticket: int, pause_s: float) -> None:
        self.row.rate_limited(ticket, pause_s)


async def test_an_unreachable_source_paces_locally_at_the_fair_share_then_returns() -> None:
    """Polls go on while the database is away: at the fair share named (not the bucket's
    own rate, not nothing), the source asked again about once per its wait, never per
    request; once it answers, the row paces again."""
    clock = FakeClock()
    rpm = 600
    bucket = RequestBucket(rpm, clock, tick=0.1)
    drip = (rpm - bucket.burst - rpm * 0.005) / 60.0
    row = GcraSource(clock, drip, burst=math.ceil(drip * ASK_S))
    fair = drip / 4  # four live runners last seen
    source = Flaky(row, fair)
    bucket.share(source)
    before: list[float] = []
    await _hammer(bucket, before, 8, clock.monotonic() + 10.0)
    source.down = True
    away: list[float] = []
    start = clock.monotonic()
    await _hammer(bucket, away, 8, start + 20.0)
    assert fair * 20.0 * 0.9 <= len(away) <= fair * 20.0 + bucket.burst + 1
    assert bucket.statistics().unshared == len(away)
    assert len(source.asked_down) <= 20.0 / source.retry_s + 2
    source.down = False
    granted = row.granted
    after: list[float] = []
    await _hammer(bucket, after, 8, clock.monotonic() + 10.0)
    assert len(after) >= 0.9 * drip * 10.0  # the row's rate again, not the fair share
    # Until the next ask finds the row (one wait at most), the local pace went on.
    late = bucket.statistics().unshared - len(away)
    assert late <= fair * source.retry_s + bucket.burst + 1
    assert row.granted - granted >= len(after) - late


async def test_the_local_pace_is_no_more_than_was_granted_of_late() -> None:
    """A runner that was sending 2 requests a second (the row slowed by 429s, or little
    to do) goes on at that while the source is away, not at a larger fair share."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    row = GcraSource(clock, drip=2.0, burst=1)
    source = Flaky(row, fair_per_s=6.0)
    bucket.share(source)
    await _hammer(bucket, [], 4, clock.monotonic() + 10.0)
    source.down = True
    away: list[float] = []
    await _hammer(bucket, away, 4, clock.monotonic() + 20.0)
    assert 2.0 * 20.0 * 0.85 <= len(away) <= 2.0 * 20.0 + 2


async def test_a_429_while_the_source_is_away_is_told_with_no_ticket() -> None:
    """A request paced locally took no token: its 429 is told with ticket 0 (a pause for
    every runner once the database is back, never a second decrease of an episode)."""
    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    source = Flaky(GcraSource(clock, drip=9.0, burst=3), fair_per_s=5.0)
    source.down = True
    bucket.share(source)
    ticket = await bucket.acquire()
    bucket.rate_limited(2.0, ticket=ticket, sent_at=clock.monotonic())
    assert source.row.reports[0][0] == 0


async def test_a_token_that_expires_before_the_local_turn_is_replaced_never_sent() -> None:
    """The process stalls (SIGSTOP, a loaded loop) between finding a fresh shared token and
    its local turn: the token is past its time to live; the grant waits for another one
    instead of failing (it was an assertion: a runner resumed after SIGSTOP ended with 70)."""
    clock = FakeClock()
    bucket = RequestBucket(6000, clock)
    source = GcraSource(clock, drip=90.0, burst=10)
    bucket.share(source)
    limiter = bucket._limiter
    real_acquire = limiter.acquire
    stalls = [1.0]

    async def stalled_acquire(amount: float = 1) -> None:
        if stalls:
            await clock.sleep(stalls.pop())  # the process stopped here
        await real_acquire(amount)

    limiter.acquire = stalled_acquire  # type: ignore[method-assign]
    ticket = await bucket.acquire()
    assert ticket == 1
    assert bucket.statistics().tokens_dropped >= 1
    assert source.granted >= 2  # the grant's token was asked for after the stall
