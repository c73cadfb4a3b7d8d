"""FakeClock runs on the loop's virtual time; SystemClock is the real thing."""

from __future__ import annotations

import asyncio
import time

import pytest

from apixo_batch.clock import Clock, FakeClock, SystemClock, human_duration

pytestmark = pytest.mark.looptime


def test_fake_clock_starts_where_told() -> None:
    """monotonic and wall start at the given values and stay put without advance."""
    clock = FakeClock(start=50.0, wall_start=1_767_965_610.0)
    assert clock.monotonic() == 50.0
    assert clock.wall() == 1_767_965_610.0
    assert clock.sleepers == 0
    assert clock.next_deadline() is None


def test_fake_and_system_clocks_satisfy_the_protocol() -> None:
    """Both clocks can be passed wherever a Clock is expected."""
    clocks: list[Clock] = [FakeClock(), SystemClock()]
    assert all(callable(c.sleep) for c in clocks)


async def test_advance_moves_both_times() -> None:
    """advance(dt) moves monotonic and wall time by dt."""
    clock = FakeClock(start=0.0, wall_start=100.0)
    await clock.advance(2.5)
    assert (clock.monotonic(), clock.wall()) == (2.5, 102.5)


async def test_sleep_parks_until_advanced_past_deadline() -> None:
    """A sleeper stays parked until the clock reaches its deadline."""
    clock = FakeClock(start=0.0)
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    await clock.advance(9.9)
    assert not task.done()
    await clock.advance(0.1)
    assert task.done()
    await task
    assert clock.sleepers == 0


async def test_advance_wakes_sleepers_in_deadline_order() -> None:
    """Sleepers started in any order wake in deadline order, each seeing its own deadline."""
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [
        asyncio.create_task(sleeper("c", 3)),
        asyncio.create_task(sleeper("a", 1)),
        asyncio.create_task(sleeper("b", 2)),
    ]
    await asyncio.sleep(0)
    await clock.advance(5)
    await asyncio.gather(*tasks)
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert clock.monotonic() == 5.0


async def test_equal_deadlines_wake_in_arrival_order() -> None:
    """Ties are broken by who went to sleep first."""
    clock = FakeClock(start=0.0)
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep(1)
        woke.append(n)

    tasks = [asyncio.create_task(sleeper(n)) for n in range(5)]
    await asyncio.sleep(0)
    await clock.advance(1)
    await asyncio.gather(*tasks)
    assert woke == [0, 1, 2, 3, 4]


async def test_sleep_zero_or_negative_returns_without_advance() -> None:
    """A non-positive sleep only yields to the loop; it registers no sleeper."""
    clock = FakeClock(start=0.0)
    await clock.sleep(0)
    await clock.sleep(-5)
    assert clock.monotonic() == 0.0
    assert clock.sleepers == 0


async def test_cancelled_sleeper_is_forgotten() -> None:
    """A cancelled sleep no longer counts and no longer sets the next deadline."""
    clock = FakeClock(start=0.0)
    early = asyncio.create_task(clock.sleep(1))
    late = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    assert clock.next_deadline() == 1.0
    early.cancel()
    await asyncio.gather(early, return_exceptions=True)
    assert clock.sleepers == 1
    assert clock.next_deadline() == 5.0
    await clock.advance(5)
    await late


async def test_run_until_idle_drives_a_polling_loop_to_completion() -> None:
    """run_until_idle jumps from deadline to deadline until nobody sleeps."""
    clock = FakeClock(start=0.0)
    ticks: list[float] = []

    async def poller() -> None:
        await clock.sleep(60)  # first poll
        for _ in range(4):
            ticks.append(clock.monotonic())
            await clock.sleep(15)

    task = asyncio.create_task(poller())
    await clock.run_until_idle()
    assert task.done()
    await task
    assert ticks == [60.0, 75.0, 90.0, 105.0]
    assert clock.monotonic() == 120.0


async def test_run_until_idle_follows_chains_of_tasks() -> None:
    """A task woken by the clock may start another sleeper; that one is followed too."""
    clock = FakeClock(start=0.0)
    done: list[str] = []

    async def second() -> None:
        await clock.sleep(30)
        done.append("second")

    async def first() -> None:
        await clock.sleep(10)
        done.append("first")
        await asyncio.create_task(second())

    task = asyncio.create_task(first())
    await clock.run_until_idle()
    await task
    assert done == ["first", "second"]
    assert clock.monotonic() == 40.0


