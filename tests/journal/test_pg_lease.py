"""Several runners on one campaign (journal/pg/lease.py) against a real PostgreSQL
(tests/pg.py): claims, the fence, adoption, the global stall, leaving. Every runner has
its own session; the time of leases is one injected clock, never slept."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import StillClock

from apixo_batch.journal import JobState, NewJob, open_ledger
from apixo_batch.journal.pg.lease import Fenced, NotOwned, RunnerLease, glob_regex, runners_of
from apixo_batch.planning.selection import Selection

S = JobState

LEASE, GRACE, MARGIN = 3.0, 2.5, 0.5


def _job(n: int) -> NewJob:
    text = json.dumps({"prompt": f"a cat, take {n}"})
    return NewJob(
        id=f"job-{n:03d}",
        idx=n,
        model="veo3-fast",
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n:03d}.mp4",
        cost_usd=0.5,
    )


Runners = Callable[..., Awaitable[list[RunnerLease]]]


@pytest.fixture
async def campaign(
    tmp_path: Path, pg_url: str
) -> AsyncIterator[tuple[StillClock, Runners, psycopg.AsyncConnection[Any]]]:
    """A campaign of 40 queued jobs, a clock, and a maker of registered runners."""
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "j.pg")
    await ledger.reconcile([_job(n) for n in range(40)], retry_failed=False)
    await ledger.close()
    conns: list[psycopg.AsyncConnection[Any]] = []

    async def make(n: int, accounts: Sequence[str] = ()) -> list[RunnerLease]:
        made = []
        for i in range(n):
            conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
            conns.append(conn)
            lease = RunnerLease(
                conn,
                "camp",
                clock,
                lease_s=LEASE,
                grace_s=GRACE,
                margin_s=MARGIN,
                db_now=clock.wall,
            )
            await lease.register(f"host-{i}", 1000 + i, "test", accounts)
            made.append(lease)
        return made

    probe = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    yield clock, make, probe
    await probe.close()
    for conn in conns:
        await conn.close()


async def _rows(conn: psycopg.AsyncConnection[Any]) -> dict[str, tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT id, state, owner, task_id, possibly_duplicated, attempts FROM jobs "
        "WHERE campaign='camp'"
    )
    return {r[0]: r[1:] for r in await cur.fetchall()}


async def _submit(lease: RunnerLease, job_id: str, task: str) -> None:
    await lease.mark_submitting(job_id, 1, None)
    assert await lease.record_task_id(job_id, task, "veo", 1)


async def test_claims_are_disjoint_and_in_file_order(campaign: Any) -> None:
    """Four runners claiming at once get disjoint rows (SKIP LOCKED), each in file
    order, together every queued row once."""
    _clock, make, probe = campaign
    runners = await make(4)
    got = await asyncio.gather(*(r.claim(7) for r in runners))
    ids = [row.id for rows in got for row in rows]
    assert len(ids) == len(set(ids)) == 28
    for rows in got:
        assert [r.idx for r in rows] == sorted(r.idx for r in rows)
    more = await runners[0].claim(100)
    assert len(more) == 12 and not set(r.id for r in more) & set(ids)
    assert await runners[1].claim(5) == []
    owners = {row[1] for row in (await _rows(probe)).values()}
    assert owners == {r.id for r in runners}


async def test_only_the_owner_with_a_live_lease_marks_a_submit(campaign: Any) -> None:
    """The fence: another runner's row is refused (NotOwned); the owner's own row is
    refused once its lease is not live, locally first, and at the server when the local
    fence is fooled; a renewal makes it live again. Nothing refused changes the row; a
    hand-back by the owner frees it, flagged, for any runner."""
    clock, make, probe = campaign
    a, b = await make(2)
    (row,) = await a.claim(1)
    with pytest.raises(NotOwned):
        await b.mark_submitting(row.id, 1, None)
    clock.advance(LEASE - MARGIN)
    assert a.fenced()
    with pytest.raises(Fenced):
        await a.mark_submitting(row.id, 1, None)
    a.margin_s = -1.0  # only the server's check stands: the lease ran out at the server
    clock.advance(1.0)
    with pytest.raises(Fenced, match="lease ran out"):
        await a.mark_submitting(row.id, 1, None)
    assert (await _rows(probe))[row.id][:2] == ("queued", a.id)
    a.margin_s = MARGIN
    assert await a.renew()  # late but not adopted: the runner goes on
    await a.mark_submitting(row.id, 1, "acct")
    assert (await _rows(probe))[row.id][:2] == ("submitting", a.id)
    await b.hand_back(row.id, True)  # not b's row: nothing changes
    assert (await _rows(probe))[row.id][:2] == ("submitting", a.id)
    await a.hand_back(row.id, True)  # the send timed out: free again, flagged
    assert (await _rows(probe))[row.id][:4] == ("queued", None, None, True)
    assert [r.id for r in await b.claim(1)] == [row.id]


async def test_a_dead_runners_paid_tasks_are_followed_never_resubmitted(campaign: Any) -> None:
    """kill -9 of a runner: after lease + grace a live runner adopts it. Its journaled
    tasks become the adopter's to follow (never queued again), its submit in doubt goes
    back flagged, its unsent claims are freed; nothing is adopted before lease + grace."""
    clock, make, probe = campaign
    dead, live = await make(2)
    claimed = await dead.claim(5)
    for n, row in enumerate(claimed[:3]):
        await _submit(dead, row.id, f"task-{n}")
    await dead.mark_submitting(claimed[3].id, 1, None)  # killed with this send on the wire
    clock.advance(LEASE + GRACE - 0.1)
    assert await live.renew()
    assert await live.adopt() is None  # not before lease + grace
    clock.advance(0.2)
    assert await live.renew()
    adoption = await live.adopt()
    assert adoption is not None and adoption.dead == dead.id
    assert [r.task_id for r in adoption.followed] == ["task-0", "task-1", "task-2"]
    assert all(r.state is S.SUBMITTED for r in adoption.followed)
    assert (adoption.requeued, adoption.released) == (1, 1)
    rows = await _rows(probe)
    for row in claimed[:3]:
        assert rows[row.id][:3] == ("submitted", live.id, rows[row.id][2])
        assert rows[row.id][3] is not None
    assert rows[claimed[3].id][:2] == ("queued", None) and rows[claimed[3].id][3]
    assert rows[claimed[4].id][:2] == ("queued", None) and not rows[claimed[4].id][3]
    # The dead runner wakes: it can neither renew nor mark, and its late task id is a stray.
    assert not await dead.renew()
    assert dead.fenced() and dead.past_term()
    with pytest.raises(Fenced):
        await dead.mark_submitting(claimed[4].id, 1, None)
    assert not await dead.record_task_id(claimed[3].id, "task-late", "veo", 1)
    history = await (
        await probe.execute("SELECT task_id, job_id, runner FROM task_history ORDER BY task_id")
    ).fetchall()
    assert ("task-late", claimed[3].id, dead.id) in history
    rows = await _rows(probe)
    assert rows[claimed[3].id][:3] == ("queued", None, None) and rows[claimed[3].id][3]
    # Requeued work is claimed again; a journaled task never is.
    again = {r.id for r in await live.claim(100)}
    assert claimed[3].id in again and not {r.id for r in claimed[:3]} & again
    assert await live.adopt() is None  # adopted once, it owns nothing any more


async def test_runners_that_stalled_together_never_adopt_each_other(campaign: Any) -> None:
    """Every runner paused past lease + grace: whichever wakes first sees the others
    expired but its own lease too, so it adopts nobody until it renews, and a renewal
    that comes first keeps the other's rows. Then all go on, nothing moved."""
    clock, make, probe = campaign
    a, b = await make(2)
    await _submit(a, (await a.claim(1))[0].id, "task-a")
    await _submit(b, (await b.claim(1))[0].id, "task-b")
    clock.advance(LEASE + GRACE + 2.0)
    assert await a.adopt() is None and await b.adopt() is None  # neither is live
    assert await a.renew()
    assert await b.renew()  # b renewed before a's sweep: b is kept
    assert await a.adopt() is None and await b.adopt() is None
    rows = await _rows(probe)
    assert sorted(r[1] for r in rows.values() if r[0] == "submitted") == sorted([a.id, b.id])
    views = await runners_of(probe, "camp", clock.wall())
    assert [(v.live, v.adopted_by, v.jobs_owned) for v in views] == [(True, None, 1)] * 2


