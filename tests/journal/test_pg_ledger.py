"""PgLedger against a real PostgreSQL (tests/pg.py): the same answers and rows as the
SQLite ledger for the same operations on the same clock, and the journal's invariants."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import NOW, StillClock

from apixo_batch.errors import JournalError
from apixo_batch.journal import (
    AsyncJournal,
    JobRow,
    JobState,
    Journal,
    Landed,
    Ledger,
    MarkRefused,
    NewJob,
    RunnerSpec,
    RunRecord,
    SqliteLedger,
    Totals,
    open_ledger,
)
from apixo_batch.journal.pg.executor import DatabaseFailed
from apixo_batch.journal.pg.ledger import PgLedger
from apixo_batch.journal.pg.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from apixo_batch.journal.unrecorded import AdoptRefused
from apixo_batch.planning.kind import Kind
from apixo_batch.planning.selection import Again, Selection

S = JobState


def _job(
    n: int,
    *,
    prompt: str | None = None,
    filename: str | None = None,
    model: str = "veo3-fast",
    duration: int | None = None,
) -> NewJob:
    body: dict[str, Any] = {"prompt": prompt or f"a cat, take {n}"}
    if duration is not None:
        body["duration"] = duration
    text = json.dumps(body, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n,
        model=model,
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=filename or f"job-{n}.mp4",
        cost_usd=None if n == 4 else 0.5,
    )


def _landed(name: str) -> Landed:
    landed = Landed()
    landed.add(name, "ab" * 32, 1234)
    return landed


async def _outcome(fut: Any) -> Any:
    """What an operation answered, or the refusal it raised (type and message)."""
    try:
        return ("ok", await fut)
    except (JournalError, AdoptRefused) as exc:
        return (type(exc).__name__, str(exc))


async def _scenario(ledger: Ledger, clock: StillClock) -> list[Any]:
    """Every kind of operation of a run and of its restart, answers collected in order."""
    seen: list[Any] = []
    jobs = [_job(0, duration=5), _job(1, duration=10), _job(2), _job(3, duration=5), _job(4)]
    seen.append(await ledger.keep_campaign("camp"))
    seen.append(await ledger.keep_campaign("other"))
    recovered, sync = await ledger.reconcile(iter(jobs), retry_failed=False)
    seen.append((recovered, vars(sync)))
    seen.append(await ledger.queued_runs())
    order = [r.id async for r in ledger.queued_by_kind(lambda ks: reversed(ks), page=2)]
    seen.append(order)
    seen.append(await ledger.queued_cost())
    clock.advance(1.0)
    await ledger.mark_submitting("job-0", 1)
    await ledger.record_task_id("job-0", "t-0", "async", False)
    await ledger.mark_submitting("job-1", 1)
    await ledger.hand_back("job-1", True)
    seen.append(await _outcome(ledger.hand_back("job-1", False)))  # still queued: no-op
    await ledger.mark_submitting("job-2", 1)
    await ledger.fail_submit("job-2", "SUBMIT_ERROR", "no answer", True)
    await ledger.mark_submitting("job-3", 1)
    # A key pool's task: journaled with the fingerprint of the key that created it.
    await ledger.record_task_id("job-3", "t-3", "async", False, key_fp="1a2b3c4d")
    clock.advance(2.0)
    await ledger.record_success(
        "job-0",
        result_urls=["http://x/0.mp4"],
        completed_at=clock.wall(),
        expires_at=clock.wall() + 86400,
        cost_time_ms=900,
        via="poll",
        clock_key="veo3-fast|5|-",
        seconds=42.0,
    )
    await ledger.record_done("job-0", _landed("job-0.mp4"))
    seen.append(await _outcome(ledger.record_done("job-4", _landed("job-4.mp4"))))
    seen.append(await _outcome(ledger.mark_submitting("nope", 1)))
    seen.append(await _outcome(ledger.adopt("job-3", "t-other", "async")))
    seen.append(await _outcome(ledger.adopt("job-3", "t-3", "async")))
    seen.append(await _outcome(ledger.adopt("job-4", "t-4", "async")))
    seen.append(await ledger.by_task("t-3"))
    seen.append(await ledger.known_task_ids(["t-0", "t-3", "t-9"]))
    seen.append(sorted((await ledger.file_owners()).items()))
    seen.append(await ledger.counts())
    seen.append(await ledger.counts_by_model())
    totals = await ledger.totals()
    seen.append([getattr(totals, k) for k in Totals.__slots__])
    seen.append(await ledger.in_flight())
    seen.append(await ledger.learned_completions())
    await ledger.remember_rpm("acct", 123.4)
    seen.append(await ledger.learned_rpm("acct"))
    seen.append(await ledger.callback_token("tok"))
    seen.append(await ledger.output())
    await ledger.keep_output("s3://b/p")
    seen.append(await ledger.output())
    # The restart: job-1 marked (a crash cuts it off), the file edited: job-3's paid input
    # changed (kept, told), job-2's unpaid input changed (replaced), job-4 gone, job-5
    # new and named like job-0's landed file (refused before any submit).
    await ledger.mark_submitting("job-1", 2)
    clock.advance(3.0)
    edited = [
        _job(0, duration=5),
        _job(1, duration=10),
        _job(2, prompt="new"),
        _job(3, prompt="edited"),
        _job(5, filename="JOB-0.mp4"),
    ]
    recovered, sync = await ledger.reconcile(iter(edited), retry_failed=True)
    seen.append((recovered, vars(sync)))
    seen.append(await ledger.queued_cut_off())
    seen.append(ledger.changes)
    await ledger.keep_run(RunRecord(ended_at=clock.wall(), wall_s=3.0, submitted=2, changed=4))
    await ledger.keep_run(RunRecord(ended_at=clock.wall(), wall_s=0.1, submitted=0, changed=0))
    seen.append(await ledger.last_runs())
    clashes = await ledger.refuse_clashes(None, lambda name: f"out/{name}")
    seen.append([(c.job_id, c.name, c.holder) for c in clashes])
    await ledger.refetch(["job-0"])
    seen.append([r.id async for r in ledger.rows(S.QUEUED, page=2, file_only=True)])
    seen.append([r.id async for r in ledger.rows(S.SUBMITTED, page=1, file_only=False)])
    seen.append(await ledger.read_rows(list))
    seen.append(await ledger.read_done(list))
    return seen


async def _run_to_done(
    ledger: Ledger, clock: StillClock, job_id: str, task: str, name: str
) -> None:
    await ledger.mark_submitting(job_id, 1)
    await ledger.record_task_id(job_id, task, "async", False)
    await ledger.record_success(
        job_id,
        result_urls=[f"http://x/{task}.mp4"],
        completed_at=clock.wall(),
        expires_at=clock.wall() + 86400,
        cost_time_ms=700,
        via="callback",
        clock_key="veo3-fast|-|-",
        seconds=30.0,
    )
    await ledger.record_done(job_id, _landed(name))


async def _again(ledger: Ledger, clock: StillClock) -> list[Any]:
    """After :func:`_scenario`, on the same ledger: ended jobs sent again (issue 32) by a
    narrowed ``--retry-failed`` (``--fail-code``, ``--only``), ``--retry-expired`` and
    ``--reroll`` (takes: a new name, the earlier files held), then a plain retry that
    skips an unchanged refused input, and a reroll narrowed by model (a new seed)."""
    seen: list[Any] = []
    clock.advance(10.0)
    await ledger.record_done("job-0", _landed("job-0.mp4"))  # fetched again: done
    await ledger.mark_submitting("job-1", 3)
    await ledger.record_task_id("job-1", "t-1", "async", True)
    await ledger.record_failure(
        "job-1", fail_code="GENERATION_FAILED", fail_msg="try again", completed_at=1.0, via="poll"
    )
    await ledger.mark_submitting("job-2", 1)
    await ledger.record_task_id("job-2", "t-2", "async", False)
    await ledger.record_success(
        "job-2",
        result_urls=["http://x/2a.mp4", "http://x/2b.mp4"],
        completed_at=clock.wall(),
        expires_at=clock.wall() + 60,
        cost_time_ms=None,
        via="poll",
        clock_key="veo3-fast|-|-",
        seconds=50.0,
    )
    await ledger.record_expired("job-2", "the URLs lapsed", _landed("job-2.mp4"))
    await ledger.record_failure(
        "job-3", fail_code="NSFW", fail_msg="flagged", completed_at=2.0, via="poll"
    )
    clock.advance(1.0)
    # job-3's input as it was first sent: its refusal would come again.
    file = [
        _job(0, duration=5),
        _job(1, duration=10),
        _job(2, prompt="new"),
        _job(3, duration=5),
        _job(5, filename="JOB-0.mp4"),
        _job(6, model="wan-2-5"),
    ]
    narrowed = Again(
        failed=True,
        fail_codes=("GENERATION_FAILED",),
        expired=True,
        reroll=True,
        selection=Selection(only=("job-[0-3]",)),
    )
    recovered, sync = await ledger.reconcile(iter(file), again=narrowed)
    seen.append((recovered, vars(sync)))
    seen.append(await ledger.queued_brief())
    seen.append(sorted((await ledger.file_owners()).items()))
    seen.append([(c.job_id, c.name, c.holder) for c in await ledger.refuse_clashes(None, str)])
    clock.advance(1.0)
    await _run_to_done(ledger, clock, "job-0", "t-0b", "job-0-take2.mp4")
    await _run_to_done(ledger, clock, "job-6", "t-6", "job-6.mp4")
    seen.append(sorted((await ledger.file_owners()).items()))
    seen.append(await ledger.known_task_ids(["t-0", "t-0b", "t-2", "t-6"]))
    clock.advance(1.0)
    # A plain --retry-failed: job-3's refused input is unchanged (skipped, told); job-5's
    # clash is no refusal of its input. job-0's input edited after its take ended: told.
    file[0] = _job(0, prompt="a dog", duration=5)
    recovered, sync = await ledger.reconcile(iter(file), retry_failed=True)
    seen.append((recovered, vars(sync)))
    clock.advance(1.0)
    by_model = Again(reroll=True, selection=Selection(models=("wan-2-5",)))
    recovered, sync = await ledger.reconcile(iter(file), again=by_model)
    seen.append((recovered, vars(sync)))
    # Take 2 not yet sent, its input edited: the new input, with the take's own seed.
    file[5] = _job(6, model="wan-2-5", prompt="a wolf")
    seen.append(vars((await ledger.reconcile(iter(file)))[1]))
    seen.append(await ledger.counts())
    seen.append(await ledger.queued_brief())
    seen.append(sorted((await ledger.file_owners()).items()))
    seen.append(await ledger.read_rows(list))
    return seen


@pytest.fixture
async def both(
    tmp_path: Path, pg_url: str
) -> AsyncIterator[tuple[Ledger, Ledger, StillClock, StillClock]]:
    lite_clock, pg_clock = StillClock(), StillClock()
    lite = SqliteLedger(AsyncJournal(Journal(tmp_path / "j.sqlite")), lite_clock)
    pg = await open_ledger(pg_url, "camp", pg_clock, anchor=tmp_path / "j.pg")
    yield lite, pg, lite_clock, pg_clock
    await lite.close()
    await pg.close()


async def test_same_answers_and_rows_as_sqlite(both: Any) -> None:
    """One scenario (a run, refusals, adoption, a crash, an edited job file, clashes, a
    refetch) gives the same answers and the same rows, field for field, on both backends."""
    lite, pg, lite_clock, pg_clock = both
    assert isinstance(pg, PgLedger)
    want = await _scenario(lite, lite_clock)
    got = await _scenario(pg, pg_clock)
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        assert b == a, f"step {i}"
    rows = want[-2]
    assert [r.id for r in rows] == ["job-0", "job-1", "job-2", "job-3", "job-5", "job-4"]
    assert rows[3].changed_input_hash is not None and rows[1].possibly_duplicated
    assert rows[3].key_fp == "1a2b3c4d" and rows[0].key_fp is None
    assert rows[4].state is S.FAILED and rows[0].state is S.SUCCEEDED  # clash; refetch
    # The kinds were read from the jobs' inputs, as SQLite reads them.
    assert want[3][0][0] == Kind("veo3-fast", 5, None)


async def test_jobs_sent_again_same_rows_as_sqlite(both: Any) -> None:
    """Ended jobs queued again (issue 32: a narrowed --retry-failed, --retry-expired,
    --reroll's takes and their held earlier files, a refused input skipped) give the same
    answers and rows, field for field, on both backends; the takes are as SQLite has them."""
    lite, pg, lite_clock, pg_clock = both
    await _scenario(lite, lite_clock)
    await _scenario(pg, pg_clock)
    want = await _again(lite, lite_clock)
    got = await _again(pg, pg_clock)
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        assert b == a, f"step {i}"
    narrowed, plain, by_model = want[0][1], want[6][1], want[7][1]
    # --fail-code GENERATION_FAILED, --only job-[0-3]: job-3 (NSFW) and job-5 kept.
    assert narrowed["again"] == {"done": 1, "failed": 1, "expired": 1}
    assert plain["again"] == {"failed": 1} and plain["refused_unchanged"] == {"job-3": "NSFW"}
    assert plain["ended"] == {"job-0": "done"}
    assert by_model["again"] == {"done": 1}
    assert [q[0] for q in want[1]] == ["job-0", "job-1", "job-2", "job-6"]
    owners = dict(want[4])
    # The earlier take's file stays job-0's (job-5, failed on it, still names it).
    assert owners["job-0.mp4"] == ("job-0", "job-5")
    assert owners["job-0-take2.mp4"] == ("job-0",)
    rows = {r.id: r for r in want[-1]}
    assert (rows["job-0"].take, rows["job-0"].earlier_files) == (2, ("job-0.mp4",))
    assert rows["job-0"].files == ("job-0-take2.mp4",) and rows["job-0"].state is S.DONE
    assert (rows["job-2"].state, rows["job-2"].take, rows["job-2"].files) == (S.QUEUED, 1, ())
    assert rows["job-3"].state is S.FAILED and rows["job-5"].state is S.QUEUED
    six = rows["job-6"]
    assert (six.state, six.take, six.earlier_files) == (S.QUEUED, 2, ("job-6.mp4",))
    assert six.input["prompt"] == "a wolf" and six.out_name == "job-6-take2.mp4"
    assert isinstance(six.input["seed"], int) and want[8]["updated"] == 1


async def test_task_id_survives_a_failing_companion_and_a_cancelled_caller(
    tmp_path: Path, pg_url: str
) -> None:
    """Writes of one turn share a transaction; one refused does not undo another's task id;
    a caller cancelled after the call still gets its write committed (by the close)."""
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "a.pg")
    assert isinstance(ledger, PgLedger)
    await ledger.keep_campaign("camp")
    await ledger.reconcile(iter([_job(0), _job(1), _job(2)]), retry_failed=False)
    await ledger.mark_submitting("job-0", 1)
    await ledger.mark_submitting("job-2", 1)
    before = ledger.executor.commits
    ok = ledger.record_task_id("job-0", "t-0", "async", False)
    bad = ledger.record_done("job-1", Landed())  # queued -> done: refused
    assert (await _outcome(ok))[0] == "ok"
    assert (await _outcome(bad))[0] == "JournalError"
    assert ledger.executor.commits - before == 1  # the retry, each op in a savepoint

    async def caller() -> None:
        await ledger.record_task_id("job-2", "t-2", "async", False)

    task = asyncio.get_running_loop().create_task(caller())
    await asyncio.sleep(0)  # the write is queued once called
    task.cancel()
    await ledger.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id, state, task_id FROM jobs ORDER BY id").fetchall()
        history = conn.execute("SELECT task_id FROM task_history ORDER BY 1").fetchall()
    assert rows == [
        ("job-0", "submitted", "t-0"),
        ("job-1", "queued", None),
        ("job-2", "submitted", "t-2"),
    ]
    assert history == [("t-0",), ("t-2",)]


async def test_runners_share_a_campaign_and_no_password_in_errors(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """Two runners open one campaign at once, each with a lease of its own; a ledger
    opened without a runner has none; an unreachable database is one line without its
    password."""
    clock = StillClock()
    spec = RunnerSpec(lease_s=30.0, grace_s=35.0, host="h", pid=1, version="t")
    first = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "a.pg", runner=spec)
    second = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "b.pg", runner=spec)
    plain = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "c.pg")
    assert first.runner is not None and second.runner is not None
    assert first.runner.id != second.runner.id and plain.runner is None
    for ledger in (first, second, plain):
        await ledger.close()
    url = pg_cluster.url("no_such_database", password="hunter2")
    with pytest.raises(DatabaseFailed) as caught:
        await open_ledger(url, "camp", clock, anchor=tmp_path / "d.pg")
    message = str(caught.value)
    assert "hunter2" not in message and "***" in message and "\n" not in message


async def test_runners_starting_together_keep_one_identity_and_token(
    tmp_path: Path, pg_url: str
) -> None:
    """Runners that open a new campaign at once all read the journal id and callback
    token the first kept (each kept its own before, and the output folder refused all
    runners but one: "belongs to the journal X, not to the journal X")."""
    clock = StillClock()
    spec = RunnerSpec(lease_s=30.0, grace_s=35.0, host="h", pid=1, version="t")
    ledgers = [
        await open_ledger(pg_url, "camp", clock, anchor=tmp_path / f"{i}.pg", runner=spec)
        for i in range(4)
    ]
    try:
        for ledger in ledgers:
            await ledger.keep_campaign("camp")
        ids = await asyncio.gather(*(ledger.identity() for ledger in ledgers))
        tokens = await asyncio.gather(
            *(one.callback_token(f"tok-{i}") for i, one in enumerate(ledgers))
        )
    finally:
        for ledger in ledgers:
            await ledger.close()
    assert len(set(ids)) == 1 and len(set(tokens)) == 1, (ids, tokens)


async def test_a_journal_of_schema_1_gains_takes_on_open(tmp_path: Path, pg_url: str) -> None:
    """A database an earlier apixo-batch wrote (schema 1: no takes) is brought to the
    newest version on open: its jobs are on take 1 with no earlier files, and reroll."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate(conn, "old", MIGRATIONS[:1])
        await conn.execute("INSERT INTO campaigns (id) VALUES ('camp')")
        await conn.execute(
            "INSERT INTO jobs (campaign, id, idx, model, provider, input_json, input_hash, "
            "filename, state, files, updated_at) VALUES ('camp', 'job-0', 0, 'veo3-fast', "
            "'google', %s, %s, 'job-0.mp4', 'done', '[\"job-0.mp4\"]', 1.0)",
            (_job(0).input_json, _job(0).input_hash),
        )
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "a.pg")
    try:
        before = await ledger.read_rows(list)
        assert (before[0].take, before[0].earlier_files) == (1, ())
        _, sync = await ledger.reconcile(iter([_job(0)]), again=Again(reroll=True))
        assert sync.again == {"done": 1}
        row = (await ledger.read_rows(list))[0]
        assert (row.state, row.take, row.earlier_files) == (S.QUEUED, 2, ("job-0.mp4",))
    finally:
        await ledger.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM apixo_schema").fetchall() == [(SCHEMA_VERSION,)]


