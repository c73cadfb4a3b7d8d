"""The submitter alone, on a FakeClock: a fake API, an in-memory ledger, driven until idle."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from stagefakes import FakeApi, Recorder, drive, memory_ledger, new_job, queued_rows, row

from apixo_batch.apixo.client import Grant
from apixo_batch.apixo.limits import ConcurrencyLimit
from apixo_batch.clock import FakeClock
from apixo_batch.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    JournalError,
    ServerError,
    TransportError,
)
from apixo_batch.journal import JobState, Ledger, MarkRefused
from apixo_batch.pipeline.admission import Admitted, Permit
from apixo_batch.pipeline.stop import Level, Stop, StopKind, Stops
from apixo_batch.pipeline.submitter import Submitted, Submitter
from apixo_batch.retry import Backoff

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime

FAST = Backoff(base=1.0, cap=4.0, max_attempts=3, jitter=0.0)


def _submitter(api: FakeApi, ledger: Ledger, clock: FakeClock, stops: Stops) -> Submitter:
    return Submitter(
        api,  # type: ignore[arg-type]
        ledger,
        clock=clock,
        stops=stops,
        emit=Recorder().emitter(clock),
        backoff=FAST,
        callback_url=None,
    )


async def _run(
    api: FakeApi, ledger: Ledger, clock: FakeClock, n: int, stops: Stops | None = None
) -> tuple[Submitter, list[Submitted], Recorder, ConcurrencyLimit]:
    """Admit the first ``n`` queued jobs, run the submitter to its end, collect its output."""
    events = Recorder()
    stops = stops or Stops(events.emitter(clock))
    slots = ConcurrencyLimit(100)
    submitter = Submitter(
        api,  # type: ignore[arg-type]
        ledger,
        clock=clock,
        stops=stops,
        emit=events.emitter(clock),
        backoff=FAST,
        callback_url=None,
    )
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](n)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](n)
    for r in queued_rows(ledger)[:n]:
        await slots.acquire()
        admitted_tx.send_nowait(Admitted(r, Permit(slots)))
    admitted_tx.close()
    await drive(clock, submitter.run(admitted_rx, out_tx))
    with out_rx:
        got = [item async for item in out_rx]
    return submitter, got, events, slots


async def test_a_task_id_is_journaled_before_it_is_handed_on() -> None:
    """Every job comes out with its task id, which the journal already holds; the output
    stream closes once every submit has ended."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(5)])
    api = FakeApi(clock)
    submitter, got, events, slots = await _run(api, ledger, clock, 5)
    assert [s.row.id for s in got] == [f"job-{i}" for i in range(5)]
    for item in got:
        stored = row(ledger, item.row.id)
        assert (stored.state, stored.task_id) == (JobState.SUBMITTED, item.row.task_id)
        assert not stored.possibly_duplicated
    assert submitter.submitted == 5 and api.submits == 5
    assert len(events.of("submitted")) == 5
    assert slots.in_flight == 5  # the permits travel on to the follower


async def test_a_reset_is_retried_and_flags_the_job_possibly_duplicated() -> None:
    """A connection reset may hide a created task: the retry succeeds, the job is flagged."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[TransportError("submit: reset")])
    submitter, got, events, _ = await _run(api, ledger, clock, 1)
    assert len(got) == 1 and api.submits == 2 and submitter.retries == 1
    assert row(ledger, "job-0").possibly_duplicated
    assert [e.data["call"] for e in events.of("retried")] == ["submit"]


async def test_a_500_is_retried_without_doubt() -> None:
    """A plain 500 created nothing: retried, not flagged."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[ServerError(500, "oops")])
    _, got, _, _ = await _run(api, ledger, clock, 1)
    assert len(got) == 1 and not row(ledger, "job-0").possibly_duplicated