async def test_adopting_concurrently_takes_each_dead_runner_once(campaign: Any) -> None:
    """Two dead runners, three live ones sweeping at once: each dead one is adopted by
    exactly one runner, its rows by that runner only."""
    clock, make, probe = campaign
    runners = await make(5)
    dead = runners[:2]
    for d in dead:
        for row in await d.claim(3):
            await _submit(d, row.id, f"t-{row.id}")
    clock.advance(LEASE + GRACE + 1.0)
    live = runners[2:]
    for r in live:
        assert await r.renew()
    got = [x for x in await asyncio.gather(*(r.adopt() for r in live * 2)) if x is not None]
    assert sorted(x.dead for x in got) == sorted(d.id for d in dead)
    assert all(len(x.followed) == 3 for x in got)
    owners = {row[1] for row in (await _rows(probe)).values() if row[0] == "submitted"}
    assert owners <= {r.id for r in live} and len(owners) == 2


async def test_leaving_frees_claims_and_stays_while_others_hold_work(campaign: Any) -> None:
    """A runner sees the work others hold (it must stay to adopt it if they die); on
    leaving, its unsent claims go back and it is shown stopped; its slots go back."""
    clock, make, probe = campaign
    a, b = await make(2)
    await probe.execute("INSERT INTO accounts (id, slots_limit, granted) VALUES ('acct', 10, 4)")
    await probe.execute(f"INSERT INTO slot_grants VALUES ({a.id}, 'acct', 4)")
    await a.claim(3)
    await _submit(b, (await b.claim(1))[0].id, "task-b")
    assert await a.work_elsewhere() == 1 and await b.work_elsewhere() == 3
    await a.leave()
    assert await b.work_elsewhere() == 0
    views = {v.id: v for v in await runners_of(probe, "camp", clock.wall())}
    assert views[a.id].stopped and not views[a.id].live and views[a.id].jobs_owned == 0
    assert views[b.id].live and views[b.id].jobs_owned == 1
    granted = await (await probe.execute("SELECT granted FROM accounts")).fetchone()
    assert granted == (0,)
    assert a.fenced()


