"""Callbacks passed on to the runner that owns their task (journal/pg/relay.py), against
a real PostgreSQL (tests/pg.py): the owner found and notified in one statement, its
listener handed the body; nothing sent for one's own task or a task nobody owns; a
body past NOTIFY's limit goes as the task id alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import StillClock, pg_job

from apixo_batch.clock import SystemClock
from apixo_batch.journal import open_ledger
from apixo_batch.journal.pg.lease import RunnerLease
from apixo_batch.journal.pg.relay import MAX_PAYLOAD, Listener, channel, pass_on, payload

#: a guard against a hang, never a measure: every wait below ends on an event
GUARD_S = 30.0


@pytest.fixture
async def owners(
    tmp_path: Path, pg_url: str
) -> AsyncIterator[tuple[str, RunnerLease, RunnerLease, psycopg.AsyncConnection[Any]]]:
    """Two runners; runner a owns task t-a (job-00), runner b task t-b (job-01)."""
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "j.pg")
    await ledger.reconcile([pg_job(n) for n in range(4)], retry_failed=False)
    await ledger.close()
    conns = []
    leases = []
    for host in ("alpha", "beta"):
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        conns.append(conn)
        lease = RunnerLease(conn, "camp", clock, db_now=clock.wall)
        await lease.register(host, 1, "t")
        leases.append(lease)
    a, b = leases
    for lease, task in ((a, "t-a"), (b, "t-b")):
        [row] = await lease.claim(1)
        await lease.mark_submitting(row.id, 1, None)
        assert await lease.record_task_id(row.id, task, "veo", 1)
    probe = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    conns.append(probe)
    yield pg_url, a, b, probe
    for conn in conns:
        await conn.close()


class _Inbox:
    """What a runner's listener was handed, with a barrier per arrival."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any] | None]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, task_id: str, body: dict[str, Any] | None) -> None:
        self.got.append((task_id, body))
        self.arrived.set()

    async def next(self) -> tuple[str, dict[str, Any] | None]:
        await asyncio.wait_for(self.arrived.wait(), GUARD_S)
        self.arrived.clear()
        return self.got[-1]


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _listening(url: str, runner: int, inbox: _Inbox) -> asyncio.Task[None]:
    listener = Listener(url, runner, inbox, SystemClock())
    task = asyncio.ensure_future(listener.run())
    await asyncio.wait_for(listener.listening.wait(), GUARD_S)
    return task


async def test_a_callback_reaches_the_runner_that_owns_its_task(owners: Any) -> None:
    """Runner b passes on the callback of runner a's task: one statement names a and
    notifies its channel; a's listener is handed the task id and the body."""
    url, a, b, probe = owners
    inbox = _Inbox()
    task = await _listening(url, a.me, inbox)
    try:
        body = {"task_id": "t-a", "state": "success", "result_urls": ["https://r/1.mp4"]}
        assert await pass_on(probe, "camp", b.me, "t-a", body) == a.me
        assert await inbox.next() == ("t-a", body)
    finally:
        await _stop(task)


async def test_nothing_is_passed_on_for_ones_own_task_or_a_task_nobody_owns(
    owners: Any,
) -> None:
    """A runner's own task, a task of no job, and a job nobody owns send nothing; the
    next callback that is another's still arrives, alone."""
    url, a, b, probe = owners
    inbox = _Inbox()
    task = await _listening(url, a.me, inbox)
    try:
        body = {"task_id": "t-a", "state": "success"}
        assert await pass_on(probe, "camp", a.me, "t-a", body) is None
        assert await pass_on(probe, "camp", b.me, "t-none", body) is None
        await probe.execute("UPDATE jobs SET owner = NULL WHERE task_id = 't-b'")
        assert await pass_on(probe, "camp", a.me, "t-b", body) is None
        assert await pass_on(probe, "camp", b.me, "t-a", {"task_id": "t-a"}) == a.me
        assert await inbox.next() == ("t-a", {"task_id": "t-a"})
        assert len(inbox.got) == 1
    finally:
        await _stop(task)


async def test_a_body_past_notifys_limit_goes_as_the_task_id_alone(owners: Any) -> None:
    """A callback too large for a notification is passed on as its task id: the owner's
    listener is handed no body (its polls settle the task)."""
    url, a, b, probe = owners
    big = {"task_id": "t-a", "state": "success", "result_urls": ["https://r/" + "x" * 9000]}
    assert len(payload("t-a", big).encode()) <= MAX_PAYLOAD
    assert json.loads(payload("t-a", big)) == {"t": "t-a"}
    inbox = _Inbox()
    task = await _listening(url, a.me, inbox)
    try:
        assert await pass_on(probe, "camp", b.me, "t-a", big) == a.me
        assert await inbox.next() == ("t-a", None)
    finally:
        await _stop(task)


async def test_a_stray_notification_is_ignored(owners: Any) -> None:
    """Anything on the channel that is not a relayed callback is skipped; the listener
    goes on to the next."""
    url, a, _b, probe = owners
    inbox = _Inbox()
    task = await _listening(url, a.me, inbox)
    try:
        await probe.execute("SELECT pg_notify(%s, 'not json')", (channel(a.me),))
        await probe.execute("SELECT pg_notify(%s, '[1]')", (channel(a.me),))
        await probe.execute("SELECT pg_notify(%s, %s)", (channel(a.me), payload("t-a", {})))
        assert await inbox.next() == ("t-a", {})
        assert len(inbox.got) == 1
    finally:
        await _stop(task)
