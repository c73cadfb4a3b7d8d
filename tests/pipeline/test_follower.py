"""The follower alone, on a FakeClock: tasks at a fake API, journaled, polled to their end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from stagefakes import FakeApi, Recorder, drive, memory_ledger, new_job, row, submitted_row

from apixo_batch.apixo.client import TaskStatus
from apixo_batch.apixo.limits import ConcurrencyLimit
from apixo_batch.clock import FakeClock
from apixo_batch.errors import AuthError, Forbidden
from apixo_batch.journal import JobRow, JobState, Ledger
from apixo_batch.pipeline.admission import Permit
from apixo_batch.pipeline.follower import EARLY_CALLBACK_WAIT_S, Follower
from apixo_batch.pipeline.lander import Fetch
from apixo_batch.pipeline.stop import Level, StopKind, Stops
from apixo_batch.pipeline.submitter import Submitted
from apixo_batch.pipeline.turnaround import Turnaround
from apixo_batch.planning.completion import CompletionModel
from apixo_batch.retry import Patience

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime


def _follower(
    api: FakeApi,
    ledger: Ledger,
    clock: FakeClock,
    slots: ConcurrencyLimit,
    *,
    max_wait_min: float = 30.0,
    under_way: Callable[[], int] = lambda: 0,
    turnaround: Turnaround | None = None,
) -> tuple[Follower, Stops, Recorder]:
    stops = Stops()
    events = Recorder()
    follower = Follower(
        api,  # type: ignore[arg-type]
        ledger,
        clock=clock,
        stops=stops,
        emit=events.emitter(clock),
        slots=slots,
        completions=CompletionModel(),
        time_scale=1.0,
        patience=Patience.minutes(max_wait_min),
        submits=_UnderWay(under_way),
        turnaround=turnaround,
    )
    return follower, stops, events


class _UnderWay:
    """The submitter as the follower sees it: how many submits are under way."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    @property
    def under_way(self) -> int:
        return self._count()


async def _task(api: FakeApi, ledger: Ledger, job_id: str, request_type: str = "async") -> JobRow:
    """A task created at the fake API for ``job_id``, journaled ``submitted`` with its id."""
    queued = row(ledger, job_id)
    task_id = await api.submit(queued.model, queued.input)
    return await submitted_row(ledger, job_id, task_id, request_type=request_type)


async def _handed(slots: ConcurrencyLimit, r: JobRow, clock: FakeClock) -> Submitted:
    """``r`` as the submitter hands it on: with a permit of its own."""
    await slots.acquire()
    return Submitted(r, Permit(slots), clock.monotonic())


async def _follow(
    follower: Follower, clock: FakeClock, items: list[Submitted]
) -> tuple[list[Fetch], float]:
    """Feed ``items`` (the input then closes), run the follower to its end: its output and
    the fake seconds it took."""
    tx, rx = anyio.create_memory_object_stream[Submitted](len(items))
    out_tx, out_rx = anyio.create_memory_object_stream[Fetch](100)
    for item in items:
        tx.send_nowait(item)
    tx.close()
    started = clock.monotonic()
    with out_rx:
        await drive(clock, follower.run(rx, out_tx))
        return [f async for f in out_rx], clock.monotonic() - started


def _streams() -> tuple[
    MemoryObjectSendStream[Submitted],
    MemoryObjectReceiveStream[Submitted],
    MemoryObjectSendStream[Fetch],
    MemoryObjectReceiveStream[Fetch],
]:
    tx, rx = anyio.create_memory_object_stream[Submitted](10)
    out_tx, out_rx = anyio.create_memory_object_stream[Fetch](10)
    return tx, rx, out_tx, out_rx


async def _callback_after_25s(
    follower: Follower,
    slots: ConcurrencyLimit,
    r: JobRow,
    clock: FakeClock,
    then: Callable[[asyncio.TaskGroup], Awaitable[None]],
) -> list[str]:
    """Follow ``r`` (its task ends at 20 s), then at 25 s run ``then`` (which delivers the
    callback) beside the follower; returns the job ids handed to the lander."""
    tx, rx, out_tx, out_rx = _streams()

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follower.run(rx, out_tx))
            with tx:
                await tx.send(await _handed(slots, r, clock))
                await clock.sleep(25.0)
                await then(tg)

    with out_rx:
        await drive(clock, main())
        return [f.id async for f in out_rx]


