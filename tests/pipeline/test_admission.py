"""Admission alone, on a FakeClock: queued rows from an in-memory ledger become permits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from stagefakes import Recorder, drive, memory_ledger, new_job

from apixo_batch.apixo.limits import ConcurrencyLimit
from apixo_batch.clock import FakeClock
from apixo_batch.journal import JobRow, JobState, Ledger, NewJob
from apixo_batch.pipeline.admission import (
    Admission,
    Admitted,
    BudgetMeter,
    LimitMeter,
    SlotMeter,
    queued_in_start_order,
    selected,
)
from apixo_batch.pipeline.stop import Level, Stop, StopKind, Stops
from apixo_batch.planning.completion import CompletionModel
from apixo_batch.planning.forecast import (
    expected_generation_s,
    shapes_in_start_order,
    task_shape,
)
from apixo_batch.planning.kind import Kind
from apixo_batch.planning.order import longest_first
from apixo_batch.planning.selection import Selection

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime


class _Rows:
    """The ledger's queued rows, a page of 2 at a time, telling whether it was closed."""

    def __init__(self, ledger: Ledger) -> None:
        self._rows = ledger.rows(JobState.QUEUED, page=2, file_only=True)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[JobRow]:
        return self

    async def __anext__(self) -> JobRow:
        return await anext(self._rows)

    async def aclose(self) -> None:
        self.closed = True
        await self._rows.aclose()  # type: ignore[attr-defined]


def _admission(
    ledger: Ledger,
    clock: FakeClock,
    *,
    slots: ConcurrencyLimit,
    stops: Stops | None = None,
    budget: float | None = None,
    spent: float = 0.0,
) -> tuple[Admission, BudgetMeter, _Rows, Stops, Recorder]:
    """Admission over the ledger's queued rows: the budget meter, then the slots."""
    events = Recorder()
    stops = stops or Stops(events.emitter(clock))
    rows = _Rows(ledger)
    meter = BudgetMeter(budget, spent, events.emitter(clock))
    admission = Admission(
        rows,
        meters=[meter],
        slots=SlotMeter(slots),
        stops=stops,
    )
    return admission, meter, rows, stops, events


def _ready(rx: MemoryObjectReceiveStream[Admitted]) -> list[Admitted]:
    """What admission has sent so far (without waiting)."""
    got: list[Admitted] = []
    while rx.statistics().current_buffer_used:
        got.append(rx.receive_nowait())
    return got


async def _admit_all(admission: Admission, clock: FakeClock, n: int = 20) -> list[Admitted]:
    """Run admission to its end (slots to spare), collect what it admitted."""
    tx, rx = anyio.create_memory_object_stream[Admitted](n)
    with rx:
        await drive(clock, admission.run(tx))
        return [item async for item in rx]


async def test_jobs_come_out_in_file_order_and_wait_at_the_slot_limit() -> None:
    """A permit each, in file order; at the limit admission waits until one is released."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in (3, 0, 4, 1, 2)])
    slots = ConcurrencyLimit(2)
    admission, _, rows, _, _ = _admission(ledger, clock, slots=slots)
    tx, rx = anyio.create_memory_object_stream[Admitted](10)

    async def main() -> list[str]:
        order: list[str] = []
        with rx:
            task = asyncio.ensure_future(admission.run(tx))
            await clock.sleep(1.0)
            first = _ready(rx)
            order += [a.row.id for a in first]
            assert len(first) == 2 and not task.done()
            assert slots.statistics().in_flight == 2 and slots.statistics().waiting == 1
            await clock.sleep(1.0)
            assert _ready(rx) == []  # no permit came back: nothing more is admitted
            first[0].permit.release()
            first[0].permit.release()  # a permit is released once, whatever is asked
            await clock.sleep(1.0)
            third = _ready(rx)
            order += [a.row.id for a in third]
            assert len(third) == 1 and slots.in_flight == 2
            for a in (first[1], third[0]):
                a.permit.release()
            await clock.sleep(1.0)
            rest = _ready(rx)
            order += [a.row.id for a in rest]
            await task
            order += [a.row.id async for a in rx]  # the stream has closed
            for a in rest:
                a.permit.release()
        return order

    assert await drive(clock, main()) == [f"job-{i}" for i in range(5)]
    assert slots.in_flight == 0 and slots.statistics().peak == 2
    assert rows.closed


@pytest.mark.parametrize(
    ("budget", "spent", "admitted"), [(0.3, 0.0, 3), (0.5, 0.2, 3), (0.25, 0.0, 2)]
)
async def test_the_budget_admits_up_to_its_cap_then_stops_admission(
    budget: float, spent: float, admitted: int
) -> None:
    """Jobs fit the cap (spend before counted; a sum that only float rounding takes past the
    cap fits), the others are skipped, then one BUDGET stop and one "stopped" event."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=0.1) for i in range(6)])
    slots = ConcurrencyLimit(10)
    admission, meter, rows, stops, events = _admission(
        ledger, clock, slots=slots, budget=budget, spent=spent
    )
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == [f"job-{i}" for i in range(admitted)]
    assert meter.committed == pytest.approx(spent + 0.1 * admitted)
    assert [s.kind for s in stops.all] == [StopKind.BUDGET]
    assert stops.reached(Level.ADMISSION) and not stops.reached(Level.SUBMITS)
    [stopped] = events.of("stopped")
    assert f"--budget ${budget:.2f} reached" in stopped.data["reason"]
    assert stops.reason == stopped.data["reason"]
    assert slots.in_flight == admitted and rows.closed