async def test_a_503_is_retried_without_doubt_and_not_before_its_retry_after() -> None:
    """A 503 (temporarily unavailable) created nothing: retried like a 502 but never
    flagged as possibly paid twice, and not sooner than its Retry-After."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[ServerError(503, "busy", retry_after=40.0)])
    started = clock.monotonic()
    _, got, events, _ = await _run(api, ledger, clock, 1)
    assert len(got) == 1 and api.submits == 2
    assert not row(ledger, "job-0").possibly_duplicated
    [retried] = events.of("retried")
    assert retried.data["call"] == "submit"
    assert clock.monotonic() - started >= 40.0


async def test_a_submit_that_keeps_failing_gives_up_and_frees_its_slot() -> None:
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[ServerError(500, "oops")] * 3)
    _, got, events, slots = await _run(api, ledger, clock, 1)
    assert got == [] and slots.in_flight == 0
    assert (row(ledger, "job-0").state, row(ledger, "job-0").fail_code) == (
        JobState.FAILED,
        "SUBMIT_ERROR",
    )
    assert [e.data["fail_code"] for e in events.of("failed")] == ["SUBMIT_ERROR"]


async def test_a_rejected_input_fails_the_job_alone() -> None:
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0), new_job(1)])
    api = FakeApi(clock, submit_faults=[InvalidRequest(400, "prompt too long")])
    _, got, _, slots = await _run(api, ledger, clock, 2)
    assert [s.row.id for s in got] == ["job-1"]
    assert row(ledger, "job-0").fail_code == "INPUT_REJECTED"
    assert slots.in_flight == 1


async def test_a_fatal_answer_stops_submits_and_hands_every_unsent_job_back() -> None:
    """A 401 to the first submit: a FATAL stop, that job back in the queue unflagged, and
    the others never sent."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(4)])
    api = FakeApi(clock, submit_latency=1.0, submit_faults=[AuthError(401, "bad key")])
    told = Recorder()
    stops = Stops(told.emitter(clock))
    _, got, _, slots = await _run(api, ledger, clock, 4, stops)
    assert stops.reached(Level.SUBMITS) and stops.fatal is not None
    assert [s.kind for s in stops.all] == [StopKind.FATAL]
    [stopped] = told.of("stopped")
    assert stopped.data == {
        "reason": "the API refused a submit: APIXO 401: bad key",
        "stop": "fatal",
    }
    # Submits already on the wire when the refusal came are answered and journaled.
    assert {r.id for r in queued_rows(ledger)} | {s.row.id for s in got} == {
        f"job-{i}" for i in range(4)
    }
    for r in queued_rows(ledger):
        assert not r.possibly_duplicated
    assert slots.in_flight == len(got)


async def test_a_403_names_the_route_the_key_has_no_access_to() -> None:
    """A 403 to a submit: the one stop line says which route this key cannot use."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    refusal = Forbidden(403, "Forbidden: API key lacks permission", endpoint="submit")
    api = FakeApi(clock, submit_latency=1.0, submit_faults=[refusal])
    told = Recorder()
    stops = Stops(told.emitter(clock))
    await _run(api, ledger, clock, 3, stops)
    assert [s.kind for s in stops.all] == [StopKind.FATAL]
    [stopped] = told.of("stopped")
    reason = stopped.data["reason"]
    assert reason.startswith(
        "the API refused a submit: this key has no access to POST /generateTask/kling-2-6 "
    )
    assert "APIXO 403 (submit): Forbidden: API key lacks permission" in reason
    assert "\n" not in reason


async def test_a_403_refusing_the_content_fails_that_job_only() -> None:
    """A 403 whose message refuses the content is the job's own: it fails, submits go on."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(2)])
    api = FakeApi(clock, submit_faults=[Forbidden(403, "Content violates policy")])
    stops = Stops()
    _, got, _, _ = await _run(api, ledger, clock, 2, stops)
    assert stops.all == []
    assert [s.row.id for s in got] == ["job-1"]
    assert row(ledger, "job-0").fail_code == "HTTP_403"


