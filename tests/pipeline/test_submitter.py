"""The submitter alone, on a FakeClock: a fake API, an in-memory ledger, driven until idle."""

from __future__ import annotations

import anyio
import pytest
from stagefakes import FakeApi, Recorder, drive, memory_ledger, new_job, queued_rows, row

from apixo_batch.apixo.limits import ConcurrencyLimit
from apixo_batch.clock import FakeClock
from apixo_batch.errors import AuthError, InvalidRequest, ServerError, TransportError
from apixo_batch.journal import JobState, Ledger
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
    stops = stops or Stops()
    events = Recorder()
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
    stops = Stops()
    _, got, events, slots = await _run(api, ledger, clock, 4, stops)
    assert stops.reached(Level.SUBMITS) and stops.fatal is not None
    assert [s.kind for s in stops.all] == [StopKind.FATAL]
    assert len(events.of("stopped")) == 1
    # Submits already on the wire when the refusal came are answered and journaled.
    assert {r.id for r in queued_rows(ledger)} | {s.row.id for s in got} == {
        f"job-{i}" for i in range(4)
    }
    for r in queued_rows(ledger):
        assert not r.possibly_duplicated
    assert slots.in_flight == len(got)


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
