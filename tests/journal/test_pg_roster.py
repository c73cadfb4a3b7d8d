"""The runners of a campaign as ``status`` tells them (journal/pg/roster.py), against a
real PostgreSQL (tests/pg.py): leases on one injected clock, rows owned by state, who
adopted whom, the live hosts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import StillClock, pg_job

from apixo_batch.journal import open_ledger
from apixo_batch.journal.pg.lease import RunnerLease
from apixo_batch.journal.pg.roster import first_campaign, hosts_of, roster


@pytest.fixture
async def fleet(
    tmp_path: Path, pg_url: str
) -> AsyncIterator[tuple[StillClock, list[RunnerLease], psycopg.AsyncConnection[Any]]]:
    """A campaign of 10 queued jobs and three registered runners on two hosts."""
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "j.pg")
    await ledger.reconcile([pg_job(n, "a dog") for n in range(10)], retry_failed=False)
    await ledger.close()
    conns = []
    runners = []
    for i, host in enumerate(("alpha", "alpha", "beta")):
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        conns.append(conn)
        lease = RunnerLease(conn, "camp", clock, lease_s=3.0, grace_s=2.5, db_now=clock.wall)
        await lease.register(host, 100 + i, "9.9")
        runners.append(lease)
    probe = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    yield clock, runners, probe
    await probe.close()
    for conn in conns:
        await conn.close()


async def test_roster_tells_leases_and_rows_owned_by_state(fleet: Any) -> None:
    """Each runner with its host, pid, lease left and the rows it owns by state; the
    database's campaign is found without naming it."""
    clock, (a, b, c), probe = fleet
    for lease, n in ((a, 3), (b, 2)):
        await lease.claim(n)
    rows = await probe.execute("SELECT id FROM jobs WHERE owner = %s ORDER BY id", (a.id,))
    job = (await rows.fetchone() or ("",))[0]
    await a.mark_submitting(job, 1, None)
    await a.record_task_id(job, "task-1", "veo", 1)
    clock.now += 1.0
    assert await first_campaign(probe) == "camp"
    got = await roster(probe, "camp", now=clock.now)
    assert [(r.id, r.host, r.pid, r.version) for r in got] == [
        (a.id, "alpha", 100, "9.9"),
        (b.id, "alpha", 101, "9.9"),
        (c.id, "beta", 102, "9.9"),
    ]
    assert [r.owned for r in got] == [{"queued": 2, "submitted": 1}, {"queued": 2}, {}]
    assert all(r.live and not r.stopped and r.adopted_by is None for r in got)
    assert [r.lease_left_s for r in got] == [pytest.approx(2.0)] * 3
    assert got[0].lease() == "2.0 s left"
    assert got[0].as_json()["jobs"] == {"queued": 2, "submitted": 1}


async def test_a_dead_runner_shows_its_lost_lease_and_its_adopter(fleet: Any) -> None:
    """A runner that stopped renewing is told 'lost N s ago', then adopted by whom; its
    paid rows are then the adopter's; one that left is stopped, not live."""
    clock, (a, b, c), probe = fleet
    rows = await a.claim(1)
    await a.mark_submitting(rows[0].id, 1, None)
    await a.record_task_id(rows[0].id, "task-a", "veo", 1)
    await c.leave()
    clock.now += 4.0
    assert await b.renew()
    got = {r.id: r for r in await roster(probe, "camp", now=clock.now)}
    assert not got[a.me].live and got[a.me].lease() == "lost 1.0 s ago"
    assert got[a.me].owned == {"submitted": 1}
    assert got[c.me].stopped and not got[c.me].live
    clock.now += 2.0
    assert await b.renew()
    adopted = await b.adopt()
    assert adopted is not None and adopted.dead == a.me
    got = {r.id: r for r in await roster(probe, "camp", now=clock.now)}
    assert got[a.me].adopted_by == b.me and got[a.me].owned == {}
    assert got[b.me].owned == {"submitted": 1}
    assert got[a.me].lease() == "lost 3.0 s ago"


async def test_hosts_of_lists_only_live_runners(fleet: Any) -> None:
    """The hosts of the live runners, oldest first: a runner that left, or whose lease ran
    out, runs nowhere."""
    clock, (a, b, c), probe = fleet
    assert await hosts_of(probe, "camp", now=clock.now) == [
        (a.me, "alpha"),
        (b.me, "alpha"),
        (c.me, "beta"),
    ]
    await c.leave()
    clock.now += 4.0
    assert await a.renew()
    assert await hosts_of(probe, "camp", now=clock.now) == [(a.me, "alpha")]