async def test_a_stop_before_the_request_leaves_sends_nothing() -> None:
    """Submits stopped while waiting for the bucket: nothing sent, nothing marked."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    api = FakeApi(clock)
    stops = Stops()
    stops.request(Stop(StopKind.FATAL, "refused"))
    _, got, _, slots = await _run(api, ledger, clock, 3, stops)
    assert got == [] and api.submits == 0 and slots.in_flight == 0
    assert len(queued_rows(ledger)) == 3


@pytest.mark.parametrize("latency", [0.0, 2.0])
async def test_drain_waits_for_submits_on_the_wire_within_the_grace(latency: float) -> None:
    """drain(grace) returns once the answers on the wire are journaled, or at the grace."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_latency=latency)
    stops = Stops()
    submitter = _submitter(api, ledger, clock, stops)
    slots = ConcurrencyLimit(1)
    await slots.acquire()
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()

    async def interrupt_then_drain() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(submitter.run, admitted_rx, out_tx)
            await clock.sleep(0.5)
            stops.request(Stop(StopKind.INTERRUPTED, "interrupted"))
            started = clock.monotonic()
            await submitter.drain(5.0)
            assert clock.monotonic() - started <= 5.0

    await drive(clock, interrupt_then_drain())
    stored = row(ledger, "job-0")
    assert stored.state is JobState.SUBMITTED  # the answer on the wire was kept
    with out_rx:
        assert [s.row.id async for s in out_rx] == ["job-0"]


async def test_a_submit_refused_for_the_accounts_slots_waits_for_a_task_to_end() -> None:
    """A 429 for the slots: not re-sent until a task ends (one retry per slot freed), then
    sent once; the request rate is not slowed."""
    from apixo_batch.errors import RateLimited

    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    full = RateLimited(429, "Concurrent task limit exceeded")
    api = FakeApi(clock, submit_faults=[full])
    slots = ConcurrencyLimit(10)
    other = Permit(slots)  # a task of the account's, running
    await slots.acquire()
    other.running()
    submitter = _submitter(api, ledger, clock, Stops())
    await slots.acquire()
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(submitter.run, admitted_rx, out_tx)
            await clock.sleep(30.0)
            assert api.submits == 1  # refused once, then waiting: no re-send
            other.release()  # the other task ends
            await clock.sleep(1.0)
            assert api.submits == 2

    await drive(clock, main())
    with out_rx:
        assert [s.row.id async for s in out_rx] == ["job-0"]
    assert slots.statistics().shrinks == 1 and api.bucket.statistics().episodes == 0