async def test_the_fair_share_follows_runners_joining_and_leaving(campaign: Any) -> None:
    """Each renewal reads the live runners sharing an account: a runner that joins
    shrinks everybody's share at their next renewal, one that leaves or dies widens it,
    and a runner of another account does not count."""
    clock, make, probe = campaign
    a, b, c, other = await make(4)
    for lease, accounts in ((a, "{acct}"), (b, "{acct,second}"), (c, "{acct}"), (other, "{x}")):
        await probe.execute("UPDATE runners SET accounts = %s WHERE id = %s", (accounts, lease.id))
    await c.leave()
    assert await a.renew() and a.live_runners == 2
    assert await other.renew() and other.live_runners == 1
    (late,) = await make(1)
    await probe.execute("UPDATE runners SET accounts = '{second}' WHERE id = %s", (late.id,))
    assert await b.renew() and b.live_runners == 3  # a, and late through the second account
    clock.advance(LEASE + 0.1)  # a and late stop renewing: b alone
    assert await b.renew() and b.live_runners == 1
    # A runner that joins knows the share at once, before its first renewal.
    (joined,) = await make(1, ["acct"])
    assert joined.live_runners == 2  # b (through acct) and itself


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_a_runner_of_this_node_whose_process_is_gone_is_adopted_at_once(
    campaign: Any, pg_url: str
) -> None:
    """On the same node, a runner whose pid no longer exists is adopted without waiting
    for its lease (nothing of it can be on the wire); one whose process lives, or that
    runs elsewhere, only after lease + grace."""
    clock, _make, _probe = campaign
    leases = []
    for host, pid in (("here", _dead_pid()), ("here", os.getpid()), ("there", _dead_pid())):
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        node = f"node-{host}"
        lease = RunnerLease(
            conn, "camp", clock, lease_s=LEASE, grace_s=GRACE, margin_s=MARGIN,
            db_now=clock.wall, node=node,
        )  # fmt: skip
        await lease.register(host, pid, "test")
        await _submit(lease, (await lease.claim(1))[0].id, f"task-{len(leases)}")
        leases.append(lease)
    gone, alive, elsewhere = leases
    conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    me = RunnerLease(
        conn, "camp", clock, lease_s=LEASE, grace_s=GRACE, margin_s=MARGIN,
        db_now=clock.wall, node="node-here",
    )  # fmt: skip
    await me.register("here", os.getpid(), "test")
    adoption = await me.adopt()
    assert adoption is not None and adoption.dead == gone.id
    assert [r.task_id for r in adoption.followed] == ["task-0"]
    assert await me.adopt() is None  # the living one, and the other node's, wait
    clock.advance(LEASE + GRACE + 0.1)
    assert await me.renew()
    assert {x.dead for x in [await me.adopt(), await me.adopt()] if x} == {alive.id, elsewhere.id}
    for lease in (*leases, me):
        await lease.close()