async def test_a_job_over_the_budget_is_skipped_and_the_ones_that_fit_are_admitted() -> None:
    """$0.30, $0.30, $1.20, $0.30 under --budget 1.00: the $1.20 job does not fit and is
    skipped; the three $0.30 jobs are admitted; once every job is weighed, one BUDGET stop
    names the job that did not fit."""
    clock = FakeClock()
    costs = [0.3, 1.2, 0.3, 0.3]  # the expensive one early in the start order
    ledger = await memory_ledger(clock, [new_job(i, cost=c) for i, c in enumerate(costs)])
    slots = ConcurrencyLimit(10)
    admission, meter, rows, stops, events = _admission(ledger, clock, slots=slots, budget=1.0)
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-0", "job-2", "job-3"]
    assert meter.committed == pytest.approx(0.9)
    assert (meter.unfit, meter.unfit_ids) == (1, ["job-1 ($1.20)"])
    [stop] = stops.all
    assert stop.kind is StopKind.BUDGET
    [stopped] = events.of("stopped")
    assert stopped.data["reason"] == (
        "--budget $1.00 reached (estimated spend $0.90); the remaining jobs stay pending: "
        "1 did not fit: job-1 ($1.20)"
    )
    assert slots.in_flight == 3 and rows.closed


async def test_jobs_that_do_not_fit_are_counted_past_the_few_named() -> None:
    """Many jobs over the budget: the stop names the first few and counts the rest."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=0.4) for i in range(9)])
    admission, meter, _, stops, _ = _admission(
        ledger, clock, slots=ConcurrencyLimit(10), budget=1.0
    )
    assert [a.row.id for a in await _admit_all(admission, clock)] == ["job-0", "job-1"]
    assert meter.unfit == 7
    reason = stops.reason
    assert reason is not None and "7 did not fit: job-2 ($0.40)" in reason
    assert reason.endswith("job-6 ($0.40) and 2 more")


async def test_a_budget_every_job_fits_tells_nothing() -> None:
    """Every job fits (to the cent): no stop, no ``stopped`` event."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=0.25) for i in range(4)])
    admission, _, _, stops, events = _admission(
        ledger, clock, slots=ConcurrencyLimit(10), budget=1.0
    )
    assert len(await _admit_all(admission, clock)) == 4
    assert stops.all == [] and events.of("stopped") == []


