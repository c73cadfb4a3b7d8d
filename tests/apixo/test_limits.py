"""RequestBucket (paced, prioritised, AIMD on 429) and ConcurrencyLimit (hand-over, adopt)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from apixo_batch.apixo.limits import (
    BucketStats,
    ConcurrencyLimit,
    ConcurrencyStats,
    Limit,
    Priority,
    RequestBucket,
)
from apixo_batch.apixo.limits.estimate import AccountLimiter
from apixo_batch.clock import FakeClock
from apixo_batch.simulator.gate import RollingWindow, rate_limit_headers

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime

START = 1_000.0


# -- helpers ------------------------------------------------------------------


async def _settle() -> None:
    """Let every task run until all wait; time stands still (the loop says when)."""
    await FakeClock().settle()


def _max_in_window(stamps: list[float], width: float = 60.0) -> int:
    """Most grants in any half-open window [t, t + width) that starts at a grant."""
    stamps = sorted(stamps)
    return max(
        (bisect.bisect_left(stamps, t + width) - i for i, t in enumerate(stamps)),
        default=0,
    )


def _count(stamps: list[float], lo: float, hi: float) -> int:
    return sum(1 for t in stamps if lo <= t < hi)


@contextlib.asynccontextmanager
async def _workers(
    n: int, body: Callable[[int], Coroutine[Any, Any, None]]
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start ``n`` tasks running ``body(i)``; cancel and reap whatever is left on exit."""
    tasks = [asyncio.create_task(body(i)) for i in range(n)]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _granting(
    bucket: RequestBucket, clock: FakeClock, stamps: list[float], priority: int = Priority.STATUS
) -> Callable[[int], Coroutine[Any, Any, None]]:
    """A worker that acquires forever and records each grant's time; the account accepts
    every request at once (as the client reports its answers)."""

    async def body(_: int) -> None:
        while True:
            ticket = await bucket.acquire(priority)
            stamps.append(clock.monotonic())
            bucket.accepted(clock.monotonic(), ticket=ticket)

    return body


# -- RequestBucket ------------------------------------------------------------


def test_bucket_refuses_rpm_below_one() -> None:
    """rpm 0 or negative is a configuration error."""
    with pytest.raises(ValueError, match="rpm"):
        RequestBucket(0, FakeClock())


def test_bucket_burst_is_about_a_tenth_of_a_second_and_capped() -> None:
    """The default burst is rpm/600 (at least 1, at most 50): a tenth of a second's worth,
    so a limit over 1 s windows holds when the engine is told 90 % of it."""
    clock = FakeClock()
    assert RequestBucket(6000, clock).burst == 10.0
    assert RequestBucket(600, clock).burst == 1.0
    assert RequestBucket(30, clock).burst == 1.0
    assert RequestBucket(60_000, clock).burst == 50.0
    assert RequestBucket(600, clock, burst=3).burst == 3


def test_bucket_and_limit_share_the_limit_interface() -> None:
    """Both limits can stand wherever a Limit is expected."""
    limits: list[Limit] = [RequestBucket(60, FakeClock()), ConcurrencyLimit(2)]
    assert all(callable(x.acquire) and callable(x.release) for x in limits)


def test_bucket_statistics_start_clean() -> None:
    """A fresh bucket reports its rpm as the effective rate and nothing granted or waiting."""
    stats = RequestBucket(600, FakeClock()).statistics()
    assert isinstance(stats, BucketStats)
    assert stats.rpm == 600
    assert 0.99 * 600 <= stats.effective_rpm <= 600  # a little headroom under rpm
    assert (stats.granted, stats.waiting, stats.rate_limited, stats.paused_for) == (0, 0, 0, 0.0)


async def test_bucket_never_lets_more_than_rpm_into_any_sliding_minute() -> None:
    """rpm=600, 40 greedy callers, 5 fake minutes: every 60 s window holds ≤ 600 grants."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    stamps: list[float] = []
    async with _workers(40, _granting(bucket, clock, stamps)):
        await clock.advance(300.0)
    stamps = [t for t in stamps if t < START + 300.0]
    assert _max_in_window(stamps) <= 600
    assert all(b >= a for a, b in itertools.pairwise(stamps))  # granted in time order


async def test_bucket_throughput_over_five_minutes_is_close_to_rpm() -> None:
    """Saturated for 5 fake minutes, the bucket grants at least 95 % of rpm × 5."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    stamps: list[float] = []
    async with _workers(40, _granting(bucket, clock, stamps)):
        await clock.advance(300.0)
    granted = _count(stamps, START, START + 300.0)
    assert granted >= 0.95 * 600 * 5
    assert granted <= 600 * 5
    # Pacing, not bursts: the last minute is as full as the first ones.
    assert _count(stamps, START + 240.0, START + 300.0) >= 0.95 * 600