async def test_claims_by_kind_release_and_paid_rows_nobody_owns(campaign: Any, pg_url: str) -> None:
    """A claim of one kind takes only that kind; claims given back are free again; paid
    rows nobody owns are taken with one's own, never another runner's."""
    _clock, make, probe = campaign
    await probe.execute("UPDATE jobs SET model = 'kling-2-6' WHERE idx % 2 = 1")
    a, b = await make(2)
    kling = await a.claim(3, ("kling-2-6", None, None))
    assert [r.idx for r in kling] == [1, 3, 5] and {r.model for r in kling} == {"kling-2-6"}
    await a.release([r.id for r in kling[1:]])
    assert [r.idx for r in await b.claim(2, ("kling-2-6", None, None))] == [3, 5]
    await _submit(a, kling[0].id, "task-a")
    (mine,) = await b.claim(1)
    await _submit(b, mine.id, "task-b")
    await probe.execute("UPDATE jobs SET owner = NULL WHERE task_id = 'task-a'")
    # File order: b's own claim was the first free row (idx 0), a's was idx 1.
    assert [r.task_id for r in await b.claim_paid(["submitted"])] == ["task-b", "task-a"]
    assert await a.claim_paid(["submitted"]) == []  # both are b's now
    assert await b.claim_paid(["submitted"], mine_too=False) == []


async def test_remaining_work_and_what_leaving_leaves(campaign: Any) -> None:
    """What is left elsewhere (and of it, what no live runner holds) decides when a runner
    leaves; leaving requeues its submit in doubt flagged and leaves its paid rows to
    whoever claims them next."""
    _clock, make, probe = campaign
    a, b = await make(2)
    claimed = await a.claim(3)
    await _submit(a, claimed[0].id, "task-0")
    await a.mark_submitting(claimed[1].id, 1, None)
    assert await b.remaining() == (40, 37)  # a's 3 are held by a live runner
    await a.leave()
    assert await b.remaining() == (40, 40)
    rows = await _rows(probe)
    assert rows[claimed[0].id][:3] == ("submitted", None, "task-0")
    assert rows[claimed[1].id][:2] == ("queued", None) and rows[claimed[1].id][3]
    assert rows[claimed[2].id][:2] == ("queued", None) and not rows[claimed[2].id][3]
    assert [r.task_id for r in await b.claim_paid(["submitted"], mine_too=False)] == ["task-0"]
    assert await b.remaining() == (39, 39)


async def test_a_write_whose_answer_was_lost_is_found_done_on_the_next_try(
    campaign: Any,
) -> None:
    """A mark or a task id that committed but whose answer was lost (the connection
    broke) is recognised when tried again: the mark goes on, the task id is not a stray."""
    _clock, make, probe = campaign
    (a,) = await make(1)
    (row,) = await a.claim(1)
    await a.mark_submitting(row.id, 1, None)
    await a.mark_submitting(row.id, 1, None)  # the same attempt: already marked
    with pytest.raises(NotOwned):
        await a.mark_submitting(row.id, 2, None)  # another attempt: not queued
    assert await a.record_task_id(row.id, "task-x", "veo", 1)
    assert await a.record_task_id(row.id, "task-x", "veo", 1)
    assert (await _rows(probe))[row.id][:5] == ("submitted", a.id, "task-x", False, 1)


async def test_a_sweep_takes_each_dead_runner_once_though_one_keeps_a_row_locked(
    campaign: Any, pg_url: str
) -> None:
    """A runner stopped (SIGSTOP) inside a transaction keeps one of its rows locked past
    lease + grace: adoption skips that row (SKIP LOCKED), so the runner still owns
    something and may be adopted again. One sweep (Runner's, and the start-up's) still
    adopts it once and goes on to the next dead runner, instead of taking the first over
    and over while the lock lasts."""
    from apixo_batch.pipeline.runners import Runner
    from apixo_batch.pipeline.stop import Stops

    clock, make, probe = campaign
    first, second, live = await make(3)
    for d in (first, second):
        for row in await d.claim(2):
            await _submit(d, row.id, f"t-{row.id}")
    held = (await _rows(probe)).items()
    locked = min(job for job, r in held if r[1] == first.id)
    stuck = await psycopg.AsyncConnection.connect(pg_url)  # a transaction left open
    try:
        await stuck.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (locked,))
        clock.advance(LEASE + GRACE + 1.0)
        assert await live.renew()
        adopted: list[int] = []
        real = live.adopt

        async def counted(*args: Any, **kwargs: Any) -> Any:
            taken = await real(*args, **kwargs)
            if taken is not None:
                adopted.append(taken.dead)
                assert len(adopted) <= 4, f"the sweep keeps adopting: {adopted}"
            return taken

        live.adopt = counted  # type: ignore[method-assign]
        runner = Runner(live, clock=clock, stops=Stops(lambda _e: None), emit=lambda _e: None)  # type: ignore[arg-type]
        rows = await runner._take_over()
        assert sorted(adopted) == [first.id, second.id]
        assert len(rows) == 3 and locked not in {r.id for r in rows}
    finally:
        await stuck.close()
    # The lock gone, the next sweep takes the row that was skipped.
    rows = await runner._take_over()
    assert [r.id for r in rows] == [locked] and adopted[-1] == first.id