async def test_a_budget_stop_closes_the_slots_for_good() -> None:
    """After a budget stop the slots are closed: a later admission over the same stops
    admits nothing and tells nothing."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=0.5) for i in range(3)])
    slots = ConcurrencyLimit(10)
    admission, _, _, stops, events = _admission(ledger, clock, slots=slots, budget=0.5)
    assert len(await _admit_all(admission, clock)) == 1
    again, _, _, _, more = _admission(ledger, clock, slots=slots, stops=stops, budget=10.0)
    assert await _admit_all(again, clock) == []
    assert len(events.of("stopped")) == 1 and more.events == []
    assert len(stops.all) == 1 and slots.in_flight == 1
    assert slots.statistics().peak == 1


async def test_jobs_of_unknown_price_are_skipped_under_a_budget_with_one_warning() -> None:
    """Unknown price under --budget: skipped (later jobs still go), one warning in all."""
    clock = FakeClock()
    jobs = [new_job(i, cost=None if i % 2 == 0 else 0.3) for i in range(6)]
    ledger = await memory_ledger(clock, jobs)
    admission, meter, _, stops, events = _admission(
        ledger, clock, slots=ConcurrencyLimit(10), budget=10.0
    )
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-1", "job-3", "job-5"]
    [warning] = events.of("warning")
    assert "unknown price" in warning.data["message"]
    assert stops.all == [] and meter.committed == pytest.approx(0.9)


async def test_without_a_budget_jobs_of_unknown_price_are_admitted() -> None:
    """No --budget: price is no reason to hold a job back, and nothing is told."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=None) for i in range(3)])
    admission, _, _, stops, events = _admission(ledger, clock, slots=ConcurrencyLimit(10))
    assert len(await _admit_all(admission, clock)) == 3
    assert events.events == [] and stops.all == []


async def test_every_slot_stranded_ends_admission_with_a_stranded_stop() -> None:
    """Admission waits for a slot; every permit is stranded: a STRANDED stop, stream closed."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(4)])
    slots = ConcurrencyLimit(2)
    admission, _, rows, stops, _ = _admission(ledger, clock, slots=slots)
    tx, rx = anyio.create_memory_object_stream[Admitted](10)

    async def main() -> list[Admitted]:
        with rx:
            task = asyncio.ensure_future(admission.run(tx))
            await clock.sleep(1.0)
            held = _ready(rx)
            assert len(held) == 2 and slots.statistics().waiting == 1
            held[0].permit.strand()
            await clock.sleep(1.0)
            assert not task.done() and stops.all == []  # one slot may still come back
            held[1].permit.strand()
            await clock.sleep(1.0)
            assert task.done()
            await task
            return held + [a async for a in rx]

    got = await drive(clock, main())
    assert [a.row.id for a in got] == ["job-0", "job-1"]
    assert [s.kind for s in stops.all] == [StopKind.STRANDED]
    assert stops.reached(Level.ADMISSION) and not stops.reached(Level.SUBMITS)
    stats = slots.statistics()
    assert (stats.in_flight, stats.stranded, stats.waiting) == (2, 2, 0)
    assert rows.closed


async def test_a_stranded_slot_then_a_released_one_lets_admission_go_on() -> None:
    """One slot stranded, the other released: the next job takes the freed slot."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    slots = ConcurrencyLimit(2)
    admission, _, _, stops, _ = _admission(ledger, clock, slots=slots)
    tx, rx = anyio.create_memory_object_stream[Admitted](10)

    async def main() -> list[str]:
        with rx:
            task = asyncio.ensure_future(admission.run(tx))
            await clock.sleep(1.0)
            held = _ready(rx)
            held[0].permit.strand()
            held[1].permit.release()
            await task
            return [a.row.id for a in held] + [a.row.id async for a in rx]

    assert await drive(clock, main()) == ["job-0", "job-1", "job-2"]
    assert stops.all == [] and slots.statistics().stranded == 1


@pytest.mark.parametrize("kind", [StopKind.FATAL, StopKind.INTERRUPTED, StopKind.BUDGET])
async def test_a_stop_while_waiting_for_a_slot_ends_admission_at_once(kind: StopKind) -> None:
    """The wait for a slot ends at the stop: the stream closes and no permit leaks."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(4)])
    slots = ConcurrencyLimit(1)
    admission, _, rows, stops, _ = _admission(ledger, clock, slots=slots)
    tx, rx = anyio.create_memory_object_stream[Admitted](10)

    async def main() -> list[Admitted]:
        with rx:
            task = asyncio.ensure_future(admission.run(tx))
            await clock.sleep(1.0)
            assert slots.statistics().waiting == 1 and not task.done()
            stops.request(Stop(kind, "stop"))
            await task  # ends with its one permit still held: no slot had to come back
            return _ready(rx) + [a async for a in rx]

    got = await drive(clock, main())
    assert [a.row.id for a in got] == ["job-0"]
    stats = slots.statistics()
    assert (stats.in_flight, stats.waiting) == (1, 0)  # only the permit handed out
    got[0].permit.release()
    assert slots.statistics().in_flight == 0
    assert rows.closed and [s.kind for s in stops.all] == [kind]


async def test_a_job_refused_its_slot_gives_back_its_budget() -> None:
    """The budget granted a job, the slots then ended admission: its spend is given back."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i, cost=0.5) for i in range(3)])
    slots = ConcurrencyLimit(1)
    admission, meter, _, stops, _ = _admission(ledger, clock, slots=slots, budget=10.0)
    tx, rx = anyio.create_memory_object_stream[Admitted](10)

    async def main() -> list[Admitted]:
        with rx:
            task = asyncio.ensure_future(admission.run(tx))
            await clock.sleep(1.0)
            assert meter.committed == pytest.approx(1.0)  # job-1 holds its share, waiting
            stops.request(Stop(StopKind.INTERRUPTED, "interrupted"))
            await task
            return _ready(rx)

    got = await drive(clock, main())
    assert [a.row.id for a in got] == ["job-0"]
    assert meter.committed == pytest.approx(0.5)
    got[0].permit.release()