async def test_bucket_initial_burst_is_about_one_second() -> None:
    """At start only ``burst`` (≈ rpm/60) requests go through at once, not a minute's worth."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    stamps: list[float] = []
    async with _workers(40, _granting(bucket, clock, stamps)):
        await _settle()
        at_once = len(stamps)
        await clock.advance(1.0)
    assert 1 <= at_once <= bucket.burst
    assert at_once <= 600 / 60 + 1
    assert _count(stamps, START, START + 1.0) <= bucket.burst + 600 / 60 + 1


@pytest.mark.parametrize(("rpm", "seconds"), [(1, 200.0), (7, 150.0), (150, 150.0), (3_000, 75.0)])
async def test_bucket_sliding_minute_holds_for_other_rates(rpm: int, seconds: float) -> None:
    """Across small and large rates, no half-open 60 s window sees more than rpm grants."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(rpm, clock)
    stamps: list[float] = []
    async with _workers(8, _granting(bucket, clock, stamps)):
        await clock.advance(seconds)
    assert stamps
    assert _max_in_window(stamps) <= rpm
    assert bucket.statistics().granted >= len(stamps)


async def test_bucket_with_burst_one_sustains_its_paced_rate() -> None:
    """rpm=30 (burst 1): five saturated minutes grant ≈ burst + drip × 300, not half of it."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(30, clock)
    drip_per_minute = bucket.statistics().effective_rpm - bucket.burst
    stamps: list[float] = []
    async with _workers(3, _granting(bucket, clock, stamps)):
        await clock.advance(300.0)
    assert _max_in_window(stamps) <= 30
    assert _count(stamps, START, START + 300.0) >= 0.95 * (bucket.burst + drip_per_minute * 5)


@pytest.mark.parametrize(("tick", "rpm"), [(0.0, 1_200), (0.1, 6_000)])
async def test_bucket_tick_groups_grants_and_keeps_window_and_rate(tick: float, rpm: int) -> None:
    """Saturated 70 fake seconds: with a 0.1 s tick at rpm 6000, grants leave in groups of ~8
    (the tick's 10, clipped to 0.8 of the 10-request bucket).

    The window bound and the throughput are the same with and without the tick; only
    the number of distinct grant instants (loop wake-ups) drops.
    """
    clock = FakeClock(start=START)
    bucket = RequestBucket(rpm, clock, tick=tick)
    stamps: list[float] = []
    async with _workers(30, _granting(bucket, clock, stamps)):
        await clock.advance(70.0)
    stamps = [t for t in stamps if t < START + 70.0]
    assert _max_in_window(stamps) <= rpm
    assert len(stamps) >= 0.95 * rpm * 70 / 60
    instants = len(set(stamps))
    if tick:
        # one wake-up per group of 8 (plus the start), not one per grant
        assert instants <= len(stamps) / 8 * 1.05 + 1
        assert len(stamps) / instants >= 7.5
    else:
        assert instants >= 0.9 * len(stamps)


async def test_bucket_tick_never_waits_past_half_the_bucket() -> None:
    """A tick longer than the bucket holds is clipped: a burst-1 bucket still grants at its rate."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock, burst=1, tick=5.0)
    stamps: list[float] = []
    async with _workers(4, _granting(bucket, clock, stamps)):
        await clock.advance(60.0)
    drip_per_s = bucket.rate_per_s - 1 / 60.0
    assert len(stamps) >= 0.95 * drip_per_s * 60.0
    assert _max_in_window(stamps) <= 600


async def test_bucket_serves_control_before_earlier_waiters() -> None:
    """With the bucket saturated, a CONTROL waiter queued last is served right after the holder."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(60, clock)  # burst 1, then one token per ~1 s
    await bucket.acquire(Priority.SUBMIT)  # spends the burst
    order: list[str] = []

    async def caller(name: str, priority: int) -> None:
        await bucket.acquire(priority)
        order.append(name)

    kinds = [Priority.SUBMIT, Priority.STATUS, Priority.SUBMIT, Priority.STATUS]
    tasks = [asyncio.create_task(caller(f"w{i}", p)) for i, p in enumerate(kinds)]
    await _settle()
    tasks.append(asyncio.create_task(caller("control", Priority.CONTROL)))
    await _settle()
    assert bucket.statistics().waiting == 4  # w0 holds the turn, three waiters + control
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    # w0 already held the turn; control overtakes everyone that queued before it.
    assert order[:2] == ["w0", "control"]
    assert sorted(order[2:]) == ["w1", "w2", "w3"]


async def test_bucket_serves_lower_priority_values_first_fifo_within_one() -> None:
    """Waiters are served by Priority value (CONTROL first), equal values in arrival order."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(60, clock)
    await bucket.acquire()
    order: list[str] = []

    async def caller(name: str, priority: int) -> None:
        await bucket.acquire(priority)
        order.append(name)

    specs = [
        ("holder", Priority.SUBMIT),
        ("s1", Priority.SUBMIT),
        ("p1", Priority.STATUS),
        ("s2", Priority.SUBMIT),
        ("p2", Priority.STATUS),
        ("c1", Priority.CONTROL),
    ]
    tasks = []
    for name, prio in specs:
        tasks.append(asyncio.create_task(caller(name, prio)))
        await _settle()
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    assert Priority.CONTROL < min(Priority.STATUS, Priority.SUBMIT)
    assert Priority.STATUS != Priority.SUBMIT
    queued = specs[1:]
    expected = [n for n, _ in sorted(queued, key=lambda s: (s[1], queued.index(s)))]
    assert order == ["holder", *expected]
    assert order[1] == "c1"


async def test_bucket_priority_keeps_pacing() -> None:
    """Serving by priority does not add grants: the paced rate still holds."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(120, clock)
    stamps: list[float] = []
    submits = _granting(bucket, clock, stamps, Priority.SUBMIT)
    polls = _granting(bucket, clock, stamps, Priority.STATUS)

    async def mixed(i: int) -> None:
        await (submits if i % 2 else polls)(i)

    async with _workers(10, mixed):
        await clock.advance(120.0)
    assert _max_in_window(stamps) <= 120
    assert len(stamps) >= 0.95 * 120 * 2


async def test_bucket_rate_limited_pauses_everyone_for_retry_after() -> None:
    """rate_limited(retry_after=2): no grant for 2 s, then grants resume."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    stamps: list[float] = []
    async with _workers(20, _granting(bucket, clock, stamps)):
        await clock.advance(30.0)
        hit = clock.monotonic()
        bucket.rate_limited(retry_after=2.0)
        stats = bucket.statistics()
        assert stats.rate_limited == 1
        assert stats.paused_for == pytest.approx(2.0)
        await clock.advance(10.0)
    assert _count(stamps, hit, hit + 2.0) == 0
    assert _count(stamps, hit + 2.0, hit + 3.0) > 0
    assert bucket.statistics().paused_for == 0.0


async def test_bucket_pauses_are_the_accounts_time_and_blind_ones_double() -> None:
    """A Retry-After is obeyed as given, and so is the pause without one: the account's
    windows are real time, whatever --time-scale says. Without Retry-After and with
    nothing that explains the answers, the pause doubles per episode that follows
    another with nothing accepted between, up to 60 s; an acceptance resets it."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock, time_scale=0.25)
    bucket.rate_limited(retry_after=2.0)
    assert bucket.statistics().paused_for == pytest.approx(2.0)
    other = RequestBucket(600, clock, time_scale=0.25)
    pauses = []
    for _ in range(8):
        other.rate_limited(None)  # no ticket: each its own episode
        pauses.append(other.statistics().paused_for)
        await clock.advance(pauses[-1])
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    other.accepted(clock.monotonic())
    other.rate_limited(None)
    assert other.statistics().paused_for == pytest.approx(1.0)


async def test_bucket_one_decrease_per_congestion_episode() -> None:
    """The 429s answered to requests granted before the decrease are one signal: the rate
    drops once; a 429 to a request granted after it opens the next episode."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    tickets = [await bucket.acquire() for _ in range(5)]
    top = bucket.statistics().effective_rpm
    for t in tickets:
        bucket.rate_limited(0.0, ticket=t)
    once = bucket.statistics()
    assert (once.episodes, once.rate_limited) == (1, 5)
    assert once.effective_rpm == pytest.approx((top - bucket.burst) * 0.8 + bucket.burst)
    pending = asyncio.ensure_future(bucket.acquire())
    await clock.run_until_idle()
    bucket.rate_limited(0.0, ticket=await pending)
    assert bucket.statistics().episodes == 2


async def test_bucket_rate_limited_slows_down_then_probes_back() -> None:
    """After a 429 the rate drops by a fifth, then climbs back: fast, slowly near the rate
    that overshot, and fully to the configured rate within about a minute."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    configured = bucket.statistics().effective_rpm
    stamps: list[float] = []
    async with _workers(20, _granting(bucket, clock, stamps)):
        await clock.advance(60.0)
        before = _count(stamps, START + 30.0, START + 60.0)
        hit = clock.monotonic()
        bucket.rate_limited(retry_after=0.0)
        slowed = bucket.statistics().effective_rpm
        assert slowed < configured * 0.85
        await clock.advance(10.0)
        near = bucket.statistics().effective_rpm
        assert slowed < near < configured  # probing, slowly near the old ceiling
        await clock.advance(60.0)
        recovered = bucket.statistics().effective_rpm
        await clock.advance(60.0)
    during = _count(stamps, hit + 1.0, hit + 4.0) / 3.0
    after = _count(stamps, hit + 70.0, hit + 130.0) / 60.0
    assert during < 0.9 * before / 30.0
    assert after >= 0.95 * before / 30.0
    assert recovered == pytest.approx(configured)
    # What it accepted is counted over 10 whole seconds: a grant more or less at either end.
    assert bucket.statistics().learned_rpm == pytest.approx(configured, abs=2 * 60 / 10)
    assert _max_in_window(stamps) <= 600


async def test_bucket_repeated_new_episodes_have_a_floor() -> None:
    """429s that each open an episode (no ticket) slow the drip to 5 % of the rate, no further."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    base_drip_rpm = bucket.statistics().effective_rpm - bucket.burst
    for _ in range(50):
        bucket.rate_limited(retry_after=0.0)
    assert bucket.statistics().effective_rpm == pytest.approx(base_drip_rpm * 0.05 + bucket.burst)
    assert bucket.statistics().rate_limited == 50


async def test_bucket_told_90_percent_never_overfills_a_5_second_window() -> None:
    """Told 90 % of a limit enforced over 5 s windows (2,700 of 3,000 a minute, so 250
    per 5 s): no 5 s window of grants holds more than that, burst included."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(2_700, clock)
    stamps: list[float] = []
    async with _workers(40, _granting(bucket, clock, stamps)):
        await clock.advance(120.0)
    assert _max_in_window(stamps, width=5.0) <= 3_000 * 5 / 60
    assert _max_in_window(stamps) <= 2_700


async def test_bucket_starts_under_a_learned_rate() -> None:
    """A rate an earlier run learned (3,000 a minute, told 9,000): this one starts just
    under it, not at --rpm."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(9_000, clock, learned_rpm=3_000)
    assert 2_400 < bucket.statistics().effective_rpm <= 3_000
    assert bucket.statistics().learned_rpm == pytest.approx(3_000)


async def test_bucket_cancelled_waiter_does_not_wedge_the_bucket() -> None:
    """Cancelling a queued waiter and the turn holder leaves the rest served."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(60, clock)
    await bucket.acquire()
    served: list[int] = []

    async def caller(i: int) -> None:
        await bucket.acquire()
        served.append(i)

    tasks = [asyncio.create_task(caller(i)) for i in range(5)]
    await _settle()
    tasks[0].cancel()  # holds the turn, sleeping on the clock for capacity
    tasks[2].cancel()  # queued
    await _settle()
    await clock.run_until_idle()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[2], asyncio.CancelledError)
    assert served == [1, 3, 4]
    stats = bucket.statistics()
    assert (stats.waiting, bucket.pressure) == (0, 0)
    assert stats.granted == 4
    # Still usable afterwards.
    late = asyncio.create_task(bucket.acquire())
    await clock.run_until_idle()
    await late


async def test_bucket_waiter_cancelled_after_being_handed_the_turn_passes_it_on() -> None:
    """A waiter cancelled in the instant it is handed the turn passes the turn on."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(60, clock)
    await bucket.acquire()
    served: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def holder() -> None:
        await bucket.acquire()
        served.append("holder")
        tasks["next"].cancel()  # its future is already resolved: it holds the turn

    async def caller(name: str) -> None:
        await bucket.acquire()
        served.append(name)

    tasks["holder"] = asyncio.create_task(holder())
    await _settle()
    tasks["next"] = asyncio.create_task(caller("next"))
    await _settle()
    tasks["last"] = asyncio.create_task(caller("last"))
    await _settle()
    await clock.run_until_idle()
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert served == ["holder", "last"]
    assert bucket.pressure == 0


async def test_bucket_statistics_track_grants_and_waiters() -> None:
    """granted counts every grant; waiting counts queued callers; pressure includes the holder."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(60, clock)
    await bucket.acquire()
    tasks = [asyncio.create_task(bucket.acquire()) for _ in range(3)]
    await _settle()
    stats = bucket.statistics()
    assert (stats.granted, stats.waiting, bucket.pressure) == (1, 2, 3)
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    stats = bucket.statistics()
    assert (stats.granted, stats.waiting, bucket.pressure) == (4, 0, 0)
    bucket.release()  # requests are spent, not returned: a no-op
    assert bucket.statistics().granted == 4


# -- ConcurrencyLimit ---------------------------------------------------------


def test_concurrency_limit_refuses_below_one() -> None:
    """A limit of 0 is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimit(0)


async def test_concurrency_never_exceeds_limit_under_random_workload() -> None:
    """300 tasks acquiring and releasing at random fake times never hold more than the limit."""
    clock = FakeClock(start=START)
    limit = ConcurrencyLimit(7)
    rng = random.Random(20260109)
    in_use = 0
    peak = 0
    done = 0

    async def worker(_: int) -> None:
        nonlocal in_use, peak, done
        for _ in range(3):
            await clock.sleep(rng.uniform(0.0, 5.0))
            await limit.acquire()
            in_use += 1
            peak = max(peak, in_use)
            assert in_use == limit.in_flight <= limit.limit
            await clock.sleep(rng.uniform(0.1, 3.0))
            in_use -= 1
            limit.release()
        done += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(300)]
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    assert done == 300
    stats = limit.statistics()
    assert isinstance(stats, ConcurrencyStats)
    assert peak == stats.peak == 7
    assert (stats.limit, stats.in_flight, stats.waiting) == (7, 0, 0)


