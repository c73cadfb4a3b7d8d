"""The byte budget of transfers to object storage: whole grants, first come first served,
nothing lost to a cancel."""

from __future__ import annotations

import asyncio

import pytest

from apixo_batch.outputs.budget import ByteBudget


async def test_requests_are_granted_whole_and_in_order() -> None:
    budget = ByteBudget(10)
    assert await budget.take(6) == 6
    big = asyncio.ensure_future(budget.take(8))
    small = asyncio.ensure_future(budget.take(1))
    await asyncio.sleep(0)
    # 4 bytes are free, enough for the small one, but the big one came first.
    assert not big.done() and not small.done()
    budget.give(6)
    await asyncio.sleep(0)
    assert big.done() and small.done() and budget.free == 1
    assert await big == 8 and await small == 1


async def test_a_request_above_the_budget_takes_all_of_it() -> None:
    budget = ByteBudget(10)
    assert await budget.take(50) == 10
    assert budget.free == 0
    budget.give(10)
    assert budget.free == 10


async def test_a_cancelled_wait_lets_the_next_one_through() -> None:
    budget = ByteBudget(10)
    await budget.take(5)
    blocked = asyncio.ensure_future(budget.take(8))
    behind = asyncio.ensure_future(budget.take(4))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await behind == 4 and budget.free == 1


async def test_a_grant_that_meets_a_cancel_is_given_back() -> None:
    budget = ByteBudget(10)
    await budget.take(10)
    waiting = asyncio.ensure_future(budget.take(10))
    await asyncio.sleep(0)
    budget.give(10)  # granted: the future is resolved, the task not resumed yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.free == 10
