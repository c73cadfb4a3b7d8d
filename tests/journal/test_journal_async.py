"""AsyncJournal: its own thread, group commit, ordering, cancellation, durability, close."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apixo_batch.errors import JournalError
from apixo_batch.journal import AsyncJournal, InlineJournal, JobState, Journal, NewJob, SyncResult
from apixo_batch.journal.schema import SCHEMA_VERSION
from apixo_batch.outputs.paths import storage_failure

S = JobState
NOW = 1_767_965_610.0
T = TypeVar("T")

_FULL, _NORMAL = 2, 1  # PRAGMA synchronous values


def _job(n: int) -> NewJob:
    text = json.dumps({"prompt": f"a cat, take {n}"}, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n,
        model="veo3-fast",
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n}.mp4",
        cost_usd=0.5,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()  # already closed by AsyncJournal.close in most tests: closing again is safe


@pytest.fixture
async def aj(journal: Journal) -> AsyncIterator[AsyncJournal]:
    a = AsyncJournal(journal)
    yield a
    await a.close()


class _Spy:
    """Records each transaction the journal thread commits: its size and durability."""

    def __init__(self, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[tuple[int, bool]] = []
        real = journal.execute_batch

        def spy(ops: Any, *, durable: bool = True) -> list[Any]:
            self.batches.append((len(ops), durable))
            return real(ops, durable=durable)

        monkeypatch.setattr(journal, "execute_batch", spy)


class _Blocker:
    """An op that holds the journal thread until released, so that what is queued
    meanwhile is drained as one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, j: Journal) -> str:
        self.entered.set()
        self.gate.wait(timeout=30)
        return "released"

    async def hold(self, aj: AsyncJournal) -> asyncio.Future[str]:
        fut = aj.write(self)
        await asyncio.to_thread(self.entered.wait, 30)
        return fut


def _caller(pending: Awaitable[T]) -> asyncio.Task[T]:
    """A task awaiting a journal call, as an engine coroutine would."""

    async def wait() -> T:
        return await pending

    return asyncio.create_task(wait())


def _synchronous(j: Journal) -> int:
    return int(j._db.execute("PRAGMA synchronous").fetchone()[0])


def _complete(i: int) -> Callable[[Journal], None]:
    """A write recording completion sample ``i`` under key "k"."""
    return lambda j: j.record_completion("k", float(i), NOW)


def _completions(j: Journal, key: str = "k") -> list[float]:
    return sorted(j.recent_completions(key))


# -- group commit and ordering --------------------------------------------------


