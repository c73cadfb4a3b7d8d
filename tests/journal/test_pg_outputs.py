"""Outputs shared by several runners (journal/pg/outputs.py) against a real PostgreSQL
(tests/pg.py): file names reserved first come first served, stale reservations taken
over, a name a new job holds seen before landing; uploads swept only when their runner
is gone; the hosts of live runners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from pg import NOW, StillClock, pg_job

from apixo_batch.journal import open_ledger
from apixo_batch.journal.pg.lease import RunnerLease
from apixo_batch.journal.pg.outputs import (
    PgUploads,
    SharedNames,
    local_out_refused,
    other_host,
    reserved_rows,
)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]


class _Direct:
    """A runner's operations straight on its own connection (a run uses its executor)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def read(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        return await op(self.conn)

    async def write(
        self, op: Callable[[Conn], Awaitable[T]], *, durable: bool = True, alone: bool = False
    ) -> T:
        async with self.conn.transaction():
            return await op(self.conn)


Connect = Callable[[], Awaitable[Conn]]


@pytest.fixture
async def db(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Connect, Conn]]:
    """A campaign 'camp' of 10 queued jobs; a maker of runner connections, and a probe."""
    ledger = await open_ledger(pg_url, "camp", StillClock(), anchor=tmp_path / "j.pg")
    await ledger.reconcile([pg_job(n, "a fox") for n in range(10)], retry_failed=False)
    await ledger.close()
    conns: list[Conn] = []

    async def connect() -> Conn:
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        conns.append(conn)
        return conn

    probe = await connect()
    yield connect, probe
    for conn in conns:
        await conn.close()


async def _state(conn: Conn, job_id: str, state: str, in_file: bool = True) -> None:
    await conn.execute(
        "UPDATE jobs SET state = %s, in_file = %s WHERE campaign = 'camp' AND id = %s",
        (state, in_file, job_id),
    )


async def _reserved(conn: Conn) -> dict[str, str]:
    cur = await conn.execute("SELECT name_cf, job_id FROM file_names WHERE campaign = 'camp'")
    return {str(n): str(j) for n, j in await cur.fetchall()}


async def test_the_first_runner_to_reserve_a_name_keeps_it(db: Any) -> None:
    """Two runners' jobs want one name (case apart): the first keeps it; the second is
    told the holder and keeps none of its names, so nothing lands."""
    connect, probe = db
    one, two = (
        SharedNames(_Direct(await connect()), "camp"),
        SharedNames(_Direct(await connect()), "camp"),
    )
    for job in ("job-01", "job-02"):
        await _state(probe, job, "succeeded")
    assert await one.reserve("job-01", ["job-01.mp4", "Shared.mp4"]) == []
    assert await two.reserve("job-02", ["job-02.mp4", "SHARED.mp4"]) == [("SHARED.mp4", "job-01")]
    assert await _reserved(probe) == {"job-01.mp4": "job-01", "shared.mp4": "job-01"}
    # Its own names again: still its own.
    assert await one.reserve("job-01", ["job-01.mp4"]) == []


async def test_racing_runners_reserve_a_name_once(db: Any) -> None:
    """Eight runners reserving one name for eight jobs at once: exactly one gets it,
    and every other is told that one."""
    connect, probe = db
    books = [SharedNames(_Direct(await connect()), "camp") for _ in range(8)]
    for n in range(8):
        await _state(probe, f"job-{n:02d}", "succeeded")
    got = await asyncio.gather(
        *(b.reserve(f"job-{n:02d}", ["race.mp4"]) for n, b in enumerate(books))
    )
    winners = [n for n, clashes in enumerate(got) if not clashes]
    assert len(winners) == 1
    holder = f"job-{winners[0]:02d}"
    assert all(c == [("race.mp4", holder)] for c in got if c)
    assert await _reserved(probe) == {"race.mp4": holder}