async def test_a_runner_with_a_selection_claims_and_waits_on_only_what_it_picks(
    campaign: Any,
) -> None:
    """``--only``/``--model``: a runner claims only the rows its selection picks (the
    rest stay free for the others), and the queued rows it may not take never keep it
    waiting: alone on the campaign, it leaves once its own are done."""
    _clock, make, probe = campaign
    picky, other = await make(2)
    picky.selection = Selection(only=("job-00[0-4]", "job-01?"))
    got = await picky.claim(100)
    assert [r.id for r in got] == [f"job-{n:03d}" for n in [*range(5), *range(10, 20)]]
    assert await picky.claim(100) == []
    rows = await _rows(probe)
    assert {i for i, r in rows.items() if r[1] is None} == {
        f"job-{n:03d}" for n in [*range(5, 10), *range(20, 40)]
    }
    assert await picky.remaining() == (0, 0)  # 25 queued rows, none of them its to do
    assert await other.remaining() == (40, 25)
    (late,) = await make(1)
    late.selection = Selection(only=("job-01*",), models=("veo3-fast",))
    assert await late.claim(100) == [] and await late.remaining() == (10, 0)
    await picky.leave()
    assert await late.remaining() == (10, 10)
    assert len(await late.claim(100)) == 10 and await late.remaining() == (0, 0)
    late.selection = Selection(models=("no-such-model",))
    assert await late.claim(100) == [] and await late.remaining() == (0, 0)


@pytest.mark.parametrize(
    "pattern",
    [
        "job-00?",
        "job-0[0-1]*",
        "job-0[!0-2]5",
        "*[]]*",
        "job-[z-a]*",
        "job-[!z-a]01",
        "x[",
        "job.*",
        "j?b-00[5-]",
        "*1",
    ],
)
async def test_globs_match_in_sql_as_fnmatch_does(campaign: Any, pattern: str) -> None:
    """The ids a glob picks in SQL are the ids ``fnmatch.fnmatchcase`` picks."""
    _clock, _make, probe = campaign
    ids = [f"job-{n:03d}" for n in range(40)] + ["x[", "job.1", "a]b", "job-00-"]
    regex = glob_regex(pattern)
    found = set()
    if regex is not None:
        cur = await probe.execute("SELECT i FROM unnest(%s::text[]) i WHERE i ~ %s", (ids, regex))
        found = {r[0] for r in await cur.fetchall()}
    assert found == {i for i in ids if fnmatch.fnmatchcase(i, pattern)}


async def _grant(probe: psycopg.AsyncConnection[Any], runner: int, account: str, n: int) -> None:
    await probe.execute(
        "INSERT INTO accounts (id, slots_limit, granted) VALUES (%s, 100, 0) "
        "ON CONFLICT (id) DO NOTHING",
        (account,),
    )
    await probe.execute("UPDATE accounts SET granted = granted + %s WHERE id = %s", (n, account))
    await probe.execute(
        "INSERT INTO slot_grants (runner, account, held) VALUES (%s, %s, %s)",
        (runner, account, n),
    )


async def _slots(probe: psycopg.AsyncConnection[Any]) -> dict[Any, int]:
    got: dict[Any, int] = {}
    for a, g in await (await probe.execute("SELECT id, granted FROM accounts")).fetchall():
        got[a] = int(g)
    for r, a, h in await (
        await probe.execute("SELECT runner, account, held FROM slot_grants")
    ).fetchall():
        got[(r, a)] = int(h)
    return got