def _spec(pid: int | None = None) -> RunnerSpec:
    return RunnerSpec(
        lease_s=30.0,
        grace_s=35.0,
        host="h",
        pid=os.getpid() if pid is None else pid,
        version="t",
        node="node-test",
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def _upto(rows: AsyncIterator[JobRow], n: int) -> AsyncIterator[JobRow]:
    for _ in range(n):
        try:
            yield await anext(rows)
        except StopAsyncIteration:
            return  # fewer left: a restart that outlasts the queue claims none then


async def _first(rows: AsyncIterator[JobRow], n: int) -> list[JobRow]:
    """The first ``n`` rows of a claiming iterator, which is then closed (the claims it
    made and did not hand out are given back)."""
    got = [row async for row in _upto(rows, n)]
    await rows.aclose()  # type: ignore[attr-defined]
    return got


async def test_runners_sync_once_and_requeue_only_dead_runners_submits(
    tmp_path: Path, pg_url: str
) -> None:
    """Two runners reconciling one job file at once insert every job once. A runner
    starting later leaves a live runner's submit alone and requeues (flagged, counted)
    only that of a runner whose process is gone; it follows only what is its own or
    nobody's, and its follower's write on another runner's row changes nothing."""
    clock = StillClock()
    jobs = [_job(n) for n in range(30)]
    a = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "a.pg", runner=_spec())
    b = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "b.pg", runner=_spec())
    (_, sa), (_, sb) = await asyncio.gather(a.reconcile(jobs), b.reconcile(jobs))
    assert sorted([sa.added, sb.added]) == [0, 30] and (await a.counts()) == {"queued": 30}
    await b.close()
    dead = await open_ledger(
        pg_url, "camp", clock, anchor=tmp_path / "d.pg", runner=_spec(_dead_pid())
    )
    (mine,) = await _first(a.rows(S.QUEUED, page=500, file_only=True), 1)
    (theirs,) = await _first(dead.rows(S.QUEUED, page=500, file_only=True), 1)
    await a.mark_submitting(mine.id, 1)
    await dead.mark_submitting(theirs.id, 1)
    await a.record_task_id(mine.id, "task-a", "async", False)
    await dead.close()  # its lease stays: as after a kill -9
    c = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "c.pg", runner=_spec())
    recovered, _ = await c.reconcile(jobs)
    assert recovered == 1
    rows = {r.id: r for r in await c.in_flight()}
    assert rows == {}  # task-a is a's, alive
    assert [r.task_id for r in await a.in_flight()] == ["task-a"]
    back = await c.by_task("task-a")
    assert back is not None and back.state is S.SUBMITTED
    again = await _first(c.rows(S.QUEUED, page=500, file_only=True), 1)
    assert again[0].id == theirs.id and again[0].possibly_duplicated
    # c's follower, wrongly told task-a's end, journals nothing on a's row.
    await c.record_success(
        mine.id, result_urls=["u"], completed_at=NOW, expires_at=NOW + 1, cost_time_ms=1,
        via="poll", clock_key="k", seconds=1.0,
    )  # fmt: skip
    still = await a.by_task("task-a")
    assert still is not None and still.state is S.SUBMITTED
    assert c.runner is not None and a.runner is not None
    for ledger in (a, c):
        await ledger.close()