async def test_concurrency_release_hands_permit_to_longest_waiter() -> None:
    """Waiters get permits in arrival order; a newcomer cannot overtake a handed-over permit."""
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await limit.acquire()
        order.append(name)

    tasks = []
    for name in ("w1", "w2", "w3"):
        tasks.append(asyncio.create_task(waiter(name)))
        await _settle()
    assert limit.statistics().waiting == 3
    limit.release()  # handed to w1 before it even runs
    tasks.append(asyncio.create_task(waiter("late")))
    await _settle()
    assert order == ["w1"]
    assert limit.in_flight == 1
    for _ in range(3):
        limit.release()
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["w1", "w2", "w3", "late"]
    assert limit.in_flight == 1
    assert limit.statistics().peak == 1


async def test_concurrency_acquire_is_immediate_below_the_limit() -> None:
    """Below the limit and with nobody waiting, acquire takes a permit at once."""
    limit = ConcurrencyLimit(3)
    await limit.acquire()
    await limit.acquire()
    stats = limit.statistics()
    assert (stats.in_flight, stats.peak, stats.waiting) == (2, 2, 0)


async def test_concurrency_cancelled_waiter_does_not_leak_a_permit() -> None:
    """A waiter cancelled while queued leaves no trace; the next release goes to the next one."""
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    cancelled = asyncio.create_task(limit.acquire())
    kept = asyncio.create_task(limit.acquire())
    await _settle()
    cancelled.cancel()
    await _settle()
    assert limit.statistics().waiting == 1
    limit.release()
    await kept
    assert cancelled.cancelled()
    assert limit.in_flight == 1
    limit.release()
    assert limit.statistics() == ConcurrencyStats(limit=1, in_flight=0, peak=1, waiting=0, window=1)