async def test_adoption_takes_only_tasks_of_its_keys_and_their_slots_move_with_them(
    campaign: Any,
) -> None:
    """A task is recorded with the account of the key that created it (never the key);
    an adopter takes only the tasks of its keys, and the slots of those (still running
    at APIXO) move to it; the tasks of a key it lacks stay the dead runner's, slots
    with them, until a runner given that key adopts them; the rest go back to the pool.
    A runner with nothing left of its own does not wait on them, and counts them."""
    clock, make, probe = campaign
    (dead,) = await make(1, ["acct-a", "acct-b"])
    (only_a,) = await make(1, ["acct-a"])
    claimed = await dead.claim(5)
    keys = ["acct-a", "acct-a", "acct-b", "acct-b"]
    for n, (row, acct) in enumerate(zip(claimed[:4], keys, strict=True)):
        await dead.mark_submitting(row.id, 1, None)
        assert await dead.record_task_id(row.id, f"task-{n}", "veo", 1, key_id=acct, key_fp="fp")
    keys = await (
        await probe.execute("SELECT task_id, key_id FROM task_history ORDER BY task_id")
    ).fetchall()
    assert keys == [("task-0", "acct-a"), ("task-1", "acct-a"), ("task-2", "acct-b"),
                    ("task-3", "acct-b")]  # fmt: skip
    await _grant(probe, dead.me, "acct-a", 10)
    await _grant(probe, dead.me, "acct-b", 10)
    clock.advance(LEASE + GRACE + 0.1)
    assert await only_a.renew()
    adoption = await only_a.adopt()
    assert adoption is not None
    assert [r.task_id for r in adoption.followed] == ["task-0", "task-1"]
    rows = await _rows(probe)
    assert [rows[r.id][1] for r in claimed[:4]] == [only_a.id, only_a.id, dead.id, dead.id]
    slots = await _slots(probe)
    assert slots[(only_a.me, "acct-a")] == 2 and slots[(dead.me, "acct-a")] == 0
    assert slots["acct-a"] == 2  # 8 unused slots back to the pool
    assert slots[(dead.me, "acct-b")] == 2 and slots["acct-b"] == 2  # its 2 tasks still run
    # Not b's to poll: neither claimed nor waited on, but counted.
    assert await only_a.claim_paid(["submitted"], mine_too=False) == []
    await only_a.claim(100)
    assert await only_a.remaining() == (0, 0)
    assert await only_a.foreign_paid() == 2
    # A runner given key b joins: it adopts the rest, with their slots.
    (with_b,) = await make(1, ["acct-b"])
    adoption = await with_b.adopt()
    assert adoption is not None and adoption.dead == dead.id
    assert [r.task_id for r in adoption.followed] == ["task-2", "task-3"]
    slots = await _slots(probe)
    assert slots[(with_b.me, "acct-b")] == 2 and slots[(dead.me, "acct-b")] == 0
    assert slots["acct-b"] == 2
    assert await only_a.foreign_paid() == 0


async def test_a_stray_task_is_followed_by_the_jobs_owner_and_listed_with_its_job(
    campaign: Any, tmp_path: Path, pg_url: str
) -> None:
    """A runner cut off while its row was adopted gets its task id back too late: the
    id is a stray, kept with its key, to be followed by the job's owner (a runner of
    that key); once it has ended its result URLs are listed with its job."""
    clock, make, _probe = campaign
    (late,) = await make(1, ["acct-a"])
    (owner,) = await make(1, ["acct-a"])
    (other_key,) = await make(1, ["acct-b"])
    (row,) = await late.claim(1)
    await late.mark_submitting(row.id, 1, None)
    clock.advance(LEASE + GRACE + 0.1)
    assert await owner.renew() and await other_key.renew()
    assert await owner.adopt() is not None  # the submit in doubt: queued again
    assert not await late.record_task_id(row.id, "task-stray", "veo", 1, key_id="acct-a",
                                         key_fp="fp-a")  # fmt: skip
    assert await other_key.strays() == []  # not its key: it could not read the task
    assert await owner.strays() == [("task-stray", row.id, "veo3-fast", "fp-a")]
    await owner.settle_stray("task-stray", "success", ["https://r/1.mp4"], None)
    assert await owner.strays() == []
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "j.pg")
    try:
        assert await ledger.strays() == {
            row.id: [
                {
                    "task_id": "task-stray",
                    "state": "success",
                    "result_urls": ["https://r/1.mp4"],
                    "fail_code": None,
                }
            ]
        }
    finally:
        await ledger.close()