async def test_a_runner_rides_out_a_database_restart(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """PostgreSQL restarted under a runner's reads, claims, marks and task ids: each
    waits for the database (within the lease) instead of failing, and every task id
    acknowledged is there afterwards."""
    clock = StillClock()
    ledger = await open_ledger(pg_url, "camp", clock, anchor=tmp_path / "a.pg", runner=_spec())
    await ledger.reconcile([_job(n) for n in range(400)])
    restart = asyncio.ensure_future(asyncio.to_thread(pg_cluster.restart))
    recorded: list[str] = []
    while not restart.done() or not recorded:
        await ledger.counts()
        claimed = await _first(ledger.rows(S.QUEUED, page=500, file_only=True), 1)
        for row in claimed:  # none while the database is away: nothing claimed then
            try:
                await ledger.mark_submitting(row.id, 1)
            except MarkRefused:
                continue  # fenced while away: nothing would be sent
            await ledger.record_task_id(row.id, f"task-{row.id}", "async", False)
            recorded.append(row.id)
    await restart
    rows = {r.id: r for r in await ledger.in_flight()}
    assert sorted(rows) == sorted(recorded)
    assert all(rows[i].task_id == f"task-{i}" for i in recorded)
    await ledger.close()


async def test_the_learned_rate_is_kept_on_the_accounts_row(tmp_path: Path, pg_url: str) -> None:
    """Once the account has its row (a run shared its limits), the rate a run learned is
    kept there, where the next run of any campaign on the account starts from it; before,
    the campaign's own value is read, as SQLite keeps it."""
    from apixo_batch.journal.pg.shared_limits import ensure_account

    ledger = await open_ledger(pg_url, "camp", StillClock(), anchor=tmp_path / "j.pg")
    try:
        await ledger.remember_rpm("acct", 321.0)
        assert await ledger.learned_rpm("acct") == 321.0  # no row yet: the campaign's
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await ensure_account(conn, "acct", slots=10, rpm=600.0, burst=1.0)
            assert await ledger.learned_rpm("acct") is None  # the account's row rules
            await ledger.remember_rpm("acct", 4321.0)
            row = await (await conn.execute("SELECT learned_rpm FROM accounts")).fetchone()
            assert row == (4321.0,)
            assert await ledger.learned_rpm("acct") == 4321.0
            await ledger.remember_rpm("acct", None)  # a run that met no limit clears it
            assert await ledger.learned_rpm("acct") is None
    finally:
        await ledger.close()


async def test_a_runner_whose_session_cannot_reconnect_pauses_and_resumes(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's own session broke and reconnecting fails (the database still away):
    a start-up sync leaves adoption to the run's next sweep instead of raising the
    driver's error (a traceback, exit 70), claims take nothing, a mark is refused
    (nothing sent); once the database answers again, claims and marks resume."""
    ledger = await open_ledger(
        pg_url, "camp", StillClock(), anchor=tmp_path / "j.pg", runner=_spec()
    )
    lease = ledger.runner
    assert lease is not None
    await ledger.reconcile([_job(n) for n in range(3)])
    connect = lease._connect

    async def refused() -> Any:
        raise psycopg.OperationalError("connection refused (the test's outage)")

    monkeypatch.setattr(lease, "_connect", refused)
    await lease._conn.close()
    recovered, synced = await ledger.reconcile([_job(n) for n in range(4)])
    assert (recovered, synced.added) == (0, 1)
    assert await _first(ledger.rows(S.QUEUED, page=500, file_only=True), 1) == []
    with pytest.raises(MarkRefused):
        await ledger.mark_submitting(_job(0).id, 1)
    monkeypatch.setattr(lease, "_connect", connect)
    (row,) = await _first(ledger.rows(S.QUEUED, page=500, file_only=True), 1)
    await ledger.mark_submitting(row.id, 1)
    await ledger.record_task_id(row.id, "task-back", "async", False)
    assert [r.task_id for r in await ledger.in_flight()] == ["task-back"]
    await ledger.close()


async def _submitted(ledger: Ledger, n: int) -> list[str]:
    """``n`` jobs claimed, marked and given task ids by this runner: paid, running."""
    await ledger.reconcile([_job(i) for i in range(n)])
    ids = [row.id for row in await _first(ledger.rows(S.QUEUED, page=n, file_only=True), n)]
    for job_id in ids:
        await ledger.mark_submitting(job_id, 1)
        await ledger.record_task_id(job_id, f"task-{job_id}", "async", False)
    return ids


def _success(ledger: Ledger, job_id: str) -> asyncio.Future[None]:
    return ledger.record_success(
        job_id,
        result_urls=[f"https://r/{job_id}.mp4"],
        completed_at=NOW,
        expires_at=NOW + 3600,
        cost_time_ms=1000,
        via="poll",
        clock_key="k",
        seconds=1.0,
    )


async def _lazy_runner(tmp_path: Path, url: str) -> tuple[PgLedger, int]:
    """A runner's ledger whose lazy marks no durable commit flushes until told (their
    replays all kept), and its runner id."""
    ledger = await open_ledger(url, "camp", StillClock(), anchor=tmp_path / "a.pg", runner=_spec())
    assert isinstance(ledger, PgLedger) and ledger.runner is not None
    ledger.executor.lazy_window_s = 3600.0
    return ledger, ledger.runner.me


async def _as_a_crash_left(url: str, state: JobState, owner: int, *job_ids: str) -> None:
    """The rows as a server crash leaves them when it lost their last lazy commits."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE jobs SET state = %s, owner = %s WHERE id = ANY(%s)",
            (state.value, owner, list(job_ids)),
        )