async def test_concurrency_waiter_cancelled_after_hand_over_returns_the_permit() -> None:
    """A waiter cancelled right after being handed a permit gives it to the next waiter."""
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    first = asyncio.create_task(limit.acquire())
    second = asyncio.create_task(limit.acquire())
    await _settle()
    limit.release()  # permit handed to `first`, which has not run yet
    first.cancel()
    await _settle()
    await second
    assert first.cancelled()
    assert limit.in_flight == 1  # held by `second` only
    limit.release()
    assert limit.in_flight == 0
    assert limit.statistics().waiting == 0


async def test_concurrency_adopt_counts_past_the_limit() -> None:
    """adopt() counts tasks already in flight even beyond the limit; new ones wait until below."""
    limit = ConcurrencyLimit(2)
    for _ in range(3):
        limit.adopt()
    assert (limit.in_flight, limit.statistics().peak) == (3, 3)
    newcomer = asyncio.create_task(limit.acquire())
    await _settle()
    limit.release()  # 2 in flight: still at the limit
    await _settle()
    assert not newcomer.done()
    limit.release()  # 1 in flight: the newcomer gets a permit
    await _settle()
    assert newcomer.done()
    assert limit.in_flight == 2


def test_concurrency_release_more_than_taken_raises() -> None:
    """Releasing a permit nobody holds is a bug and says so."""
    limit = ConcurrencyLimit(2)
    limit.adopt()
    limit.release()
    with pytest.raises(RuntimeError, match="released more"):
        limit.release()
    assert limit.in_flight == 0


