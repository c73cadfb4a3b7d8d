"""Issue 30: a paid task id the journal refused is kept in its side file by the submitter,
and the next run's start-up adopts it (followed, never submitted again)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from stagefakes import FakeApi, Recorder, drive, new_job, queued_rows

from apixo_batch.apixo.limits import ConcurrencyLimit
from apixo_batch.clock import FakeClock
from apixo_batch.journal import InlineJournal, JobState, Journal, Ledger, SqliteLedger
from apixo_batch.journal.unrecorded import SideFile
from apixo_batch.pipeline.admission import Admitted, Permit
from apixo_batch.pipeline.adoption import adopt_unrecorded
from apixo_batch.pipeline.stop import Stops
from apixo_batch.pipeline.submitter import Submitted, Submitter
from apixo_batch.retry import Backoff

pytestmark = pytest.mark.looptime

S = JobState
FAST = Backoff(base=1.0, cap=4.0, max_attempts=3, jitter=0.0)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    j.sync([new_job(i) for i in range(3)], 1000.0)
    yield j
    j.close()


def _ledger(journal: Journal, clock: FakeClock) -> Ledger:
    return SqliteLedger(InlineJournal(journal), clock)


async def test_a_refused_id_is_kept_in_the_side_file_and_the_warning_says_where(
    journal: Journal,
) -> None:
    clock = FakeClock()
    ledger = _ledger(journal, clock)

    def refused(*args: object) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(sqlite3.OperationalError("database or disk is full"))
        return fut

    ledger.record_task_id = refused  # type: ignore[method-assign]
    events = Recorder()
    slots = ConcurrencyLimit(10)
    submitter = Submitter(
        FakeApi(clock),  # type: ignore[arg-type]
        ledger,
        clock=clock,
        stops=Stops(events.emitter(clock)),
        emit=events.emitter(clock),
        backoff=FAST,
        callback_url=None,
    )
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    await slots.acquire()
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()
    await drive(clock, submitter.run(admitted_rx, out_tx))
    out_rx.close()
    [warning] = events.of("warning")
    side = SideFile(journal.path)
    [kept] = side.read()
    assert (kept.job_id, kept.task_id) == ("job-0", warning.data["task_id"])
    assert kept.request_type == "async"
    message = warning.data["message"]
    assert f"kept in {side.path}: the next run follows it" in message
    assert "keep this line" not in message


async def test_start_up_adopts_the_kept_ids_then_removes_the_side_file(
    journal: Journal,
) -> None:
    clock = FakeClock()
    ledger = _ledger(journal, clock)
    journal.transition("job-0", S.SUBMITTING, 1000.0)  # its id refused: left submitting
    journal.transition("job-2", S.SUBMITTING, 1000.0)
    journal.transition("job-2", S.SUBMITTED, 1000.0, task_id="task-c")
    side = SideFile(journal.path)
    side.keep("job-0", "task-a", "async", 1000.0)
    side.keep("job-0", "task-a", "async", 1000.0)  # kept twice: adopted once
    side.keep("job-2", "task-z", "async", 1000.0)  # another task already: refused, told
    events = Recorder()
    adopted = await adopt_unrecorded(ledger, events.emitter(clock), reserve=False)
    assert adopted == 1
    row = journal.get("job-0")
    assert row is not None and row.state is S.SUBMITTED and row.task_id == "task-a"
    assert [r.id for r in await ledger.in_flight()] == ["job-0", "job-2"]
    warnings = [e.data["message"] for e in events.of("warning")]
    assert any("task-z" in w and "already has task task-c" in w for w in warnings)
    assert any("1 paid task(s)" in w for w in warnings)
    assert not side.path.exists()
    # Idempotent: a second start-up finds nothing to adopt and no file.
    assert await adopt_unrecorded(ledger, events.emitter(clock), reserve=False) == 0


async def test_a_run_that_submits_reserves_the_side_file_at_start_up(journal: Journal) -> None:
    clock = FakeClock()
    side = SideFile(journal.path)
    side.keep("job-1", "task-b", "callback", 1000.0)
    await adopt_unrecorded(_ledger(journal, clock), Recorder().emitter(clock), reserve=True)
    row = journal.get("job-1")
    assert row is not None and row.task_id == "task-b" and row.request_type == "callback"
    assert side.path.exists() and side.empty() and side.read() == []


async def test_a_journal_still_full_keeps_the_side_file_for_the_next_run(
    journal: Journal,
) -> None:
    clock = FakeClock()
    ledger = _ledger(journal, clock)
    side = SideFile(journal.path)
    side.keep("job-1", "task-b", "async", 1000.0)

    def refused(*args: object) -> asyncio.Future[bool]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(sqlite3.OperationalError("database or disk is full"))
        return fut

    ledger.adopt = refused  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        await adopt_unrecorded(ledger, Recorder().emitter(clock), reserve=True)
    assert [k.task_id for k in side.read()] == ["task-b"]