async def test_a_stop_before_admission_admits_nothing() -> None:
    """Stopped before the first row: nothing is admitted, no slot is taken."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    slots = ConcurrencyLimit(5)
    stops = Stops()
    admission, _, rows, _, _ = _admission(ledger, clock, slots=slots, stops=stops)
    stops.request(Stop(StopKind.INTERRUPTED, "interrupted"))
    assert await _admit_all(admission, clock) == []
    assert slots.statistics().peak == 0 and rows.closed


# -- the order jobs start in (issue 19) -------------------------------------------


def _kind_job(i: int, model: str, inp: dict[str, object]) -> NewJob:
    import json

    full = {"prompt": f"scene {i}", **inp}
    return NewJob(
        id=f"job-{i}",
        idx=i,
        model=model,
        provider="auto",
        input_json=json.dumps(full, sort_keys=True),
        input_hash=f"hash-{i}",
        filename=f"job-{i}.mp4",
        cost_usd=None,
    )


def _longest_first(completions: CompletionModel) -> partial[list[Kind]]:
    return partial(longest_first, expected_s=partial(expected_generation_s, completions))


async def test_longest_first_is_by_expected_generation_and_stable_within_a_kind() -> None:
    """Kinds (model, duration, resolution) from the longest expected generation down, each in
    file order; kinds that expect the same keep their file order; pages do not lose any."""
    clock = FakeClock()
    t2v = {"mode": "text-to-video"}
    jobs = [
        _kind_job(0, "kling-2-5-turbo-pro", {**t2v, "duration": 5}),  # 37.5 s
        _kind_job(1, "kling-2-1", {"mode": "master-text-to-video", "duration": 10}),  # 105 s
        _kind_job(2, "kling-2-5-turbo-pro", {**t2v, "duration": 5}),
        _kind_job(3, "wan-2-5", {**t2v, "duration": 5, "resolution": "720p"}),  # 60 s
        _kind_job(4, "kling-2-6", {**t2v, "duration": 5, "sound": False}),  # 60 s
        _kind_job(5, "kling-2-1", {"mode": "master-text-to-video", "duration": 10}),
        _kind_job(6, "wan-2-5", {**t2v, "duration": 5, "resolution": "1080p"}),  # 80 s
    ]
    ledger = await memory_ledger(clock, jobs)
    completions = CompletionModel()
    rows = [r.id async for r in ledger.queued_by_kind(_longest_first(completions), page=1)]
    assert rows == ["job-1", "job-5", "job-6", "job-3", "job-4", "job-0", "job-2"]
    # Learned times reorder the kinds: this account's kling-2-5 jobs take 200 s.
    for _ in range(completions.min_samples):
        completions.add("kling-2-5-turbo-pro:5:", 200.0)
    rows = [r.id async for r in ledger.queued_by_kind(_longest_first(completions), page=2)]
    assert rows[:2] == ["job-0", "job-2"]


async def test_queued_runs_give_the_file_order_in_runs_of_a_kind() -> None:
    """What the forecast of a file-order run reads: consecutive jobs of one kind as one run."""
    clock = FakeClock()
    t2v = {"mode": "text-to-video", "duration": 5}
    jobs = [
        _kind_job(0, "kling-2-5-turbo-pro", t2v),
        _kind_job(1, "kling-2-5-turbo-pro", t2v),
        _kind_job(2, "wan-2-5", {**t2v, "resolution": "720p"}),
        _kind_job(3, "kling-2-5-turbo-pro", t2v),
    ]
    ledger = await memory_ledger(clock, jobs)
    assert await ledger.queued_runs() == [
        (Kind("kling-2-5-turbo-pro", 5), 2),
        (Kind("wan-2-5", 5, "720p"), 1),
        (Kind("kling-2-5-turbo-pro", 5), 1),
    ]


@pytest.mark.parametrize("order", ["longest", "file"])
async def test_admission_starts_jobs_in_the_order_the_forecast_assumes(order: str) -> None:
    """One start order: the rows admission reads and the shapes the forecast lays on the
    slots come kind for kind in the same order, learned times included."""
    clock = FakeClock()
    t2v = {"mode": "text-to-video"}
    jobs = [
        _kind_job(0, "kling-2-5-turbo-pro", {**t2v, "duration": 5}),
        _kind_job(1, "wan-2-5", {**t2v, "duration": 5, "resolution": "720p"}),
        _kind_job(2, "kling-2-6", {**t2v, "duration": 5, "sound": False}),
        _kind_job(3, "kling-2-1", {"mode": "master-text-to-video", "duration": 10}),
        _kind_job(4, "kling-2-5-turbo-pro", {**t2v, "duration": 5}),
    ]
    ledger = await memory_ledger(clock, jobs)
    completions = CompletionModel()
    for _ in range(completions.min_samples):
        completions.add(Kind("kling-2-6", 5).key, 300.0)
    rows = [r async for r in queued_in_start_order(ledger, order, completions)]
    started = [task_shape(completions, Kind.of(r.model, r.input), callback=False) for r in rows]
    runs = await ledger.queued_runs()
    assert list(shapes_in_start_order(runs, completions, order=order)) == started
    if order == "longest":
        assert [r.id for r in rows] == ["job-2", "job-3", "job-1", "job-0", "job-4"]


async def test_limit_admits_the_first_n_in_start_order_and_is_no_stop() -> None:
    """--limit 2: the first two jobs, then admission ends without a stop; the rest stay
    queued, their slots never taken."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(5)])
    slots = ConcurrencyLimit(10)
    events = Recorder()
    stops = Stops(events.emitter(clock))
    rows = _Rows(ledger)
    admission = Admission(rows, meters=[LimitMeter(2)], slots=SlotMeter(slots), stops=stops)
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-0", "job-1"]
    assert stops.all == [] and events.of("stopped") == []
    assert slots.in_flight == 2 and rows.closed