async def test_a_refused_connection_is_retried_without_doubt() -> None:
    """Nothing listened (connection refused): nothing can have been created, so the job
    that is then submitted is not flagged possibly duplicated."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    refused = TransportError("submit: ClientConnectorError: refused", sent=False)
    api = FakeApi(clock, submit_faults=[refused, refused])
    _, got, _, _ = await _run(api, ledger, clock, 1)
    assert len(got) == 1 and api.submits == 3
    assert not row(ledger, "job-0").possibly_duplicated


async def _one_job_in_a_backoff(
    ledger: Ledger, submitter: Submitter, clock: FakeClock, stops: Stops
) -> tuple[Coroutine[Any, Any, None], ConcurrencyLimit, MemoryObjectReceiveStream[Submitted]]:
    """The first queued job admitted; a coroutine that runs the submitter, lets its first
    attempt be answered 503 (marked, then in a one-second backoff) and stops submits."""
    slots = ConcurrencyLimit(1)
    await slots.acquire()
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()

    async def stop_during_the_backoff() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(submitter.run(admitted_rx, out_tx))
            await clock.sleep(0.5)
            stops.request(Stop(StopKind.FATAL, "refused"))

    return stop_during_the_backoff(), slots, out_rx


def _failing_hand_back(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> list[str]:
    handed_back: list[str] = []

    def hand_back(job_id: str, possibly_duplicated: bool) -> asyncio.Future[None]:
        handed_back.append(job_id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(failure)
        return fut

    monkeypatch.setattr(ledger, "hand_back", hand_back)
    return handed_back


async def test_a_hand_back_the_journals_disk_refuses_is_the_storage_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit marked `submitting` and waiting out a backoff when submits stop goes back
    to the queue; the journal's disk refusing that write is told as the storage stop (exit
    74), not dropped with the job silently left `submitting`."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[ServerError(503, "busy")])
    stops = Stops()
    submitter = _submitter(api, ledger, clock, stops)
    handed_back = _failing_hand_back(
        ledger, monkeypatch, sqlite3.OperationalError("database or disk is full")
    )
    run, slots, out_rx = await _one_job_in_a_backoff(ledger, submitter, clock, stops)
    with out_rx:
        await drive(clock, run)
    assert handed_back == ["job-0"] and api.submits == 1
    assert [s.kind for s in stops.all] == [StopKind.FATAL, StopKind.STORAGE]
    [storage] = stops.all[1:]
    assert "journal cannot be written" in storage.reason and "full" in storage.reason
    assert slots.in_flight == 0  # its slot is free all the same


async def test_a_hand_back_the_journal_refuses_otherwise_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any other failure of the hand-back (a refused change: a bug) leaves the submitter,
    in place of the cancel, and ends the run."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, submit_faults=[ServerError(503, "busy")])
    stops = Stops()
    submitter = _submitter(api, ledger, clock, stops)
    refusal = JournalError("job 'job-0': illegal state change submitted -> queued")
    handed_back = _failing_hand_back(ledger, monkeypatch, refusal)
    run, _, out_rx = await _one_job_in_a_backoff(ledger, submitter, clock, stops)
    with out_rx, pytest.raises(ExceptionGroup) as caught:
        await drive(clock, run)
    assert handed_back == ["job-0"]
    assert caught.group_contains(JournalError, match="illegal state change", depth=None)


async def test_a_submit_whose_mark_never_landed_is_left_queued_by_its_hand_back() -> None:
    """Submits stop while a job's `submitting` mark is on its way, and the mark never
    lands: the hand-back finds the job still queued and leaves it so (nothing was sent),
    instead of refusing "queued -> queued"."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock)
    stops = Stops()
    submitter = _submitter(api, ledger, clock, stops)
    marks: list[asyncio.Future[None]] = []

    def mark_submitting(job_id: str, attempts: int) -> asyncio.Future[None]:
        marks.append(asyncio.get_running_loop().create_future())
        return marks[-1]  # on its way: the journal has not answered yet

    ledger.mark_submitting = mark_submitting  # type: ignore[method-assign]
    slots = ConcurrencyLimit(1)
    await slots.acquire()
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()

    async def stop_while_marking() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(submitter.run(admitted_rx, out_tx))
            await clock.sleep(0.5)
            assert len(marks) == 1
            stops.request(Stop(StopKind.FATAL, "refused"))

    with out_rx:
        await drive(clock, stop_while_marking())
    assert api.submits == 0 and row(ledger, "job-0").state is JobState.QUEUED
    assert slots.in_flight == 0