async def _states(url: str) -> dict[str, tuple[str, int | None]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT id, state, owner FROM jobs")
        return {str(r[0]): (str(r[1]), r[2]) for r in await cur.fetchall()}


async def test_lazy_marks_a_server_crash_lost_are_written_again_on_its_return(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """A server crash loses the last lazy commits while the runner lives on, sure it
    made them (it would wait for ever for tasks it already saw end). On the first
    connection to the restarted server they are written again, in order, each only
    where its row is still behind: a success lost is journaled again, a success and
    its landing both lost are both, a row that moved on meanwhile is left alone."""
    ledger, me = await _lazy_runner(tmp_path, pg_url)
    try:
        a, b, c, d = await _submitted(ledger, 4)
        await _success(ledger, a)
        await _success(ledger, b)
        await ledger.record_done(b, _landed(f"{b}.mp4"))
        await _success(ledger, c)
        # The crash: a's success and b's success and landing lost; c moved on (another
        # runner's now: its owner journals it).
        await _as_a_crash_left(pg_url, S.SUBMITTED, me, a, b)
        await _as_a_crash_left(pg_url, S.SUBMITTED, me + 1000, c)
        await asyncio.to_thread(pg_cluster.restart, "fast")
        counts = await ledger.counts()  # the first statement after the restart
        states = await _states(pg_url)
        assert states[a] == (S.SUCCEEDED.value, me)
        assert states[b] == (S.DONE.value, None)
        assert states[c] == (S.SUBMITTED.value, me + 1000)
        assert states[d] == (S.SUBMITTED.value, me)
        assert counts[S.DONE.value] == 1  # read after the replay, not before
        row = await ledger.by_task(f"task-{a}")
        assert row is not None and row.result_urls == (f"https://r/{a}.mp4",)
        assert ledger.executor.replayed == 4
    finally:
        await ledger.close()


async def test_a_durable_commit_ends_the_lazy_marks_doubt(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """Once a durable commit came after them (the WAL is flushed in order), lazy marks
    are no longer written again after a restart; a restart that lost nothing (a clean
    stop) changes no row either."""
    ledger, me = await _lazy_runner(tmp_path, pg_url)
    try:
        a, b, c = await _submitted(ledger, 3)
        await _success(ledger, a)
        await ledger.record_failure(c, fail_code="X", fail_msg="x", completed_at=NOW, via="poll")
        await _success(ledger, b)
        await ledger.record_done(b, _landed(f"{b}.mp4"))
        # Only a's row is set back (by hand: a lazy commit a durable one followed is
        # never lost); b's lazy marks are replayed onto rows already past them.
        await _as_a_crash_left(pg_url, S.SUBMITTED, me, a)
        await asyncio.to_thread(pg_cluster.restart, "fast")
        await ledger.counts()
        states = await _states(pg_url)
        assert states[a] == (S.SUBMITTED.value, me)
        assert states[b] == (S.DONE.value, None)
        assert states[c] == (S.FAILED.value, None)
        assert ledger.executor.replayed == 2
    finally:
        await ledger.close()


async def test_lazy_marks_stay_in_doubt_past_a_refused_write_and_never_touch_a_later_task(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """A durable write that was refused committed nothing, so it flushed nothing: the lazy
    marks before it are still written again after a crash. And a mark is written again
    only onto the task it was made on: a job sent again since (a reroll: a new task id)
    is left as it is."""
    ledger, me = await _lazy_runner(tmp_path, pg_url)
    try:
        a, b = await _submitted(ledger, 2)
        await _success(ledger, a)
        await _success(ledger, b)
        await ledger.record_done(b, _landed(f"{b}.mp4"))
        with pytest.raises(JournalError):  # a succeeded job cannot fail: refused
            await ledger.record_failure(
                a, fail_code="X", fail_msg="x", completed_at=NOW, via="poll"
            )
        await _as_a_crash_left(pg_url, S.SUBMITTED, me, a)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute(  # b rerolled and sent again by this runner: a new task
                "UPDATE jobs SET state = 'submitted', owner = %s, task_id = 'task-new' "
                "WHERE id = %s",
                (me, b),
            )
        await asyncio.to_thread(pg_cluster.restart, "fast")
        await ledger.counts()
        states = await _states(pg_url)
        assert states[a] == (S.SUCCEEDED.value, me)
        assert states[b] == (S.SUBMITTED.value, me)
        row = await ledger.by_task("task-new")
        assert row is not None and row.id == b and row.state is S.SUBMITTED
    finally:
        await ledger.close()