async def test_concurrent_writes_share_few_transactions(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 writes gathered from 200 tasks commit in far fewer transactions than writes."""
    spy = _Spy(journal, monkeypatch)

    async def one(i: int) -> None:
        await aj.write(lambda j: j.record_completion("k", float(i), NOW))

    await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(n for n, _ in spy.batches) == 200
    assert len(spy.batches) < 50
    assert _completions(journal) == [float(i) for i in range(200)]


async def test_writes_queued_behind_a_commit_are_one_transaction(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything queued while the thread is busy is drained and committed at once."""
    spy = _Spy(journal, monkeypatch)
    blocker = _Blocker()
    held = await blocker.hold(aj)
    futs = [aj.write(_complete(i)) for i in range(30)]
    blocker.gate.set()
    assert await held == "released"
    await asyncio.gather(*futs)
    assert spy.batches == [(1, True), (30, True)]


async def test_writes_of_one_loop_turn_reach_an_idle_thread_as_one_transaction(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread is idle; 30 writes made in one loop turn still commit together (the
    turn is handed over when it ends, not op by op), and a later turn is its own."""
    spy = _Spy(journal, monkeypatch)
    await asyncio.gather(*[aj.write(_complete(i)) for i in range(30)])
    await aj.write(_complete(30))
    assert spy.batches == [(30, True), (1, True)]
    assert _completions(journal) == [float(i) for i in range(31)]


async def test_commit_delay_lets_writes_of_later_turns_join_the_transaction(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a commit delay, a write whose loss costs nothing, made 10 ms after another
    (another loop turn, the thread already awake), is committed with it, in one
    transaction."""
    spy = _Spy(journal, monkeypatch)
    aj = AsyncJournal(journal, commit_delay=1.0)
    try:
        first = aj.write(_complete(0), durable=False)
        await asyncio.sleep(0.01)
        second = aj.write(_complete(1), durable=False)
        await asyncio.gather(first, second)
        assert await aj.read(_completions) == [0.0, 1.0]
    finally:
        await aj.close()
    assert spy.batches == [(2, False)]


async def test_commit_delay_never_holds_back_a_durable_write(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable write (a task id) is committed at once, alone, however long the delay;
    one handed over while a pass of non-durable writes waits ends that wait, and both
    commit together, durably."""
    spy = _Spy(journal, monkeypatch)
    aj = AsyncJournal(journal, commit_delay=60.0)
    try:
        await asyncio.wait_for(aj.write(_complete(0)), timeout=10)
        lazy = aj.write(_complete(1), durable=False)
        await asyncio.sleep(0.05)  # the thread now waits with that write alone
        urgent = aj.write(_complete(2))
        await asyncio.wait_for(asyncio.gather(lazy, urgent), timeout=10)
    finally:
        await asyncio.wait_for(aj.close(), timeout=10)
    assert spy.batches == [(1, True), (2, True)]


async def test_commit_delay_never_holds_back_a_read_or_the_close(journal: Journal) -> None:
    """A pass that starts with a read goes at once (a write queued in the same turn goes
    with it); a read or the close queued while a pass of writes waits ends the wait."""
    aj = AsyncJournal(journal, commit_delay=60.0)
    try:
        aj.write(_complete(0), durable=False)
        assert await asyncio.wait_for(aj.read(_completions), timeout=10) == [0.0]
        aj.write(_complete(1), durable=False)
        await asyncio.sleep(0.05)  # the thread now waits with that write alone
        assert await asyncio.wait_for(aj.read(_completions), timeout=10) == [0.0, 1.0]
        aj.write(_complete(2), durable=False)
        await asyncio.sleep(0.05)
    finally:
        await asyncio.wait_for(aj.close(), timeout=10)
    again = Journal(journal.path)
    try:
        assert _completions(again) == [0.0, 1.0, 2.0]
    finally:
        again.close()


async def test_commit_delay_never_holds_a_read_queued_during_a_busy_pass(
    journal: Journal,
) -> None:
    """The thread is busy; a turn of writes and then a turn with a read are handed
    over meanwhile. The next pass finds both queued: it goes at once, read included."""
    aj = AsyncJournal(journal, commit_delay=60.0)
    blocker = _Blocker()
    try:
        held = aj.read(blocker)  # a read: its own pass does not wait
        await asyncio.to_thread(blocker.entered.wait, 30)
        aj.write(_complete(0), durable=False)
        await asyncio.sleep(0)  # the write's turn is handed over alone
        read = aj.read(_completions)
        await asyncio.sleep(0)
        blocker.gate.set()
        assert await held == "released"
        assert await asyncio.wait_for(read, timeout=10) == [0.0]
    finally:
        await asyncio.wait_for(aj.close(), timeout=10)


async def test_read_queued_after_writes_sees_them_and_order_is_kept(
    journal: Journal, aj: AsyncJournal
) -> None:
    """Ops run in the order they were queued, reads between writes included."""
    order: list[str] = []

    def w(name: str) -> Callable[[Journal], str]:
        def op(j: Journal) -> str:
            order.append(name)
            j.record_completion("k", float(len(order)), NOW)
            return name

        return op

    def r(name: str) -> Callable[[Journal], list[float]]:
        def op(j: Journal) -> list[float]:
            order.append(name)
            return _completions(j)

        return op

    futs: list[asyncio.Future[Any]] = [
        aj.write(w("w1")),
        aj.write(w("w2")),
        aj.read(r("r1")),
        aj.write(w("w3")),
        aj.read(r("r2")),
    ]
    results = await asyncio.gather(*futs)
    assert order == ["w1", "w2", "r1", "w3", "r2"]
    assert results == ["w1", "w2", [1.0, 2.0], "w3", [1.0, 2.0, 4.0]]


async def test_write_and_read_return_results(aj: AsyncJournal) -> None:
    """write() and read() hand back what the op returned."""
    assert await aj.write(lambda j: j.get_meta("schema")) == str(SCHEMA_VERSION)
    assert await aj.read(lambda j: j.totals()["jobs"]) == 0.0
    await aj.write(lambda j: j.sync([_job(1)], NOW))
    await aj.transition("job-1", S.SUBMITTING, NOW)
    assert await aj.read(lambda j: j.counts()) == {"submitting": 1}


# -- errors ---------------------------------------------------------------------


async def test_failing_op_in_a_shared_transaction_fails_alone(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one transaction, the op that raises gets its exception; the rest commit."""
    journal.sync([_job(i) for i in range(5)], NOW)
    spy = _Spy(journal, monkeypatch)
    blocker = _Blocker()
    held = await blocker.hold(aj)

    def half_then_fail(j: Journal) -> None:
        j.record_completion("bad", 1.0, NOW)  # undone by the op's savepoint
        raise ValueError("boom")

    futs = [aj.transition(f"job-{i}", S.SUBMITTING, NOW) for i in range(5)]
    futs.insert(2, aj.write(half_then_fail))
    futs.insert(4, aj.transition("job-0", S.DONE, NOW))  # illegal: job-0 is submitting
    blocker.gate.set()
    await held
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert spy.batches[-1] == (7, True)
    assert [type(x).__name__ for x in results] == [
        "NoneType",
        "NoneType",
        "ValueError",
        "NoneType",
        "JournalError",
        "NoneType",
        "NoneType",
    ]
    assert str(results[4]) == "job 'job-0': illegal state change submitting -> done"
    assert journal.counts() == {"submitting": 5}
    assert journal.recent_completions("bad") == []


async def test_a_batch_that_succeeds_runs_no_savepoints(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Savepoints are only for a batch in which an op fails: 20 good writes are
    BEGIN, 20 statements, COMMIT."""
    spy = _Spy(journal, monkeypatch)
    statements: list[str] = []
    await aj.read(lambda j: j._db.set_trace_callback(statements.append))
    await asyncio.gather(*[aj.write(_complete(i)) for i in range(20)])
    await aj.read(lambda j: j._db.set_trace_callback(None))
    assert spy.batches == [(20, True)]
    assert not [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]
    assert sum(1 for s in statements if s.startswith("INSERT INTO completions")) == 20
    assert statements.count("COMMIT") == 1
    assert _completions(journal) == [float(i) for i in range(20)]


async def test_a_failing_op_reruns_the_good_ones_once_each(
    journal: Journal, aj: AsyncJournal
) -> None:
    """After a failure the batch is rolled back and rerun with savepoints: every good op's
    effect is committed exactly once (no doubles from the first try)."""
    futs = [aj.write(_complete(i)) for i in range(3)]

    def fail(j: Journal) -> None:
        raise ValueError("boom")

    futs.append(aj.write(fail))
    futs += [aj.write(_complete(i)) for i in range(3, 6)]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert [type(x).__name__ for x in results] == ["NoneType"] * 3 + ["ValueError"] + [
        "NoneType"
    ] * 3
    assert _completions(journal) == [float(i) for i in range(6)]


async def test_single_failing_op_commits_nothing_and_journal_goes_on(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone op runs without a savepoint; when it raises, nothing of it is committed."""
    spy = _Spy(journal, monkeypatch)
    statements: list[str] = []
    await aj.read(lambda j: j._db.set_trace_callback(statements.append))

    def half_then_fail(j: Journal) -> None:
        j.record_completion("k", 1.0, NOW)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await aj.write(half_then_fail)
    await aj.read(lambda j: j._db.set_trace_callback(None))
    assert spy.batches == [(1, True)]
    assert not [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]
    assert "ROLLBACK" in statements
    assert journal.recent_completions("k") == []
    await aj.write(lambda j: j.record_completion("k", 2.0, NOW))
    assert journal.recent_completions("k") == [2.0]


async def test_failing_commit_fails_every_op_of_the_transaction(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If COMMIT fails, each op of that transaction gets the error; the next one works."""
    blocker = _Blocker()
    held = await blocker.hold(aj)
    real_commit = journal._commit
    calls = 0

    def failing_commit() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the blocker's commit is the first
            journal._rollback()
            raise sqlite3.OperationalError("disk I/O error")
        real_commit()

    monkeypatch.setattr(journal, "_commit", failing_commit)
    futs = [aj.write(_complete(i)) for i in range(3)]
    blocker.gate.set()
    await held
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert all(isinstance(x, sqlite3.OperationalError) for x in results)
    assert journal.recent_completions("k") == []
    await aj.write(lambda j: j.record_completion("k", 9.0, NOW))
    assert journal.recent_completions("k") == [9.0]


class _ThreadKiller(BaseException):
    """Not an Exception: escapes every per-op handler, as a bug in the thread would."""


@pytest.mark.timeout(20)
async def test_dead_thread_fails_pending_and_later_callers(tmp_path: Path) -> None:
    """The thread dies: the ops it held and those still queued fail, later calls raise,
    and the journal's lock is freed."""
    journal = Journal(tmp_path / "state.db")
    aj = AsyncJournal(journal, max_drain=2)  # some ops stay queued at the death
    blocker = _Blocker()
    held = await blocker.hold(aj)

    def kill(j: Journal) -> None:
        raise _ThreadKiller

    drained = aj.write(kill)
    queued = [aj.write(lambda j: j.get_meta("schema")) for _ in range(5)]
    reading = aj.read(lambda j: j.get_meta("schema"))
    blocker.gate.set()
    assert await held == "released"
    results = await asyncio.gather(drained, *queued, reading, return_exceptions=True)
    assert all(isinstance(x, JournalError) for x in results), results
    assert all("journal thread stopped unexpectedly" in str(x) for x in results)
    assert isinstance(results[0], JournalError)
    assert isinstance(results[0].__cause__, _ThreadKiller)
    with pytest.raises(JournalError, match="stopped unexpectedly"):
        aj.write(lambda j: None)
    with pytest.raises(JournalError, match="stopped unexpectedly"):
        await aj.read(lambda j: None)
    with pytest.raises(JournalError, match="stopped unexpectedly"):
        await aj.close()
    again = Journal(tmp_path / "state.db")  # the lock was released
    again.close()


@pytest.mark.timeout(20)
async def test_ops_of_the_turn_in_which_the_thread_dies_fail_rather_than_hang(
    tmp_path: Path,
) -> None:
    """Writes made in the loop turn during which the thread dies are failed when that
    turn is handed over: nobody is left to run them, and nobody waits forever."""
    journal = Journal(tmp_path / "state.db")
    aj = AsyncJournal(journal)
    blocker = _Blocker()
    held = await blocker.hold(aj)

    def kill(j: Journal) -> None:
        raise _ThreadKiller

    killing = aj.write(kill)
    await asyncio.sleep(0)  # that turn is handed over: the kill is queued
    late = aj.write(lambda j: j.get_meta("schema"))  # still in this turn
    blocker.gate.set()
    aj._thread.join(timeout=10)  # the thread dies while `late` waits for the turn's end
    assert not aj._thread.is_alive()
    results = await asyncio.gather(held, killing, late, return_exceptions=True)
    assert results[0] == "released"
    assert all(isinstance(x, JournalError) for x in results[1:]), results
    Journal(tmp_path / "state.db").close()  # the lock was released


@pytest.mark.timeout(20)
async def test_dead_thread_fails_a_pending_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close waiting on a thread that dies gets an exception rather than hanging."""
    aj = AsyncJournal(Journal(tmp_path / "state.db"))
    blocker = _Blocker()
    held = await blocker.hold(aj)

    def broken(batch: Any) -> bool:
        raise RuntimeError("bug in the journal thread")

    # The blocker's pass is already running; the thread dies on its next pass.
    monkeypatch.setattr(aj, "_process", broken)
    closing = _caller(aj.close())
    await asyncio.sleep(0)  # the close is queued
    blocker.gate.set()
    assert await held == "released"
    with pytest.raises(JournalError, match="stopped unexpectedly") as err:
        await closing
    assert isinstance(err.value.__cause__, RuntimeError)
    Journal(tmp_path / "state.db").close()  # the lock was released


# -- cancellation -----------------------------------------------------------------


async def test_cancelled_caller_still_commits(journal: Journal, aj: AsyncJournal) -> None:
    """Cancelling the task awaiting a write does not stop the write."""
    journal.sync([_job(1)], NOW)
    journal.transition("job-1", S.SUBMITTING, NOW)
    blocker = _Blocker()
    held = await blocker.hold(aj)
    caller = _caller(aj.transition("job-1", S.SUBMITTED, NOW, task_id="t-1"))
    await asyncio.sleep(0)  # the caller runs: its write is queued, it awaits
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    blocker.gate.set()
    await held
    row = await aj.read(lambda j: j.get("job-1"))
    assert row is not None
    assert (row.state, row.task_id) == (S.SUBMITTED, "t-1")
    assert journal.totals()["spent_known_usd"] == 0.5  # its task_history row too


async def test_cancelled_future_still_commits(journal: Journal, aj: AsyncJournal) -> None:
    """The op is queued when write() is called: even cancelling its future right away
    leaves it to run and commit."""
    fut = aj.write(lambda j: j.record_completion("k", 1.0, NOW))
    fut.cancel()
    assert await aj.read(_completions) == [1.0]


# -- reads cannot write -----------------------------------------------------------


@pytest.fixture(params=["thread", "inline"])
async def executor(request: pytest.FixtureRequest, journal: Journal) -> AsyncIterator[Any]:
    """Each way of running journal operations: on its thread, or inline (tests)."""
    ex = AsyncJournal(journal) if request.param == "thread" else InlineJournal(journal)
    yield ex
    await ex.close()


async def test_a_read_that_tries_to_write_fails_and_leaves_nothing(
    journal: Journal, executor: AsyncJournal | InlineJournal
) -> None:
    """A read runs where the journal refuses writes: one that writes, or opens a
    transaction, fails with a JournalError (not taken for a read-only disk), keeps
    nothing; the journal goes on reading and writing."""
    writes: list[Callable[[Journal], object]] = [
        lambda j: j.record_completion("k", 1.0, NOW),
        lambda j: j.learned_completions(),  # prunes in a transaction
        lambda j: j.sync([_job(1)], NOW),
    ]
    for write in writes:
        with pytest.raises(JournalError, match=r"a read of the journal .* tried to write") as err:
            await executor.read(write)
        assert storage_failure(err.value) is None
    assert await executor.read(_completions) == []
    assert await executor.read(lambda j: j.counts()) == {}
    await executor.write(_complete(2))
    assert await executor.read(_completions) == [2.0]


async def test_an_op_written_alone_runs_once_though_a_batch_mate_fails(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write ``alone`` is a transaction of its own: an op that consumes an iterator is
    not run again when another op of the same pass fails (ops that share a transaction
    are, and would find the iterator empty)."""
    spy = _Spy(journal, monkeypatch)
    blocker = _Blocker()
    held = await blocker.hold(aj)

    def fail(j: Journal) -> None:
        raise ValueError("boom")

    jobs = (_job(i) for i in range(3))
    futs = [
        aj.write(fail),
        aj.write(lambda j: j.sync(jobs, NOW), alone=True),
        aj.write(_complete(1)),
        aj.write(fail),
    ]
    blocker.gate.set()
    await held
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert isinstance(results[3], ValueError)
    synced = results[1]
    assert isinstance(synced, SyncResult)
    assert synced.added == 3
    assert journal.counts() == {"queued": 3}
    assert spy.batches == [(1, True), (1, True), (1, True), (2, True)]


# -- durability -------------------------------------------------------------------


async def test_non_durable_batch_commits_with_synchronous_normal(
    journal: Journal, aj: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only durable=False ops: NORMAL; one durable op in the batch: FULL."""
    journal.sync([_job(i) for i in range(3)], NOW)
    spy = _Spy(journal, monkeypatch)
    assert await aj.write(_synchronous, durable=False) == _NORMAL
    assert await aj.write(_synchronous) == _FULL

    blocker = _Blocker()
    held = await blocker.hold(aj)
    lazy = [aj.write(_synchronous, durable=False) for _ in range(3)]
    blocker.gate.set()
    await held
    assert await asyncio.gather(*lazy) == [_NORMAL] * 3

    held = await (blocker := _Blocker()).hold(aj)
    mixed: list[Awaitable[int | None]] = [
        aj.write(_synchronous, durable=False),
        aj.transition("job-0", S.SUBMITTING, NOW, durable=False),
        aj.write(_synchronous, durable=True),
    ]
    blocker.gate.set()
    await held
    assert await asyncio.gather(*mixed) == [_FULL, None, _FULL]
    await aj.write(_synchronous, durable=False)
    assert spy.batches == [
        (1, False),
        (1, True),
        (1, True),
        (3, False),
        (1, True),
        (3, True),
        (1, False),
    ]


async def test_synchronous_pragma_is_set_only_on_a_change(
    journal: Journal, aj: AsyncJournal
) -> None:
    """Consecutive commits of the same kind issue no PRAGMA."""
    statements: list[str] = []
    await aj.read(lambda j: j._db.set_trace_callback(statements.append))
    for durable in (False, False, True, True, False):
        await aj.write(lambda j: j.record_completion("k", 1.0, NOW), durable=durable)
    await aj.read(lambda j: j._db.set_trace_callback(None))
    pragmas = [s for s in statements if s.startswith("PRAGMA synchronous")]
    assert pragmas == [
        "PRAGMA synchronous=NORMAL",
        "PRAGMA synchronous=FULL",
        "PRAGMA synchronous=NORMAL",
    ]


# -- close ------------------------------------------------------------------------


async def test_close_drains_queued_writes_and_frees_the_lock(tmp_path: Path) -> None:
    """close() runs everything queued before it, closes the journal, and later calls raise."""
    aj = AsyncJournal(Journal(tmp_path / "state.db"))
    futs = [aj.write(_complete(i)) for i in range(50)]
    await aj.close()
    assert all(f.done() and f.result() is None for f in futs)
    again = Journal(tmp_path / "state.db")
    try:
        assert _completions(again) == [float(i) for i in range(50)]
    finally:
        again.close()
    with pytest.raises(JournalError, match="is closed"):
        aj.write(lambda j: None)
    with pytest.raises(JournalError, match="is closed"):
        aj.transition("job-1", S.SUBMITTING, NOW)
    with pytest.raises(JournalError, match="is closed"):
        await aj.read(lambda j: None)
    await aj.close()  # closing again: nothing to do


async def test_concurrent_closes_all_return(tmp_path: Path) -> None:
    """Two callers closing at once both wait for the end; one sentinel is queued."""
    aj = AsyncJournal(Journal(tmp_path / "state.db"))
    fut = aj.write(lambda j: j.record_completion("k", 1.0, NOW))
    await asyncio.gather(aj.close(), aj.close())
    assert fut.result() is None
    assert not aj._thread.is_alive()


def test_results_for_a_closed_loop_are_dropped_not_fatal(tmp_path: Path) -> None:
    """A loop closed while its op runs: the op still commits, the thread carries on."""
    journal = Journal(tmp_path / "state.db")
    aj = AsyncJournal(journal)
    blocker = _Blocker()

    async def start() -> asyncio.Future[str]:
        fut = aj.write(blocker)
        aj.write(lambda j: j.record_completion("k", 1.0, NOW))
        return fut

    first = asyncio.new_event_loop()
    first.run_until_complete(start())
    first.close()
    blocker.gate.set()

    async def finish() -> list[float]:
        try:
            return await aj.read(_completions)
        finally:
            await aj.close()

    assert asyncio.run(finish()) == [1.0]