async def test_a_task_is_polled_until_it_succeeds_then_handed_to_the_lander() -> None:
    """Processing, then success: journaled with its URLs, its slot free, one Fetch out; the
    follower returns once its input has closed and nothing is followed."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=70.0)
    slots = ConcurrencyLimit(5)
    follower, stops, events = _follower(api, ledger, clock, slots)
    r = await _task(api, ledger, "job-0")
    fetches, took = await _follow(follower, clock, [await _handed(slots, r, clock)])
    assert api.polls >= 2  # the first poll (at 50 s) found it processing
    assert 70.0 <= took < 80.0
    stored = row(ledger, "job-0")
    url = f"http://127.0.0.1:9/files/{r.task_id}/0.mp4"
    assert (stored.state, stored.result_urls, stored.arrived_via) == (
        JobState.SUCCEEDED,
        (url,),
        "poll",
    )
    assert fetches == [Fetch("job-0", r.model, r.filename, (url,), fresh=True, task_id=r.task_id)]
    assert slots.in_flight == 0 and follower.tracked == 0
    assert len(events.of("running")) == 1 and len(events.of("succeeded")) == 1
    assert stops.all == []


async def test_a_failed_task_is_journaled_failed_and_frees_its_slot() -> None:
    """The API's failure is the job's: journaled with its code, no Fetch, slot released."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0, prompt="forbidden fox"), new_job(1)])
    api = FakeApi(clock)
    slots = ConcurrencyLimit(5)
    follower, _, events = _follower(api, ledger, clock, slots)
    items = [await _handed(slots, await _task(api, ledger, f"job-{i}"), clock) for i in (0, 1)]
    fetches, _ = await _follow(follower, clock, items)
    failed = row(ledger, "job-0")
    assert (failed.state, failed.fail_code, failed.fail_msg) == (
        JobState.FAILED,
        "NSFW",
        "rejected",
    )
    assert [f.id for f in fetches] == ["job-1"]
    assert [e.job_id for e in events.of("failed")] == ["job-0"]
    assert slots.in_flight == 0


async def test_a_403_to_a_poll_names_the_status_route() -> None:
    """A 403 to a poll: a KEY_REFUSED stop whose reason names the status route of the model."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    refusal = Forbidden(403, "API key lacks permission", endpoint="status")
    api = FakeApi(clock, duration=10_000.0, status_faults=[refusal])
    slots = ConcurrencyLimit(5)
    follower, stops, _ = _follower(api, ledger, clock, slots)
    await _follow(follower, clock, [await _handed(slots, await _task(api, ledger, "job-0"), clock)])
    [stop] = stops.all
    assert stop.kind is StopKind.KEY_REFUSED
    assert stop.reason == (
        "the API refused a poll: this key has no access to GET /statusTask/kling-2-6 "
        "(APIXO 403 (status): API key lacks permission)"
    )


async def test_a_failed_event_says_what_its_documented_code_means() -> None:
    """The failed event carries the fail code's class from the catalog (NSFW: content);
    a code no page documents gets none."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0, prompt="forbidden fox")])
    api = FakeApi(clock)
    slots = ConcurrencyLimit(5)
    follower, _, events = _follower(api, ledger, clock, slots)
    await _follow(follower, clock, [await _handed(slots, await _task(api, ledger, "job-0"), clock)])
    [failed] = events.of("failed")
    assert failed.data["fail_code"] == "NSFW" and failed.data["fail_class"] == "content"