async def test_a_limit_counts_only_jobs_the_budget_let_through() -> None:
    """A job the budget skips (unknown price) does not use up the limit."""
    clock = FakeClock()
    jobs = [new_job(0, cost=None), new_job(1, cost=0.1), new_job(2, cost=0.1), new_job(3)]
    ledger = await memory_ledger(clock, jobs)
    events = Recorder()
    stops = Stops(events.emitter(clock))
    meters = [BudgetMeter(5.0, 0.0, events.emitter(clock)), LimitMeter(2)]
    admission = Admission(
        _Rows(ledger), meters=meters, slots=SlotMeter(ConcurrencyLimit(10)), stops=stops
    )
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-1", "job-2"]


async def test_selected_rows_leave_the_others_queued_and_close_the_source() -> None:
    """--only job-[13]: admission sees job-1 and job-3 only; the source is closed."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(5)])
    rows = _Rows(ledger)
    admission = Admission(
        selected(rows, Selection(only=("job-[13]",))),
        meters=[],
        slots=SlotMeter(ConcurrencyLimit(10)),
        stops=Stops(Recorder().emitter(clock)),
    )
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-1", "job-3"]
    assert rows.closed


async def test_the_row_a_limit_ends_on_is_given_back_at_once() -> None:
    """Several runners: --limit 2 ends admission on the third row, which this runner
    claimed and will never send: it is given back then (another runner may send it),
    not when this runner leaves; the rows admitted are not."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(5)])
    given_back: list[str] = []

    async def unclaim(row: JobRow) -> None:
        given_back.append(row.id)

    admission = Admission(
        _Rows(ledger),
        meters=[LimitMeter(2)],
        slots=SlotMeter(ConcurrencyLimit(10)),
        stops=Stops(Recorder().emitter(clock)),
        unclaim=unclaim,
    )
    got = await _admit_all(admission, clock)
    assert [a.row.id for a in got] == ["job-0", "job-1"]
    assert given_back == ["job-2"]
