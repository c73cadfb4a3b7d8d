"""The key pool: a job goes to the key with free slots, balanced; a retired key takes no
more; a wait for a slot is served by whichever key frees one first."""

from __future__ import annotations

import asyncio

import pytest

from apixo_batch.apixo.limits import ConcurrencyLimit, RequestBucket, SlotsClosed, SlotsStranded
from apixo_batch.apixo.secret import ApiKey, KeySpec
from apixo_batch.clock import FakeClock
from apixo_batch.pipeline.keypool import KeyAccount, KeyPool, NoKeyLeft

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime


def account(name: str, slots: int, clock: FakeClock) -> KeyAccount:
    return KeyAccount(
        KeySpec(ApiKey(name), max_concurrent=slots),
        bucket=RequestBucket(600, clock),
        slots=ConcurrencyLimit(slots),
        account=name,
    )


def pool_of(*slots: int) -> KeyPool:
    clock = FakeClock()
    return KeyPool([account(f"key-{i}", n, clock) for i, n in enumerate(slots)])


async def test_jobs_are_spread_so_every_key_fills_at_the_same_pace() -> None:
    """Two keys of 4 slots each: eight takes give four to each, alternating by free share."""
    pool = pool_of(4, 4)
    taken = [await pool.take() for _ in range(8)]
    assert [taken.count(a) for a in pool.accounts] == [4, 4]
    assert taken[:2] == pool.accounts  # the emptier key first, every time


async def test_keys_of_different_limits_fill_in_proportion() -> None:
    pool = pool_of(2, 6)
    taken = [await pool.take() for _ in range(8)]
    assert [taken.count(a) for a in pool.accounts] == [2, 6]


async def test_a_full_pool_waits_for_the_first_key_that_frees_a_slot() -> None:
    pool = pool_of(1, 1)
    a, b = await pool.take(), await pool.take()
    waiting = asyncio.ensure_future(pool.take())
    await asyncio.sleep(1)
    assert not waiting.done()
    b.slots.release()
    assert await asyncio.wait_for(waiting, 1) is b
    # The other key's wait was given back: its slot is still the one job's.
    assert (a.slots.in_flight, b.slots.in_flight) == (1, 1)


async def test_a_retired_key_takes_no_more_and_its_waiters_go_elsewhere() -> None:
    pool = pool_of(2, 2)
    first, second = pool.accounts
    assert pool.retire(second, "401: Invalid or missing API Key")
    assert not pool.retire(second, "again")  # told once
    taken = [await pool.take() for _ in range(2)]
    assert taken == [first, first]
    assert second.statistics().state == "retired"
    assert second.statistics().retired == "401: Invalid or missing API Key"
    waiting = asyncio.ensure_future(pool.take())
    await asyncio.sleep(1)
    first.slots.release()
    assert await asyncio.wait_for(waiting, 1) is first


async def test_no_key_left_ends_the_wait() -> None:
    pool = pool_of(1, 1)
    await pool.take()
    await pool.take()
    waiting = asyncio.ensure_future(pool.take())
    await asyncio.sleep(1)
    for a in pool.accounts:
        pool.retire(a, "402: Insufficient balance")
    with pytest.raises(SlotsClosed):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(NoKeyLeft):
        await pool.take()


async def test_every_slot_stranded_on_every_key_is_told() -> None:
    pool = pool_of(1, 1)
    for _ in range(2):
        got = await pool.take()
        got.slots.running()
        got.slots.strand()
    with pytest.raises(SlotsStranded):
        await asyncio.wait_for(pool.take(), 1)


async def test_a_closed_pool_takes_nothing() -> None:
    pool = pool_of(3, 3)
    pool.close()
    with pytest.raises(SlotsClosed):
        await pool.take()


async def test_one_key_is_the_pool_and_is_not_pooled() -> None:
    pool = pool_of(2)
    assert not pool.pooled
    assert pool.get(None) is pool.main
    assert pool.get("00000000") is None


async def test_a_key_whose_slots_are_all_stranded_is_passed_over() -> None:
    """One key's only task left past --max-wait: jobs go to the other key, and a wait
    for a slot is served by it (not spun on the stranded key)."""
    pool = pool_of(1, 1)
    first = await pool.take()
    first.slots.running()
    first.slots.strand()
    other = await asyncio.wait_for(pool.take(), 1)
    assert other is not first
    waiting = asyncio.ensure_future(pool.take())
    await asyncio.sleep(5)
    assert not waiting.done()
    other.slots.release()
    assert await asyncio.wait_for(waiting, 1) is other