async def test_bucket_utilization_counts_whole_past_seconds() -> None:
    """utilization() is the share of the drip used over the last whole seconds; grants of
    the running second count once it is over (the value is fixed within a second)."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(6_000, clock)  # burst 50
    for _ in range(30):
        await bucket.acquire()
    assert bucket.utilization() == 0.0  # the current second is not over
    await clock.advance(0.5)
    for _ in range(10):
        await bucket.acquire()
    assert bucket.utilization() == 0.0  # still the same second: the cached value holds
    await clock.advance(0.6)
    expected = 40 / (bucket.rate_per_s - bucket.burst / 60.0) / 10
    assert bucket.utilization() == pytest.approx(expected)
    assert bucket.utilization(window_s=1) == pytest.approx(expected * 10)
    await clock.advance(10.0)
    assert bucket.utilization() == 0.0  # the grants left the window


async def test_concurrency_waiters_hear_when_the_last_live_permit_is_released() -> None:
    """Adopted past the limit, two stranded, then the third task ends: only stranded
    permits are left, so the waiter is told (SlotsStranded) instead of waiting forever."""
    from apixo_batch.apixo.limits import SlotsStranded

    limit = ConcurrencyLimit(2)
    for _ in range(3):
        limit.adopt()
    limit.strand()
    limit.strand()
    waiter = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    limit.release()
    with pytest.raises(SlotsStranded):
        await waiter
    with pytest.raises(SlotsStranded):
        await limit.acquire()


# -- the slot window ------------------------------------------------------------


async def test_slot_window_starts_small_and_grows_one_per_task_created() -> None:
    """Slow start: 32 permits at first, one more for each task created, up to the limit."""
    from apixo_batch.apixo.limits.slots import SLOW_START

    limit = ConcurrencyLimit(100)
    for _ in range(SLOW_START):
        await limit.acquire()
    blocked = asyncio.ensure_future(limit.acquire())
    await _settle()
    assert not blocked.done() and limit.statistics().window == SLOW_START
    limit.running()
    await _settle()
    assert blocked.done() and limit.statistics().window == SLOW_START + 1
    for _ in range(500):
        limit.running()
    assert limit.statistics().window == 100


async def test_slot_window_closes_to_the_tasks_that_exist_and_hands_freed_slots_to_retries() -> (
    None
):
    """A submit refused for slots: the window closes to the tasks created; the refused
    submit keeps its permit and gets the next slot a task frees, before admission."""
    limit = ConcurrencyLimit(10)
    for _ in range(5):
        await limit.acquire()
        limit.running()
    await limit.acquire()  # the submit about to be refused
    limit.full()
    assert limit.statistics().window == 5
    retry = asyncio.ensure_future(limit.freed())
    admission = asyncio.ensure_future(limit.acquire())
    await _settle()
    assert not retry.done() and not admission.done()
    limit.release(running=True)  # a task ended
    await _settle()
    assert retry.done() and not admission.done()
    admission.cancel()
    await _settle()
    # Past slow start the window opens by a slot per window's worth of tasks created.
    for _ in range(5):
        limit.running()  # a submit got its task id...
        limit.release(running=True)  # ...and another task ended: still 4 or 5 exist
    assert limit.statistics().window == 5  # a fifth of a slot per task: not a whole one yet
    limit.running()
    assert limit.statistics().window == 6


async def test_a_refused_submit_hears_when_no_task_can_free_a_slot() -> None:
    """Every task that exists is stranded: a retry waiting for a freed slot is told."""
    from apixo_batch.apixo.limits import SlotsStranded

    limit = ConcurrencyLimit(10)
    await limit.acquire()
    limit.running()
    await limit.acquire()
    limit.full()
    retry = asyncio.ensure_future(limit.freed())
    await _settle()
    limit.strand()
    with pytest.raises(SlotsStranded):
        await retry


async def test_bucket_rate_does_not_climb_while_demand_is_below_it() -> None:
    """After an episode, a trickle of requests (far below the allowed rate) does not make
    the rate climb back to --rpm: only a rate that binds is probed."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    bucket.rate_limited(retry_after=0.0)
    slowed = bucket.statistics().effective_rpm

    async def trickle() -> None:
        for _ in range(12):
            await bucket.acquire()
            await clock.sleep(10.0)

    task = asyncio.ensure_future(trickle())
    await clock.run_until_idle()
    await task
    assert bucket.statistics().effective_rpm == pytest.approx(slowed)


