"""The account's limits shared in the database (journal/pg/shared_limits.py) against a
real PostgreSQL (tests/pg.py): slots never over-granted under contention, the GCRA row's
grants within its bound, a 429 seen by one runner pausing and slowing all. Time of the
bucket is injected (``now``), never slept."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from apixo_batch.journal.pg.schema import migrate
from apixo_batch.journal.pg.shared_limits import (
    DECREASE,
    PROBE_S,
    RateRow,
    declare_accounts,
    ensure_account,
    fair_share,
    give_slots,
    live_runners,
    on_rate_limited,
    open_session,
    pool_state,
    probe_up,
    reclaim_expired,
    slots_refused,
    take_slots,
    take_tokens,
)

T0 = 1_767_965_610.0
RPM, BURST = 3_000.0, 25


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[list[psycopg.AsyncConnection[Any]]]:
    """Eight sessions (one per runner) on a migrated database with two runners' rows."""
    conns = [await psycopg.AsyncConnection.connect(pg_url, autocommit=True) for _ in range(8)]
    await migrate(conns[0], "test")
    await conns[0].execute("INSERT INTO campaigns (id) VALUES ('camp')")
    for i in range(8):
        await conns[0].execute(
            "INSERT INTO runners (campaign, host, pid, version, lease_until) "
            "VALUES ('camp', 'h', %s, 't', now() + interval '1 hour')",
            (i,),
        )
    await ensure_account(conns[0], "acct", slots=200, rpm=RPM, burst=BURST, now=T0)
    yield conns
    for conn in conns:
        await conn.close()


async def test_slots_are_never_over_granted_under_contention(db: Any) -> None:
    """Eight runners taking blocks of 10 at once, and giving some back, from a 200-slot
    pool: the pool never grants past its limit (the CHECK never fires), what it granted
    is what the runners hold, and everything given back returns it to 0."""
    conns = db

    async def runner(i: int) -> int:
        held = 0
        for round_ in range(30):
            held += await take_slots(conns[i], i + 1, "acct", 10)
            if round_ % 3 == 2:
                held -= await give_slots(conns[i], i + 1, "acct", 5)
        return held

    held = list(await asyncio.gather(*(runner(i) for i in range(8))))
    for i in range(8):  # whatever the last give-backs freed is taken again
        held[i] += await take_slots(conns[i], i + 1, "acct", 10)
    row = await (
        await conns[0].execute(
            "SELECT a.granted, a.slots_limit, (SELECT sum(held) FROM slot_grants) FROM accounts a"
        )
    ).fetchone()
    assert row is not None
    granted, limit, total = row
    assert granted == total == sum(held) <= limit == 200
    assert granted == 200  # 8 × 30 × 10 asked: the pool ran dry, exactly
    for i, h in enumerate(held):
        assert await give_slots(conns[i], i + 1, "acct", h + 5) == h
    assert await (await conns[0].execute("SELECT granted FROM accounts")).fetchone() == (0,)
    assert fair_share(200, 3) == 67 and fair_share(200, 0) == 200


async def test_tokens_never_pass_the_buckets_bound(db: Any) -> None:
    """Eight runners asking 50 tokens each every 0.1 s (injected time) for 60 s: the
    first grant is the row's burst, then the drip; over any span the grants stay under
    burst + drip × span, and the minute stays under rpm less the margin."""
    conns = db
    rate = RateRow.of(RPM, BURST)
    drip = 1.0 / rate.interval_s
    assert rate.row_burst == math.floor(BURST - drip * 0.15)
    grants: list[tuple[float, int]] = []
    tick = 0.1
    for step in range(600):
        now = T0 + step * tick
        got = await asyncio.gather(*(take_tokens(conns[i], "acct", 50, now=now) for i in range(8)))
        grants.append((now, sum(g.n for g in got)))
        if step == 0:
            assert sum(g.n for g in got) == rate.row_burst
    total = sum(n for _, n in grants)
    assert total <= rate.row_burst + drip * 60 + 1
    assert total <= RPM * (1 - 0.005)
    assert total >= drip * 60 * 0.99  # paced, not starved
    for w in (1.0, 5.0):
        span = int(w / tick)
        worst = max(sum(n for _, n in grants[i : i + span]) for i in range(len(grants) - span))
        assert worst <= rate.row_burst + drip * w + 1
    # Tickets are global: each grant's first ticket follows the last one's.
    first = await take_tokens(conns[0], "acct", 5, now=T0 + 61.0)
    second = await take_tokens(conns[1], "acct", 5, now=T0 + 61.0)
    assert second.first_ticket == first.first_ticket + first.n
    empty = await take_tokens(conns[2], "acct", 1000, now=T0 + 61.0)
    while empty.n:
        empty = await take_tokens(conns[2], "acct", 1000, now=T0 + 61.0)
    assert 0 < empty.wait_s <= rate.interval_s