async def test_run_until_idle_stops_at_limit() -> None:
    """A sleeper beyond the limit stays asleep; time does not run past its deadline."""
    clock = FakeClock(start=0.0)
    near = asyncio.create_task(clock.sleep(10))
    far = asyncio.create_task(clock.sleep(1_000))
    await clock.run_until_idle(limit=100)
    assert near.done()
    assert not far.done()
    assert clock.monotonic() == 10.0
    far.cancel()
    await asyncio.gather(near, far, return_exceptions=True)


async def test_run_until_idle_with_nobody_asleep_returns_at_once() -> None:
    """With no sleepers there is nothing to jump to."""
    clock = FakeClock(start=7.0)
    await clock.run_until_idle()
    assert clock.monotonic() == 7.0


async def test_run_until_idle_follows_a_task_however_many_turns_it_takes() -> None:
    """Idle means no task can run, not some count of loop turns: a task that hops through
    many turns before it sleeps is still followed to its end."""
    clock = FakeClock(start=0.0)

    async def hops_then_sleeps() -> float:
        for _ in range(100):
            await asyncio.sleep(0)
        await clock.sleep(10)
        return clock.monotonic()

    task = asyncio.create_task(hops_then_sleeps())
    await clock.run_until_idle()
    assert task.done()
    assert await task == 10.0


async def test_advance_returns_once_everyone_woken_has_run() -> None:
    """A sleeper woken by advance runs up to its next wait, however many turns that takes,
    before advance returns."""
    clock = FakeClock(start=0.0)
    steps: list[int] = []

    async def wakes_then_hops() -> None:
        await clock.sleep(5)
        for n in range(100):
            steps.append(n)
            await asyncio.sleep(0)

    task = asyncio.create_task(wakes_then_hops())
    await clock.advance(5)
    assert task.done()
    assert len(steps) == 100


async def test_settle_lets_everyone_run_and_time_stand_still() -> None:
    """settle returns once every task waits; it never moves time."""
    clock = FakeClock(start=0.0)
    hops = 0

    async def hopper() -> None:
        nonlocal hops
        for _ in range(100):
            hops += 1
            await asyncio.sleep(0)
        await clock.sleep(60)

    task = asyncio.create_task(hopper())
    await clock.settle()
    assert (hops, clock.sleepers, clock.monotonic()) == (100, 1, 0.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_clock_and_the_loop_share_one_time() -> None:
    """The loop's own timeouts run on the same virtual time: a 30 s timeout around a 60 s
    sleep on the clock fires when the clock reads 30 s later."""
    clock = FakeClock(start=100.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await clock.sleep(60)
    assert clock.monotonic() == 130.0
    assert clock.sleepers == 0


async def test_time_moves_by_itself_while_everyone_sleeps() -> None:
    """Awaiting a sleeper is enough: the loop jumps to the deadline once all wait."""
    clock = FakeClock(start=0.0, wall_start=50.0)
    await asyncio.gather(clock.sleep(90), clock.sleep(30))
    assert (clock.monotonic(), clock.wall()) == (90.0, 140.0)


@pytest.mark.looptime(False)
async def test_fake_clock_never_sleeps_for_real() -> None:
    """On a loop whose time is real, a FakeClock refuses to sleep and its time stands still."""
    clock = FakeClock(start=5.0)
    with pytest.raises(RuntimeError, match="looptime"):
        await clock.sleep(1)
    assert clock.monotonic() == 5.0


def test_system_clock_reads_real_time() -> None:
    """SystemClock's wall time is the epoch time; its monotonic time never goes back."""
    clock = SystemClock()
    before = time.time()
    wall = clock.wall()
    after = time.time()
    assert before <= wall <= after
    first = clock.monotonic()
    assert clock.monotonic() >= first


async def test_system_clock_non_positive_sleep_returns() -> None:
    """A zero or negative sleep returns (clamped to zero, never an error)."""
    clock = SystemClock()
    await clock.sleep(0)
    await clock.sleep(-1)
    assert clock.monotonic() > 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1.25, "1.2 s"),
        (4.0, "4 s"),
        (45.4, "45 s"),
        (59.6, "1 min"),
        (125.0, "2 min 5 s"),
        (2 * 3600.0, "2 h"),
        (3 * 3600 + 12 * 60 + 20.0, "3 h 12 min"),
        (51 * 3600.0, "2 d 3 h"),
        (48 * 3600.0, "2 d"),
    ],
)
def test_human_duration_says_two_units_at_most(seconds: float, text: str) -> None:
    """Tenths under ten seconds, whole units above, two at most, a zero second one dropped."""
    assert human_duration(seconds) == text


def test_human_duration_in_hours_for_expiries() -> None:
    """Expiries count in hours, one decimal."""
    assert human_duration(5_400.0, unit="h") == "1.5 h"