async def test_a_task_past_max_wait_is_left_pending_with_its_slot_stranded() -> None:
    """Still running after --max-wait: a "pending" event, still `submitted`, slot stranded."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=10_000.0)
    slots = ConcurrencyLimit(5)
    follower, stops, events = _follower(api, ledger, clock, slots, max_wait_min=1.0)
    r = await _task(api, ledger, "job-0")
    fetches, took = await _follow(follower, clock, [await _handed(slots, r, clock)])
    assert 60.0 < took < 70.0  # given up at the first poll past the minute
    [pending] = events.of("pending")
    assert (pending.job_id, pending.data["task_id"]) == ("job-0", r.task_id)
    assert row(ledger, "job-0").state is JobState.SUBMITTED
    stats = slots.statistics()
    assert (stats.in_flight, stats.stranded) == (1, 1)
    assert fetches == [] and stops.all == [] and follower.tracked == 0


async def test_a_refused_key_stops_following_at_once() -> None:
    """A 401 to a poll: a KEY_REFUSED stop; the follower returns without its tasks' end."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    api = FakeApi(clock, duration=10_000.0, status_faults=[AuthError(401, "bad key")])
    slots = ConcurrencyLimit(5)
    follower, stops, events = _follower(api, ledger, clock, slots)
    items = []
    for i in range(3):  # submitted 10 s apart: first polls due at 50, 60 and 70 s
        items.append(await _handed(slots, await _task(api, ledger, f"job-{i}"), clock))
        await clock.advance(10.0)
    fetches, took = await _follow(follower, clock, items)
    assert took < 30.0  # at the first poll (50 s after the first submit), not the tasks' end
    assert [s.kind for s in stops.all] == [StopKind.KEY_REFUSED]
    assert stops.reached(Level.FOLLOW) and stops.fatal == "APIXO 401: bad key"
    assert api.polls == 1  # no request after the refusal
    assert fetches == [] and events.of("pending") == []
    for i in range(3):
        assert row(ledger, f"job-{i}").state is JobState.SUBMITTED  # the next run follows them
    assert slots.in_flight == 3


async def test_adopted_tasks_are_followed_and_their_slots_counted() -> None:
    """Tasks of an earlier run: counted in the slots at adoption, released at their end."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(2)])
    api = FakeApi(clock)
    slots = ConcurrencyLimit(1)
    follower, _, _ = _follower(api, ledger, clock, slots)
    follower.adopt([await _task(api, ledger, f"job-{i}") for i in range(2)])
    assert slots.in_flight == 2 and follower.tracked == 2  # past the limit: they run anyway
    fetches, _ = await _follow(follower, clock, [])
    assert sorted(f.id for f in fetches) == ["job-0", "job-1"]
    assert slots.in_flight == 0
    assert {row(ledger, f"job-{i}").state for i in range(2)} == {JobState.SUCCEEDED}


async def test_a_callback_settles_its_task_without_a_poll() -> None:
    """The final callback: journaled via callback, no poll, "accepted"; again: "duplicate"."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    follower, _, events = _follower(api, ledger, clock, slots)
    tx, rx, out_tx, out_rx = _streams()
    r = await _task(api, ledger, "job-0", "callback")
    assert r.task_id is not None

    async def main() -> list[str]:
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(follower.run(rx, out_tx))
            with tx:
                await tx.send(await _handed(slots, r, clock))
                await clock.sleep(10.0)
                answers = [await follower.on_callback(api.answer(r.task_id))]  # processing
                await clock.sleep(15.0)
                done = api.answer(r.task_id)
                answers += [await follower.on_callback(done), await follower.on_callback(done)]
                await clock.sleep(1.0)
                assert follower.tracked == 0 and not running.done()  # its input is open
        return answers

    with out_rx:
        answers = await drive(clock, main())
        fetched = [f.id async for f in out_rx]
    assert answers == ["accepted", "accepted", "duplicate"]
    assert api.polls == 0 and fetched == ["job-0"]
    stored = row(ledger, "job-0")
    assert (stored.state, stored.arrived_via) == (JobState.SUCCEEDED, "callback")
    assert len(events.of("succeeded")) == 1 and slots.in_flight == 0