async def test_a_429_seen_by_one_runner_pauses_and_slows_all(db: Any) -> None:
    """A 429 seen by runner A: runner B gets no token until the pause is over, the
    shared rate is decreased once for the episode (a second 429 on an older ticket does
    not decrease it again), and it probes back up at most once per PROBE_S."""
    conns = db
    a, b = conns[0], conns[1]
    grant = await take_tokens(a, "acct", 10, now=T0)
    assert grant.n == 10
    assert await on_rate_limited(a, "acct", grant.first_ticket + 3, 2.0, now=T0 + 0.1)
    assert (await take_tokens(b, "acct", 10, now=T0 + 1.9)).n == 0
    assert not await on_rate_limited(b, "acct", grant.first_ticket + 5, 2.0, now=T0 + 0.2)
    row = await (
        await a.execute("SELECT interval_s, top_interval_s, ceiling_interval_s FROM account_rate")
    ).fetchone()
    assert row is not None
    interval, top, ceiling = row
    assert interval == pytest.approx(top / DECREASE) and ceiling == pytest.approx(top)
    later = T0 + 2.3 + RateRow.of(RPM, BURST).tau_s
    assert (await take_tokens(b, "acct", 1, now=later)).n == 1
    # A 429 on a ticket granted after the episode's end opens the next one.
    fresh = await take_tokens(b, "acct", 1, now=later + 1.0)
    assert fresh.n == 1
    assert await on_rate_limited(b, "acct", fresh.first_ticket, 1.0, now=later + 1.1)
    assert not await probe_up(a, "acct", now=later + 1.2)  # not before PROBE_S
    assert await probe_up(a, "acct", now=later + 1.2 + PROBE_S)
    assert not await probe_up(b, "acct", now=later + 1.3 + PROBE_S)  # once for all


def test_the_rows_burst_pays_for_late_tokens_but_holds_one_asks_drip() -> None:
    """Design rule 1 (the burst less 0.15 s of drip) where the local burst allows it;
    never under what drips while a runner waits its 0.1 s between asks (the engine's
    local burst, 0.1 s of drip, would otherwise leave a row of one token)."""
    assert RateRow.of(3_000.0, 25).row_burst == 17  # 25 - 49.25 x 0.15
    drip = (9_000.0 - 15 - 45) / 60.0
    assert RateRow.of(9_000.0, 15).row_burst == math.ceil(drip * 0.1)


async def test_pool_state_and_a_refusal_shared(db: Any) -> None:
    """A runner refused for slots while 4 of its 10 are in use keeps 4; the account's
    limit comes down to what is granted (its 4 and another runner's 10): every fair
    share shrinks with it."""
    conns = db
    assert await take_slots(conns[0], 1, "acct", 10) == 10
    assert await take_slots(conns[1], 2, "acct", 10) == 10
    assert await pool_state(conns[0], 1, "acct") == (200, 10)
    assert await slots_refused(conns[0], 1, "acct", 4) == 14
    assert await pool_state(conns[0], 1, "acct") == (14, 4)
    assert await pool_state(conns[1], 2, "acct") == (14, 10)
    assert await pool_state(conns[1], 9, "acct") == (14, 0)  # holds nothing yet
    # The next runner's figures bring the limit back (a new run relearns its window).
    await ensure_account(conns[2], "acct", slots=200, rpm=RPM, burst=BURST, now=T0)
    assert (await pool_state(conns[2], 1, "acct"))[0] == 200


async def test_live_runners_count_by_account_and_by_campaign(db: Any) -> None:
    """Runners that declared the account count, and so do runners of the campaign that
    declared none; stopped ones and those whose lease ran out do not."""
    conns = db
    assert await live_runners(conns[0], 1, ["acct"]) == 8  # none declared: the campaign's
    await declare_accounts(conns[0], 1, ["acct"])
    await declare_accounts(conns[0], 2, ["other"])
    await conns[0].execute("UPDATE runners SET stopped = true WHERE id = 3")
    await conns[0].execute("UPDATE runners SET lease_until = now() - interval '1 s' WHERE id = 4")
    assert await live_runners(conns[0], 1, ["acct"]) == 5  # 1, 5, 6, 7, 8
    assert await live_runners(conns[0], 2, ["other"]) == 5  # 2, 5, 6, 7, 8


async def test_expired_runners_slots_are_reclaimed_live_ones_kept(db: Any) -> None:
    """A runner alone on its journal takes back what runners whose lease ran out (or
    that stopped) hold; a live runner's slots stay its own."""
    conns = db
    for runner in (2, 3, 4):
        assert await take_slots(conns[0], runner, "acct", 10) == 10
    await conns[0].execute("UPDATE runners SET lease_until = now() - interval '1 s' WHERE id = 2")
    await conns[0].execute("UPDATE runners SET stopped = true WHERE id = 3")
    assert await reclaim_expired(conns[0], 1, ["acct"]) == 20
    assert await pool_state(conns[0], 4, "acct") == (200, 10)
    row = await (await conns[0].execute("SELECT granted FROM accounts")).fetchone()
    assert row == (10,)


async def test_the_limits_session_commits_lazily_but_keeps_the_accounts_rows(
    db: Any, pg_url: str
) -> None:
    """Slot grants commit without waiting for the WAL's flush (design 3.3: lazy); the
    account's rows and a runner's accounts are written durably on that same session,
    and the session stays lazy after them."""
    conn = await open_session(pg_url, lazy=True)
    try:

        async def setting() -> str:
            row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
            assert row is not None
            return str(row[0])

        assert await setting() == "off"
        await ensure_account(conn, "other", slots=5, rpm=RPM, burst=BURST, now=T0)
        me = (await (await conn.execute("SELECT min(id) FROM runners")).fetchone() or [0])[0]
        await declare_accounts(conn, me, ["other"])
        assert await setting() == "off"
        assert await take_slots(conn, me, "other", 3) == 3
        row = await (
            await conn.execute("SELECT slots_limit, granted FROM accounts WHERE id='other'")
        ).fetchone()
        assert row == (5, 3)
    finally:
        await conn.close()