async def test_a_stale_reservation_is_taken_over(db: Any) -> None:
    """A reservation whose job no longer holds the name (gone from the file, nothing
    landed there) is taken over; one whose job landed the name is not."""
    connect, probe = db
    names = SharedNames(_Direct(await connect()), "camp")
    for job in ("job-03", "job-05"):
        await _state(probe, job, "succeeded")
    assert await names.reserve("job-03", ["x.mp4"]) == []
    await probe.execute(
        "UPDATE jobs SET state = 'done', files = '[\"job-05.mp4\", \"y.mp4\"]' "
        "WHERE campaign = 'camp' AND id = 'job-05'"
    )
    assert await names.reserve("job-05", ["job-05.mp4", "y.mp4"]) == []
    await _state(probe, "job-03", "queued", in_file=False)
    await _state(probe, "job-04", "succeeded")
    assert await names.reserve("job-04", ["x.mp4", "y.mp4"]) == [("y.mp4", "job-05")]
    assert "x.mp4" not in await _reserved(probe)  # taken, then let go: y.mp4 was refused
    assert await names.reserve("job-04", ["x.mp4"]) == []
    assert (await _reserved(probe))["x.mp4"] == "job-04"
    rows = {r[1]: r[0] for r in await reserved_rows(probe, "camp")}
    assert rows == {"x.mp4": "job-04", "job-05.mp4": "job-05", "y.mp4": "job-05"}


async def test_a_new_jobs_name_is_seen_before_landing(db: Any) -> None:
    """A job in the file (a runner may have synced it a moment ago) holds its own name:
    another job's extra result is not landed on it, and reserves nothing."""
    connect, probe = db
    names = SharedNames(_Direct(await connect()), "camp")
    await _state(probe, "job-05", "succeeded")
    assert await names.reserve("job-05", ["job-05.mp4", "JOB-06.mp4"]) == [("JOB-06.mp4", "job-06")]
    assert await _reserved(probe) == {}


async def test_uploads_of_a_run_alone_are_all_swept(db: Any) -> None:
    """A run that holds the campaign alone (no runner) sweeps every upload of ours, as
    with a journal file."""
    connect, _ = db
    book = PgUploads(_Direct(await connect()), "camp")
    await book.opened("u-1", "p/job-01.mp4")
    found = [("u-1", "p/job-01.mp4", None), ("u-2", "p/job-02.mp4", None)]
    assert await book.sweepable(found) == {"u-1", "u-2"}


async def test_only_a_dead_runners_uploads_are_swept(db: Any) -> None:
    """Uploads recorded by a live runner are left alone; a dead runner's (lease out past
    the grace) are swept, and so are unrecorded ones begun before every live runner
    started; a completed upload is forgotten."""
    connect, probe = db
    clock = StillClock()
    leases = []
    for host in ("alpha", "beta", "gamma"):
        lease = RunnerLease(
            await connect(), "camp", clock, lease_s=3.0, grace_s=2.5, db_now=clock.wall
        )
        await lease.register(host, 1, "t")
        leases.append(lease)
        clock.now += 1.0
    a, _b, c = leases
    books = [
        PgUploads(_Direct(await connect()), "camp", lambda r=r: r.me, db_now=clock.wall)
        for r in leases
    ]
    await books[0].opened("live-a", "p/1.mp4")
    await books[1].opened("dead-b", "p/2.mp4")
    await books[2].opened("done-c", "p/3.mp4")
    await books[2].closed("done-c")
    clock.now += 4.0
    for r in (a, c):
        assert await r.renew()
    started_b = datetime.fromtimestamp(NOW + 1.0, UTC)
    found = [
        ("live-a", "p/1.mp4", None),
        ("dead-b", "p/2.mp4", None),
        ("lost-old", "p/4.mp4", started_b - timedelta(seconds=5)),
        ("lost-new", "p/5.mp4", started_b + timedelta(seconds=30)),
    ]
    clock.now += 2.0  # b's lease ran out 3 s ago: past the grace
    for r in (a, c):
        assert await r.renew()
    assert await books[0].sweepable(found) == {"dead-b", "lost-old"}
    cur = await probe.execute("SELECT upload_id FROM uploads ORDER BY upload_id")
    assert [r[0] for r in await cur.fetchall()] == ["live-a"]


async def test_other_host_names_a_live_runner_elsewhere(db: Any) -> None:
    """Runners on this host are no other host; a live one elsewhere is, until it leaves;
    the refusal names both hosts and the way out."""
    connect, _ = db
    clock = StillClock()
    runners = []
    for host in ("alpha", "alpha", "beta"):
        lease = RunnerLease(await connect(), "camp", clock, db_now=clock.wall)
        await lease.register(host, 1, "t")
        runners.append(lease)
    probe = await connect()
    assert await other_host(probe, "camp", "beta", now=clock.now) == "alpha"
    assert await other_host(probe, "camp", "alpha", now=clock.now) == "beta"
    await runners[2].leave()
    assert await other_host(probe, "camp", "alpha", now=clock.now) is None
    line = local_out_refused("/data/out", "alpha", "beta")
    assert "\n" not in line and "beta" in line and "s3://" in line and "--shared-out" in line