@pytest.mark.parametrize(
    ("journaled", "submitting"),
    [(False, 1), (True, 1), (True, 0)],
    ids=["id-unknown", "id-journaled", "id-in-the-stream"],
)
async def test_an_early_callback_is_held_until_its_task_arrives(
    journaled: bool, submitting: int
) -> None:
    """A callback before its task reaches the follower (submit under way and its task id
    not yet journaled, or journaled and not yet handed on, or the submit over and its
    task still in the stream) is held; the task's arrival settles it, "accepted"."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    under_way = [submitting]
    follower, _, _ = _follower(api, ledger, clock, slots, under_way=lambda: under_way[0])
    tx, rx, out_tx, out_rx = _streams()
    await ledger.mark_submitting("job-0", 1)  # the submit is on the wire
    task_id = await api.submit("kling-2-6", row(ledger, "job-0").input)
    if journaled:
        await ledger.record_task_id("job-0", task_id, "callback", False)

    async def main() -> str:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follower.run(rx, out_tx))
            with tx:
                await clock.sleep(25.0)  # the task ended before it reached the follower
                callback = tg.create_task(follower.on_callback(api.answer(task_id)))
                await clock.sleep(1.0)
                assert not callback.done()  # held
                if not journaled:
                    await ledger.record_task_id("job-0", task_id, "callback", False)
                await tx.send(await _handed(slots, row(ledger, "job-0"), clock))
                under_way[0] = 0
                arrived = clock.monotonic()
                answer = await callback
                assert clock.monotonic() == arrived  # answered at the task's arrival
        return answer

    with out_rx:
        answer = await drive(clock, main())
        fetched = [f.id async for f in out_rx]
    assert answer == "accepted"
    assert api.polls == 0 and fetched == ["job-0"]
    stored = row(ledger, "job-0")
    assert (stored.state, stored.arrived_via) == (JobState.SUCCEEDED, "callback")
    assert slots.in_flight == 0


async def test_an_early_callback_whose_task_never_comes_is_unknown() -> None:
    """Held for its submit's answer, which does not come: "unknown" after the hold, and
    the task, arriving later, is polled as any other."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    follower, _, _ = _follower(api, ledger, clock, slots, under_way=lambda: 1)
    tx, rx, out_tx, out_rx = _streams()
    await ledger.mark_submitting("job-0", 1)
    task_id = await api.submit("kling-2-6", row(ledger, "job-0").input)

    async def main() -> str:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follower.run(rx, out_tx))
            with tx:
                await clock.sleep(25.0)
                held_at = clock.monotonic()
                answer = await follower.on_callback(api.answer(task_id))
                assert clock.monotonic() - held_at == EARLY_CALLBACK_WAIT_S
                await ledger.record_task_id("job-0", task_id, "async", False)
                await tx.send(await _handed(slots, row(ledger, "job-0"), clock))
        return answer

    with out_rx:
        answer = await drive(clock, main())
        fetched = [f.id async for f in out_rx]
    assert answer == "unknown"
    assert api.polls == 1  # the stale callback settled nothing: a poll did
    assert row(ledger, "job-0").arrived_via == "poll" and fetched == ["job-0"]


async def test_a_callback_for_a_task_nobody_submits_is_unknown_at_once() -> None:
    """No submit under way and no such task in the journal: "unknown", without a wait."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock)
    follower, _, _ = _follower(api, ledger, clock, ConcurrencyLimit(5))
    status = TaskStatus("task-404", "success", result_urls=("http://127.0.0.1:9/x.mp4",))
    before = clock.monotonic()
    assert await drive(clock, follower.on_callback(status)) == "unknown"
    assert clock.monotonic() == before


async def test_a_callback_while_its_task_is_being_settled_is_a_duplicate() -> None:
    """The first callback's hand-over waits for the lander (its slot already free); a
    retry of it meanwhile is a "duplicate", and the task is handed on once."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    follower, _, _ = _follower(api, ledger, clock, slots)
    tx, rx = anyio.create_memory_object_stream[Submitted](1)
    out_tx, out_rx = anyio.create_memory_object_stream[Fetch](0)  # the lander is busy
    r = await _task(api, ledger, "job-0", "callback")
    assert r.task_id is not None
    task_id = r.task_id

    async def main() -> tuple[list[str], list[str]]:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follower.run(rx, out_tx))
            with tx:
                await tx.send(await _handed(slots, r, clock))
                await clock.sleep(25.0)
                done = api.answer(task_id)
                first = tg.create_task(follower.on_callback(done))
                await clock.sleep(1.0)
                assert not first.done() and slots.in_flight == 0
                second = await follower.on_callback(done)
                fetched = [(await out_rx.receive()).id]
                answers = [await first, second]
            fetched += [f.id async for f in out_rx]
        return answers, fetched

    with out_rx:
        answers, fetched = await drive(clock, main())
    assert answers == ["accepted", "duplicate"]
    assert fetched == ["job-0"] and api.polls == 0
    assert row(ledger, "job-0").arrived_via == "callback"


