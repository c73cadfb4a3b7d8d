"""One runner's share of its account's limits (pipeline/shared.py) against a real
PostgreSQL (tests/pg.py): fair shares as runners join and leave, a slot refusal
shared, a 429 that pauses every runner, the slots of a dead run taken back. Heartbeats
are driven by the test (``beat``), never waited for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from apixo_batch.apixo.limits import ConcurrencyLimit, Priority, RequestBucket
from apixo_batch.apixo.secret import ApiKey, KeySpec
from apixo_batch.clock import SystemClock
from apixo_batch.journal.pg import shared_limits as sql
from apixo_batch.journal.pg.lease import RunnerLease
from apixo_batch.journal.pg.schema import migrate
from apixo_batch.pipeline.keypool import KeyAccount
from apixo_batch.pipeline.shared import SharedLimits

ACCOUNT = "acct0123456789ab"
#: heartbeats are the test's: the loop never beats on its own
NEVER = 3600.0

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def _key(slots: int = 20, rpm: int = 600) -> KeyAccount:
    clock = SystemClock()
    return KeyAccount(
        KeySpec(ApiKey("sk-test")),
        bucket=RequestBucket(rpm, clock, tick=0.1),
        slots=ConcurrencyLimit(slots),
        account=ACCOUNT,
    )


@pytest.fixture
async def runners(pg_url: str) -> AsyncIterator[Callable[..., Any]]:
    """A factory of runners (own lease, own session) sharing one account on one database."""
    admin: Conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    await migrate(admin, "test")
    await admin.execute("INSERT INTO campaigns (id) VALUES ('camp')")
    made: list[SharedLimits] = []

    async def start(slots: int = 20, rpm: int = 600) -> SharedLimits:
        lease_conn = await sql.open_session(pg_url)
        lease = RunnerLease(lease_conn, "camp", SystemClock(), lease_s=30.0)
        await lease.register("h", len(made), "t", [ACCOUNT])
        conn = await sql.open_session(pg_url)
        limits = SharedLimits(
            pg_url,
            conn,
            lease,
            [(_key(slots, rpm), rpm)],
            SystemClock(),
            lease_conn=lease_conn,
            heartbeat_s=NEVER,
        )
        await limits.start()
        made.append(limits)
        return limits

    start.admin = admin  # type: ignore[attr-defined]
    yield start
    for limits in made:
        await limits.close()
    await admin.close()


async def _run(slots: ConcurrencyLimit, n: int) -> None:
    """``n`` tasks started on ``slots`` (their submits answered)."""
    for _ in range(n):
        await slots.acquire()
        slots.running()


def _wait_for_one(slots: ConcurrencyLimit) -> asyncio.Future[None]:
    """Admission waiting for a permit (the runner is short of slots)."""
    return asyncio.ensure_future(slots.acquire())


async def _served(waiting: asyncio.Future[None]) -> bool:
    """Whether the permit waited for was handed over (its task given its turn)."""
    await asyncio.sleep(0)
    return waiting.done()


async def _granted(admin: Conn) -> tuple[int, int, int]:
    row = await (
        await admin.execute(
            "SELECT slots_limit, granted, (SELECT coalesce(sum(held), 0) FROM slot_grants) "
            "FROM accounts"
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_one_runner_holds_the_whole_account_as_one_run_does(runners: Any) -> None:
    """Alone, a runner holds every slot of the account from its start: its limit is
    --max-concurrent, as without a database; the pool agrees."""
    a = await runners(slots=20)
    slots = a.shares[0].key.slots
    assert slots.limit == 20 and slots.cap == 10  # the slow start window, as ever
    assert await _granted(runners.admin) == (20, 20, 20)


async def test_a_runner_that_joins_gets_its_fair_share_as_the_first_gives_back(
    runners: Any,
) -> None:
    """A second runner finds the pool empty; at the first's next heartbeat it gives back
    what is beyond its fair share (10 of 20), which the second takes when it wants
    them; the pool never grants past the limit; a runner that leaves gives everything
    back, and the other takes it as its admission waits."""
    a = await runners(slots=20)
    b = await runners(slots=20)
    sa, sb = a.shares[0].key.slots, b.shares[0].key.slots
    assert sb.limit == 0
    await _run(sa, 10)  # a uses its first ten: the window grows past them
    await a.beat()
    assert sa.limit == 10
    waiting = _wait_for_one(sb)
    await b.beat()
    assert sb.limit == 10 and await _served(waiting)
    assert await _granted(runners.admin) == (20, 20, 20)
    await b.close()
    assert await _granted(runners.admin) == (20, 10, 10)
    waiting = _wait_for_one(sa)
    await a.beat()  # b's lease is given up: a is alone again
    assert sa.limit == 20 and await _served(waiting)


async def test_slots_in_use_over_a_shrunk_share_are_kept_until_their_tasks_end(
    runners: Any,
) -> None:
    """A runner running 15 tasks when a second joins keeps the 15 slots (its tasks run
    on them), gives back only the 5 it does not use, and the rest as its tasks end."""
    a = await runners(slots=20)
    sa = a.shares[0].key.slots
    await _run(sa, 15)
    b = await runners(slots=20)
    sb = b.shares[0].key.slots
    await a.beat()
    assert a.shares[0].held == 15 and sa.limit == 10
    await _run(sb, 5)
    waiting = _wait_for_one(sb)
    await b.beat()
    assert b.shares[0].held == 5 and not await _served(waiting)
    for _ in range(5):
        sa.release(running=True)
    await a.beat()
    await b.beat()
    assert (a.shares[0].held, b.shares[0].held) == (10, 10) and await _served(waiting)
    assert await _granted(runners.admin) == (20, 20, 20)


async def test_a_slot_refusal_lowers_the_account_for_every_runner(runners: Any) -> None:
    """One runner's submit refused for slots while it runs 4 tasks: it keeps 4, the
    account's limit comes down to what is granted, and the other runner's fair share
    shrinks with it at its next heartbeat."""
    a = await runners(slots=20)
    b = await runners(slots=20)
    await a.beat()
    await b.beat()
    slots = a.shares[0].key.slots
    await _run(slots, 4)
    slots.full()  # the submitter's call on a slot 429
    await a.beat()
    limit, granted, held = await _granted(runners.admin)
    assert a.shares[0].held == 4
    assert limit == granted == held == 14  # a's 4 in use, b's 10 held
    await b.beat()
    assert b.shares[0].key.slots.limit == 7  # ceil(14 / 2)
    assert await _granted(runners.admin) == (14, 11, 11)  # b gave back 3 it did not use


async def test_a_429_seen_by_one_runner_pauses_the_other(runners: Any) -> None:
    """A 429 on one runner's request pushes the shared row past its pause: the other
    runner's next ask for tokens is answered with none and a wait of about the pause;
    the shared rate decreased once (one episode)."""
    a = await runners(rpm=600)
    b = await runners(rpm=600)
    bucket = a.shares[0].key.bucket
    ticket = await bucket.acquire()
    bucket.rate_limited(5.0, ticket=ticket, sent_at=bucket.clock.monotonic())
    await a.beat()
    grant = await b.tokens(b.shares[0], 5)
    assert grant.n == 0 and grant.wait_s >= 4.0
    row = await (
        await runners.admin.execute("SELECT interval_s > top_interval_s FROM account_rate")
    ).fetchone()
    assert row == (True,)


async def test_a_run_alone_takes_back_the_slots_of_a_run_that_died_holding_them(
    pg_url: str, runners: Any
) -> None:
    """A runner whose lease ran out (a run killed with -9) still holds 20 slots; the next
    run, the only live one on its own lease, takes them back and holds the account."""
    dead = await runners(slots=20)
    await runners.admin.execute(
        "UPDATE runners SET lease_until = now() - interval '1 minute' WHERE id = %s",
        (dead.runner.me,),
    )
    # Killed: it never leaves (its session is closed without a word).
    lease_conn, dead._lease_conn = dead._lease_conn, None
    assert lease_conn is not None
    await lease_conn.close()
    a = await runners(slots=20)
    assert a.shares[0].key.slots.limit == 20
    assert await _granted(runners.admin) == (20, 20, 20)


async def test_the_learned_rate_is_the_accounts(pg_url: str, runners: Any) -> None:
    """What one run learned of the account's rate is kept on the account's row, where the
    next run of any campaign reads it."""
    await runners()
    conn = await sql.open_session(pg_url)
    try:
        assert await sql.learned_rpm(conn, ACCOUNT) is None
        await sql.keep_learned_rpm(conn, ACCOUNT, 4321.0)
        assert await sql.learned_rpm(conn, ACCOUNT) == 4321.0
        assert await sql.learned_rpm(conn, "another") is None
    finally:
        await conn.close()


async def test_a_429_on_a_gated_route_pauses_the_other_runner(runners: Any) -> None:
    """Status polls paced by a gate of their own on one runner: a 429 on a poll reaches
    the shared row as any other, so the other runner is paused too."""
    a = await runners(rpm=600)
    b = await runners(rpm=600)
    bucket = a.shares[0].key.bucket
    bucket.start_routes({"status": 300.0})
    ticket = await bucket.acquire(Priority.STATUS)
    bucket.rate_limited(5.0, ticket=ticket, sent_at=bucket.clock.monotonic(), route="status")
    await a.beat()
    grant = await b.tokens(b.shares[0], 5)
    assert grant.n == 0 and grant.wait_s >= 4.0


async def test_an_unreachable_database_grants_the_fair_share_to_pace_by(
    runners: Any, pg_url: str
) -> None:
    """The limits' session gone and the server unreachable: no tokens, but this runner's
    fair share of the row's rate (two live runners: half) to pace by, and a wait of a
    heartbeat; once the server answers again, tokens of the row."""
    a = await runners(rpm=600)
    await runners(rpm=600)
    await a.beat()
    assert a.live == 2
    share = a.shares[0]
    await a._conn.close()
    a._url = "postgresql://apixo@127.0.0.1:1/none?connect_timeout=2"
    away = await a.tokens(share, 5)
    row = sql.RateRow.of(600, share.key.bucket.burst)
    assert away.n == 0 and away.fallback_per_s == pytest.approx(0.5 / row.interval_s)
    assert away.wait_s == a.heartbeat_s
    a._url = pg_url
    back = await a.tokens(share, 1)
    assert back.fallback_per_s is None and back.n == 1


async def test_a_bucket_goes_on_while_the_server_is_down_and_back_to_the_row(
    runners: Any, pg_cluster: Any
) -> None:
    """The server stopped for two seconds under a runner whose bucket is in use: grants
    go on, paced locally (none needs the database), and once the server is back the
    bucket takes the row's tokens again."""
    a = await runners(rpm=600)
    a.heartbeat_s = 0.5  # how soon an unreachable row is asked again
    bucket = a.shares[0].key.bucket
    outage = asyncio.ensure_future(asyncio.to_thread(pg_cluster.restart, "fast", 2.0))
    while not outage.done():
        await bucket.acquire()
        bucket.sent()
    await outage
    assert bucket.statistics().unshared > 0
    taken = a.shares[0].granted
    for _ in range(200):
        await bucket.acquire()
        bucket.sent()
        if a.shares[0].granted > taken:
            break
    assert a.shares[0].granted > taken