async def test_last_minute_counts_what_the_account_counts_and_never_passes_rpm() -> None:
    """What the progress line shows: grants of the last 60 s, the first burst included,
    never above --rpm; an average since the start would show more early on."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    stamps: list[float] = []
    seen: list[int] = []
    async with _workers(20, _granting(bucket, clock, stamps)):
        for _ in range(24):
            await clock.advance(5.0)
            seen.append(bucket.last_minute())
    assert max(seen) <= 600
    assert seen[-1] >= 0.95 * 600 * (bucket.statistics().effective_rpm / 600)
    assert seen[0] == len([t for t in stamps if t <= START + 5.0])  # all of the first 5 s


# -- the account's limiter, inferred (issue 31) -------------------------------


def test_estimate_is_what_the_account_accepted_over_its_window() -> None:
    """An account of 120 requests a minute, a burst at 9,000 rpm: the 429 comes after
    120 requests in under a second, its Retry-After says 59 s. The estimate is 120 a
    minute over a 60 s window, not the rate allowed when the 429 came (~9,000)."""
    account = AccountLimiter()
    for i in range(120):
        account.answered(START + i / 150.0, True, "submit")
    account.answered(START + 0.8, False, "submit")
    fit = account.refit(START + 0.85, retry_after=59.0)
    assert fit is not None
    assert (fit.window_s, fit.limit, fit.rate * 60) == (60.0, 120, pytest.approx(120.0))
    assert account.room_at(fit, START + 0.85) == pytest.approx(START + 60.0)


def test_estimate_rules_out_a_window_a_refusal_contradicts() -> None:
    """Every window explains the first 429; the fastest is tried first. A later refusal
    at a count that window would have accepted rules it out."""
    account = AccountLimiter()
    for i in range(450):  # 150 a second for 3 s
        account.answered(START + i / 150.0, True, "status")
    account.answered(START + 3.0, False, "status")
    first = account.refit(START + 3.05)
    assert first is not None and first.window_s < 10.0 and first.rate > 100.0
    account.answered(START + 6.0, False, "status")  # 3 s later: still refused
    second = account.refit(START + 6.05)
    assert second is not None and second.window_s >= 10.0
    assert second.rate * 60 == pytest.approx(2_700.0)
    assert "450 per 10 s, sliding window" == second.describe()


async def _against_account(
    clock: FakeClock,
    bucket: RequestBucket,
    *,
    window_s: float,
    limit: int,
    fixed: bool = False,
    counted: bool = False,
    retry_after: str = "truthful",
    seconds: float,
    rtt: float = 0.05,
) -> tuple[list[float], list[float]]:
    """Saturate ``bucket`` against an account limiting as the simulator does (its own
    window, on the fake clock), answers ``rtt`` after sending: (accepted, refused) times."""
    window = RollingWindow()
    accepted: list[float] = []
    refused: list[float] = []

    async def body(_: int) -> None:
        while True:
            ticket = await bucket.acquire()
            at = clock.monotonic()
            wait = window.admit(at, limit, window_s, fixed=fixed, count_refused=counted)
            await clock.sleep(rtt)
            if wait is None:
                accepted.append(at)
                bucket.accepted(at, "status", ticket=ticket)
                continue
            refused.append(at)
            header = rate_limit_headers(wait, retry_after).get("Retry-After")
            ra = float(header) if header else None
            bucket.rate_limited(ra, ticket=ticket, sent_at=at, route="status")

    async with _workers(60, body):
        await clock.advance(seconds)
    return accepted, refused


LIMITERS = {
    "sliding-10s": {"window_s": 10.0},
    "sliding-1s": {"window_s": 1.0},
    "fixed-10s": {"window_s": 10.0, "fixed": True},
    "counted-10s-no-retry-after": {"window_s": 10.0, "counted": True, "retry_after": "absent"},
    "retry-after-short-10s": {"window_s": 10.0, "retry_after": "short"},
    "counted-60s-no-retry-after": {"window_s": 60.0, "counted": True, "retry_after": "absent"},
    "fixed-60s-counted": {"window_s": 60.0, "fixed": True, "counted": True},
    "fixed-10s-counted-no-retry-after": {
        "window_s": 10.0,
        "fixed": True,
        "counted": True,
        "retry_after": "absent",
    },
}


@pytest.mark.parametrize("kind", list(LIMITERS))
async def test_told_the_default_rpm_converges_under_every_limiter(kind: str) -> None:
    """Told 9,000 rpm, the account allows 2,700 a minute (30 %): at least 0.85 of what the
    account would accept over the run, at most 3 % of requests refused, and the rate
    kept for the next run within 15 % of the truth (the next run starts there too)."""
    spec: dict[str, Any] = LIMITERS[kind]
    window_s = spec["window_s"]
    limit = round(2_700 * window_s / 60.0)
    seconds = 150.0 if window_s >= 60 else 60.0
    clock = FakeClock(start=START)
    bucket = RequestBucket(9_000, clock, tick=0.1)
    accepted, refused = await _against_account(clock, bucket, limit=limit, seconds=seconds, **spec)
    bound = 2_700 / 60.0 * seconds
    assert len(accepted) / bound >= 0.85
    assert len(refused) / (len(accepted) + len(refused)) <= 0.03
    bucket.conclude()  # the run's end: what is kept for the next one
    learned = bucket.learned_rpm
    assert learned is not None and learned == pytest.approx(2_700, rel=0.15)
    following = RequestBucket(9_000, clock)
    following.start_under(learned)
    assert following.rate_per_s * 60 == pytest.approx(2_700, rel=0.15)


@pytest.mark.parametrize("kind", list(LIMITERS))
async def test_told_90_percent_of_the_limit_never_meets_it(kind: str) -> None:
    spec: dict[str, Any] = LIMITERS[kind]
    window_s = spec["window_s"]
    clock = FakeClock(start=START)
    bucket = RequestBucket(2_430, clock, tick=0.1)
    _, refused = await _against_account(
        clock, bucket, limit=round(2_700 * window_s / 60.0), seconds=90.0, **spec
    )
    assert refused == []


def test_the_run_keeps_the_slowest_rate_that_explains_its_answers() -> None:
    """A fixed 60 s window whose boundary fell inside the first burst: 2,700 accepted,
    refusals until the boundary, 2,700 accepted again. A fixed window of 30 s explains
    that as well as one of 60 s; the run tries the faster, but keeps the slower for the
    next run (a next run started at twice the account's rate would meet a 429 at once)."""
    account = AccountLimiter()
    t = START
    for i in range(2_700):  # 150 a second from 18 s before the boundary
        account.answered(t + i / 150.0, True, "submit")
    boundary = t + 20.0
    for k in range(5):
        account.answered(t + 18.0 + k * 0.4, False, "submit")
    for i in range(2_700):
        account.answered(boundary + 0.01 + i / 150.0, True, "submit")
    account.answered(boundary + 18.5, False, "submit")
    now = boundary + 18.6
    tried = account.refit(now, retry_after=42.0, refused_at=boundary + 18.5)
    kept = account.refit(now, conclude=True)
    assert tried is not None and kept is not None
    assert kept.rate * 60 == pytest.approx(2_700, rel=0.15)
    assert kept.rate <= tried.rate


# -- a window per route (issue 31) ----------------------------------------------


async def _against_routes(
    clock: FakeClock,
    bucket: RequestBucket,
    *,
    window_s: float,
    limit: int,
    per_route: bool,
    seconds: float,
    workers: tuple[int, int] = (30, 30),
    rtt: float = 0.05,
) -> dict[str, tuple[list[float], list[float]]]:
    """Saturate ``bucket`` with submits and status polls against an account that limits
    each route in its own window of ``limit`` (``per_route``) or both in one window of
    twice that: each route's (accepted, refused) times."""
    shared = RollingWindow()
    windows = {"submit": RollingWindow(), "status": RollingWindow()} if per_route else {}
    seen: dict[str, tuple[list[float], list[float]]] = {"submit": ([], []), "status": ([], [])}

    def body(route: str, priority: int) -> Callable[[int], Coroutine[Any, Any, None]]:
        async def run(_: int) -> None:
            while True:
                ticket = await bucket.acquire(priority)
                at = clock.monotonic()
                window = windows.get(route, shared)
                wait = window.admit(at, limit if per_route else 2 * limit, window_s)
                await clock.sleep(rtt)
                if wait is None:
                    seen[route][0].append(at)
                    bucket.accepted(at, route, ticket=ticket)
                    continue
                seen[route][1].append(at)
                ra = float(rate_limit_headers(wait, "truthful")["Retry-After"])
                bucket.rate_limited(ra, ticket=ticket, sent_at=at, route=route)
                bucket.unanswered(ticket)

        return run

    async with (
        _workers(workers[0], body("submit", Priority.SUBMIT)),
        _workers(workers[1], body("status", Priority.STATUS)),
    ):
        await clock.advance(seconds)
    return seen


async def test_a_window_per_route_gets_a_gate_per_route() -> None:
    """Submits and polls each limited to 1,350 a minute over 10 s windows, the engine
    told 9,000: a request of the other route sent while the refused route's window is full
    is accepted, so each route is paced by its own gate, and together they reach at least
    0.85 of what the two windows allow, with at most 3 % refused. The rates kept start
    the next run just under each route's."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(9_000, clock, tick=0.1)
    seen = await _against_routes(
        clock, bucket, window_s=10.0, limit=225, per_route=True, seconds=60.0
    )
    accepted = {route: len(ok) for route, (ok, _) in seen.items()}
    refused = sum(len(no) for _, no in seen.values())
    assert set(bucket.routes) == {"submit", "status"}
    for route in ("submit", "status"):
        assert accepted[route] / (22.5 * 60.0) >= 0.85, (route, accepted)
    assert refused / (sum(accepted.values()) + refused) <= 0.03
    bucket.conclude()
    kept = bucket.learned_routes
    each = pytest.approx(1_350, rel=0.15)
    assert kept == {"submit": each, "status": each}
    assert bucket.statistics().learned_rpm == pytest.approx(2_700, rel=0.15)
    assert "status polls on their own: 225 per 10 s" in (bucket.learned_limit or "")
    following = RequestBucket(9_000, clock)
    following.start_under(bucket.learned_rpm)
    following.start_routes(kept)
    assert sum(g.control.rate * 60 for g in following.routes.values()) == pytest.approx(
        2_700, rel=0.15
    )


async def test_a_shared_window_refuses_the_other_routes_test_and_gets_no_gate() -> None:
    """One window of 450 per 10 s for both routes: the other route's test request meets it
    full and is refused, so no route gets a gate of its own, and the targets hold as for
    a single route."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(9_000, clock, tick=0.1)
    seen = await _against_routes(
        clock, bucket, window_s=10.0, limit=225, per_route=False, seconds=60.0
    )
    accepted = sum(len(ok) for ok, _ in seen.values())
    refused = sum(len(no) for _, no in seen.values())
    assert bucket.routes == {}
    assert accepted / (45.0 * 60.0) >= 0.85
    assert refused / (accepted + refused) <= 0.03
    bucket.conclude()
    assert bucket.learned_rpm == pytest.approx(2_700, rel=0.15)
    assert bucket.learned_routes == {}


def test_a_routes_answers_split_off_and_joined_back() -> None:
    """A route's own window: its answers leave the shared log (they say nothing of the
    others' window) and make one of their own, which fits that route's window alone;
    joined back, the log is whole again, in the order the requests left."""
    account = AccountLimiter()
    for i in range(225):  # submits: 150 a second, then refused
        account.answered(START + i / 150.0, True, "submit")
    account.answered(START + 1.5, False, "submit")
    for i in range(50):  # polls, accepted all along
        account.answered(START + 1.6 + i / 50.0, True, "status")
    own = account.split("submit")
    fit = own.refit(START + 2.7, retry_after=9.0, refused_at=START + 1.5)
    assert fit is not None and (fit.window_s, fit.limit) == (10.0, 225)
    assert account.refit(START + 2.7) is None  # nothing refused is left in the shared log
    account.join(own)
    again = account.refit(START + 2.7, retry_after=9.0, refused_at=START + 1.5)
    assert again is not None and again.limit == 225


async def test_a_pause_float_rounding_leaves_is_over() -> None:
    """A pause that ends 1e-13 s from now (float rounding of a window's room) is over: a
    virtual clock cannot sleep through it, and waiting for it spun the loop."""
    clock = FakeClock(start=START)
    bucket = RequestBucket(600, clock)
    bucket.rate_limited(1.0, ticket=None, sent_at=START, route="submit")
    await clock.advance(1.0)
    bucket._paused_until = clock.monotonic() + 2.3e-13  # the rounding's leftover
    granted = asyncio.ensure_future(bucket.acquire())
    await clock.advance(5.0)
    assert granted.done()