async def test_a_paid_id_whose_commit_fails_after_a_cancel_is_told() -> None:
    """The run is cancelled while a task id's commit is on its way; the commit then fails
    (the journal's disk is full): the warning that names the paid task still comes, as it
    does when the commit fails before any cancel, so that nobody pays for it twice."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock)
    events = Recorder()
    submitter = Submitter(
        api,  # type: ignore[arg-type]
        ledger,
        clock=clock,
        stops=Stops(),
        emit=events.emitter(clock),
        backoff=FAST,
        callback_url=None,
    )
    commits: list[asyncio.Future[None]] = []

    def record_task_id(*args: object) -> asyncio.Future[None]:
        commits.append(asyncio.get_running_loop().create_future())
        return commits[-1]  # on its way: the journal has not answered yet

    ledger.record_task_id = record_task_id  # type: ignore[method-assign]
    slots = ConcurrencyLimit(1)
    await slots.acquire()
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](1)
    admitted_tx.send_nowait(Admitted(queued_rows(ledger)[0], Permit(slots)))
    admitted_tx.close()

    async def cancel_then_fail_the_commit() -> None:
        run = asyncio.ensure_future(submitter.run(admitted_rx, out_tx))
        await clock.sleep(0.5)
        [commit] = commits
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert len(events.of("submitted")) == 1 and events.of("warning") == []
        commit.set_exception(sqlite3.OperationalError("database or disk is full"))
        await clock.settle()  # the commit's callbacks run

    with out_rx:
        await drive(clock, cancel_then_fail_the_commit())
    [submitted] = events.of("submitted")
    [warning] = events.of("warning")
    assert warning.job_id == "job-0" and warning.data["task_id"] == submitted.data["task_id"]
    assert "could not record it" in warning.data["message"]
    assert "database or disk is full" in warning.data["message"]


class _GatedApi(FakeApi):
    """A fake API whose second grant waits for a barrier, and whose first submit is
    answered by the test: a refusal and the next grant can land in one loop turn."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.second_grant = asyncio.Event()
        self.first_answer: asyncio.Future[str] | None = None
        self.granted = 0
        self.unused_grants = 0
        self.stops: Stops | None = None
        self.left_after_stop: list[str] = []

    async def grant(self, priority: int) -> Grant:
        self.granted += 1
        if self.granted == 2:
            await self.second_grant.wait()
        return Grant(probe=False, ticket=self.granted)

    def unused(self, grant: Grant) -> None:
        self.unused_grants += 1

    async def submit(self, model: str, inp: dict[str, Any], **kw: Any) -> str:
        assert self.stops is not None
        if self.stops.reached(Level.SUBMITS):
            self.left_after_stop.append(str(inp.get("prompt")))
        if self.first_answer is None:
            self.first_answer = asyncio.get_running_loop().create_future()
            return await self.first_answer
        return await super().submit(model, inp, grant=kw["grant"])


async def test_a_request_granted_in_the_turn_submits_stop_never_leaves() -> None:
    """The key is refused for one submit in the same loop turn another is granted: the
    granted one looks at the stops in the step that sends it, so nothing leaves after
    submits stopped, and its grant is handed back unspent."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(2)])
    api = _GatedApi(clock)
    events = Recorder()
    stops = api.stops = Stops(events.emitter(clock))
    slots = ConcurrencyLimit(10)
    submitter = _submitter(api, ledger, clock, stops)
    admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](2)
    out_tx, out_rx = anyio.create_memory_object_stream[Submitted](2)
    for r in queued_rows(ledger):
        await slots.acquire()
        admitted_tx.send_nowait(Admitted(r, Permit(slots)))
    admitted_tx.close()
    run = asyncio.create_task(submitter.run(admitted_rx, out_tx))
    await clock.settle()
    assert api.first_answer is not None and api.granted == 2  # one on the wire, one waits
    api.first_answer.set_exception(AuthError(401, "invalid key", endpoint="submit"))
    api.second_grant.set()  # the refusal and the next grant in one turn
    await run
    out_rx.close()
    assert [s.kind for s in stops.all] == [StopKind.FATAL]
    assert api.left_after_stop == []
    assert api.unused_grants == 1
    assert {row(ledger, f"job-{i}").state for i in range(2)} == {JobState.QUEUED}


class _Fenced(MarkRefused):
    retry = True


def _refusing_marks(
    ledger: Ledger, refusals: dict[str, list[MarkRefused]]
) -> list[tuple[str, int]]:
    """``ledger``'s marks refused as a runner's journal refuses them: each job's listed
    refusals first, then the real mark. Returns every mark asked for."""
    real = ledger.mark_submitting
    asked: list[tuple[str, int]] = []

    def mark_submitting(job_id: str, attempts: int) -> asyncio.Future[None]:
        asked.append((job_id, attempts))
        left = refusals.get(job_id)
        if left:
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(left.pop(0))
            return refused
        return real(job_id, attempts)

    ledger.mark_submitting = mark_submitting  # type: ignore[method-assign]
    return asked


async def test_a_row_another_runner_holds_is_skipped_without_sending() -> None:
    """Several runners: a mark refused because the job is another runner's sends nothing
    for it, frees its slot and ends nothing; the other jobs go on."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    api = FakeApi(clock)
    _refusing_marks(ledger, {"job-1": [MarkRefused("job 'job-1' is not this runner's")]})
    _, got, events, slots = await _run(api, ledger, clock, 3)
    assert [s.row.id for s in got] == ["job-0", "job-2"] and api.submits == 2
    assert row(ledger, "job-1").state is JobState.QUEUED
    assert slots.in_flight == 2 and not events.of("stopped")