async def test_a_callback_after_the_key_was_refused_is_answered_cleanly() -> None:
    """The key refused and the follower returned (downloads still land): a final callback
    for a task it followed is answered, not turned into an error."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=200.0, status_faults=[AuthError(401, "key revoked")])
    slots = ConcurrencyLimit(5)
    follower, stops, _ = _follower(api, ledger, clock, slots)
    r = await _task(api, ledger, "job-0", "callback")  # its safety-net poll comes at 130 s
    assert r.task_id is not None
    fetches, _ = await _follow(follower, clock, [await _handed(slots, r, clock)])
    assert stops.reached(Level.FOLLOW) and fetches == []
    await clock.advance(100.0)  # the task ends at APIXO, which calls back
    answer = await follower.on_callback(api.answer(r.task_id))
    assert answer in ("accepted", "duplicate")


async def test_a_callback_whose_journal_write_fails_is_settled_by_a_later_poll() -> None:
    """The journal refuses the callback's `succeeded` write (the receiver answers 500): the
    task stays followed, the next poll settles it, and the follower ends."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    follower, _, _ = _follower(api, ledger, clock, slots)
    r = await _task(api, ledger, "job-0", "callback")
    assert r.task_id is not None
    real = ledger.record_success
    calls = [0]

    def failing_once(job_id: str, **kw: Any) -> asyncio.Future[None]:
        calls[0] += 1
        if calls[0] == 1:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(OSError("disk I/O error"))
            return fut
        return real(job_id, **kw)

    ledger.record_success = failing_once  # type: ignore[method-assign]

    async def refused(tg: asyncio.TaskGroup) -> None:
        assert r.task_id is not None
        with pytest.raises(OSError):
            await follower.on_callback(api.answer(r.task_id))

    fetched = await _callback_after_25s(follower, slots, r, clock, refused)
    assert calls[0] == 2 and api.polls >= 1 and fetched == ["job-0"]
    assert row(ledger, "job-0").state is JobState.SUCCEEDED and slots.in_flight == 0


async def test_a_callback_for_a_task_left_pending_is_a_duplicate_at_once() -> None:
    """A task left at --max-wait while submits still run: its callback is not held."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=10_000.0)
    slots = ConcurrencyLimit(5)
    follower, _, _ = _follower(api, ledger, clock, slots, max_wait_min=1.0, under_way=lambda: 1)
    r = await _task(api, ledger, "job-0", "callback")
    assert r.task_id is not None
    tx, rx, out_tx, out_rx = _streams()

    async def main() -> str:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follower.run(rx, out_tx))
            with tx:
                await tx.send(await _handed(slots, r, clock))
                await clock.sleep(600.0)  # past --max-wait: left pending
                assert follower.tracked == 0
                api.tasks[r.task_id].ends_at = clock.monotonic()
                started = clock.monotonic()
                answer = await follower.on_callback(api.answer(r.task_id))
                assert clock.monotonic() == started
        return answer

    with out_rx:
        assert await drive(clock, main()) == "duplicate"


async def test_a_tasks_slot_is_free_before_its_end_is_committed() -> None:
    """The next submit need not wait for the journal: the slot is released as soon as the
    end is known, while the `succeeded` write is still out; the end is told to the
    turnaround recorder at the moment it became known."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    api = FakeApi(clock, duration=20.0)
    slots = ConcurrencyLimit(5)
    turnaround = Turnaround()
    follower, _, _ = _follower(api, ledger, clock, slots, turnaround=turnaround)
    r = await _task(api, ledger, "job-0", "callback")
    assert r.task_id is not None
    real = ledger.record_success
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    in_flight_while_writing: list[int] = []

    def slow_write(job_id: str, **kw: Any) -> asyncio.Future[None]:
        async def later() -> None:
            in_flight_while_writing.append(slots.in_flight)
            await held
            await real(job_id, **kw)

        return asyncio.ensure_future(later())

    ledger.record_success = slow_write  # type: ignore[method-assign]

    async def while_writing(tg: asyncio.TaskGroup) -> None:
        assert r.task_id is not None
        answered = tg.create_task(follower.on_callback(api.answer(r.task_id)))
        await clock.settle()  # the end is known, its write held
        assert slots.in_flight == 0 and not answered.done()
        turnaround.left(clock.monotonic() + 0.25)  # the next submit leaves
        held.set_result(None)
        assert await answered == "accepted"

    assert await _callback_after_25s(follower, slots, r, clock, while_writing) == ["job-0"]
    assert turnaround.statistics().p50 == pytest.approx(0.25)
    assert in_flight_while_writing == [0]
    assert row(ledger, "job-0").state is JobState.SUCCEEDED