async def test_a_mark_fenced_while_the_lease_is_not_live_waits_then_sends_once() -> None:
    """Several runners: this runner's lease is not live (the database is away, or a
    renewal is late): the submit sends nothing, waits, and tries the mark again; once it
    lands, the job is sent exactly once."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock)
    fenced = [_Fenced("lease not live"), _Fenced("database away")]
    asked = _refusing_marks(ledger, {"job-0": fenced})
    started = clock.monotonic()
    _, got, _, slots = await _run(api, ledger, clock, 1)
    assert [s.row.id for s in got] == ["job-0"] and api.submits == 1
    assert asked == [("job-0", 1)] * 3
    assert clock.monotonic() - started >= 2 * FAST.delay(1)  # it waited between tries
    assert slots.in_flight == 1


class _LeaseHeld:
    """A runner's lease as the submitter sees it: present (the journal is shared)."""


def _as_runner(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger`` answers as a runner's journal does: it has a lease."""
    monkeypatch.setattr(type(ledger), "runner", property(lambda _self: _LeaseHeld()))


def _remarks_refused(ledger: Ledger, refusals: list[MarkRefused]) -> list[tuple[str, int]]:
    """The first mark lands for real; each later one (a resend's) is refused in turn,
    then answered as a runner's journal answers a row already marked by it."""
    real = ledger.mark_submitting
    asked: list[tuple[str, int]] = []

    def mark_submitting(job_id: str, attempts: int) -> asyncio.Future[None]:
        asked.append((job_id, attempts))
        if len(asked) == 1:
            return real(job_id, attempts)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if refusals:
            done.set_exception(refusals.pop(0))
        else:
            done.set_result(None)
        return done

    ledger.mark_submitting = mark_submitting  # type: ignore[method-assign]
    return asked


async def test_a_runner_resends_nothing_for_a_row_taken_over_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several runners: a submit whose answer was lost is sent again only under a live
    lease, for a row still this runner's. Its row adopted meanwhile (requeued for another
    runner to send), the resend does not leave: one job, one task sent by this runner."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    _as_runner(ledger, monkeypatch)
    api = FakeApi(clock, submit_faults=[TransportError("submit: reset", sent=True)])
    asked = _remarks_refused(ledger, [MarkRefused("job 'job-0' is not this runner's")])
    _, got, _, slots = await _run(api, ledger, clock, 1)
    assert got == [] and api.submits == 1
    assert asked == [("job-0", 1), ("job-0", 1)]
    assert slots.in_flight == 0


async def test_a_runner_resends_only_once_its_lease_is_live_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several runners: the resend of a submit waits while the lease is not live, then
    leaves once (the row still this runner's, still marked with the same attempt)."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    _as_runner(ledger, monkeypatch)
    api = FakeApi(clock, submit_faults=[TransportError("submit: reset", sent=True)])
    asked = _remarks_refused(ledger, [_Fenced("lease not live")])
    _, got, _, _ = await _run(api, ledger, clock, 1)
    assert [s.row.id for s in got] == ["job-0"] and api.submits == 2
    assert asked == [("job-0", 1)] * 3
    assert row(ledger, "job-0").possibly_duplicated
