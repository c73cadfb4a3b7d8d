"""PollScheduler (one timer heap, budget-aware delays) and CompletionModel (learned quantiles)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from apixo_batch.catalog.models import Clock as ModelClock
from apixo_batch.clock import FakeClock
from apixo_batch.pipeline.scheduler import PollScheduler, SchedulerStats, Tracked
from apixo_batch.planning.completion import CompletionModel
from apixo_batch.retry import Patience

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime

START = 1_000.0
MC = ModelClock(first_poll=30.0, interval=10.0, typical_min=40.0, typical_max=120.0)
#: a window of no width: one poll at 30 s, then every 0.6 x interval (the loop's tests)
LOOP_MC = ModelClock(first_poll=30.0, interval=10.0, typical_min=30.0, typical_max=30.0)
KEY = "veo3:8s"


# -- helpers ------------------------------------------------------------------


@dataclass
class PollSpy:
    """A fake poll function: records (task id, time) and says done per a plan."""

    clock: FakeClock
    #: task id -> the poll number (1-based) on which the task reports finished
    finish_on: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, float]] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    gate: asyncio.Event | None = None

    async def __call__(self, t: Tracked) -> bool:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            self.calls.append((t.task_id, self.clock.monotonic()))
            if self.gate is not None:
                await self.gate.wait()
            return t.polls >= self.finish_on.get(t.task_id, 1_000_000)
        finally:
            self.running -= 1

    def times(self, task_id: str) -> list[float]:
        return [at for tid, at in self.calls if tid == task_id]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def spy(clock: FakeClock) -> PollSpy:
    return PollSpy(clock)


@pytest.fixture
async def make_scheduler(
    clock: FakeClock, spy: PollSpy
) -> AsyncIterator[Callable[..., PollScheduler]]:
    """Build schedulers polling through ``spy`` and run them; closes and awaits them after."""
    running: list[tuple[PollScheduler, asyncio.Task[None]]] = []

    def make(**kwargs: object) -> PollScheduler:
        kwargs.setdefault("completions", CompletionModel())
        kwargs.setdefault("poll", spy)
        sched = PollScheduler(clock=clock, **kwargs)  # type: ignore[arg-type]
        running.append((sched, asyncio.create_task(sched.run())))
        return sched

    yield make
    if spy.gate is not None:
        spy.gate.set()
    for sched, _ in running:
        sched.close()
    await asyncio.gather(*(task for _, task in running))


def _task(
    n: int | str,
    clock: FakeClock,
    *,
    submitted_at: float | None = None,
    model_clock: ModelClock = LOOP_MC,
    callback_mode: bool = False,
    key: str = KEY,
) -> Tracked:
    now = clock.monotonic()
    return Tracked(
        job_id=f"job-{n}",
        task_id=f"task-{n}",
        model="veo3",
        clock_key=key,
        model_clock=model_clock,
        submitted_at=now if submitted_at is None else submitted_at,
        max_wait=Patience(1800.0).start(clock),
        callback_mode=callback_mode,
    )


async def _run_until(clock: FakeClock, done: Callable[[], bool], limit: float = 86_400.0) -> None:
    """Drive the clock deadline to deadline until ``done()`` (or ``limit`` seconds pass)."""
    end = clock.monotonic() + limit
    while not done() and clock.monotonic() < end:
        await clock.settle()
        deadline = clock.next_deadline()
        if deadline is None or deadline > end:
            break
        await clock.advance(deadline - clock.monotonic())
    await clock.settle()


def _learned(model: CompletionModel, values: list[float], key: str = KEY) -> None:
    for v in values:
        model.add(key, v)


# -- CompletionModel ----------------------------------------------------------


def test_completion_model_uses_documented_range_until_enough_samples() -> None:
    """Below min_samples a quantile interpolates typical_min..typical_max."""
    model = CompletionModel(min_samples=5)
    assert model.quantile(KEY, 0.0, MC) == 40.0
    assert model.quantile(KEY, 0.5, MC) == 80.0
    assert model.quantile(KEY, 0.95, MC) == pytest.approx(116.0)
    _learned(model, [1.0, 2.0, 3.0, 4.0])
    assert model.samples(KEY) == 4
    assert model.quantile(KEY, 0.5, MC) == 80.0


def test_completion_model_learned_quantiles() -> None:
    """With min_samples or more, quantiles come from the sorted samples."""
    model = CompletionModel(min_samples=20)
    _learned(model, [float(v) for v in range(69, 49, -1)])  # 50..69, added out of order
    assert model.samples(KEY) == 20
    assert model.quantile(KEY, 0.0, MC) == 50.0
    assert model.quantile(KEY, 0.10, MC) == 52.0  # round(0.1 * 19) = 2
    assert model.quantile(KEY, 0.95, MC) == 68.0  # round(0.95 * 19) = 18
    assert model.quantile(KEY, 1.0, MC) == 69.0


def test_completion_model_keeps_a_sliding_window() -> None:
    """Only the last ``keep`` samples count: old completions fall out of the quantiles."""
    model = CompletionModel(min_samples=3, keep=5)
    _learned(model, [10.0, 20.0, 30.0, 40.0, 50.0])
    assert model.quantile(KEY, 0.0, MC) == 10.0
    _learned(model, [100.0, 100.0, 100.0])  # pushes out 10, 20, 30
    assert model.samples(KEY) == 5
    assert model.quantile(KEY, 0.0, MC) == 40.0
    assert model.quantile(KEY, 1.0, MC) == 100.0
    _learned(model, [5.0, 5.0])  # pushes out 40, 50
    assert model.quantile(KEY, 0.0, MC) == 5.0
    assert model.quantile(KEY, 0.5, MC) == 100.0
    assert model.quantile(KEY, 1.0, MC) == 100.0


def test_completion_model_sliding_window_with_duplicates_stays_consistent() -> None:
    """Evicting a value that occurs several times removes exactly one copy."""
    model = CompletionModel(min_samples=1, keep=3)
    _learned(model, [7.0, 7.0, 9.0, 1.0])  # evicts one 7
    assert model.samples(KEY) == 3
    assert [model.quantile(KEY, q, MC) for q in (0.0, 0.5, 1.0)] == [1.0, 7.0, 9.0]
    _learned(model, [2.0, 3.0])  # evicts 7 and 9
    assert [model.quantile(KEY, q, MC) for q in (0.0, 0.5, 1.0)] == [1.0, 2.0, 3.0]


def test_completion_model_ignores_non_positive_and_separates_keys() -> None:
    """Zero or negative durations are ignored; each clock key learns on its own."""
    model = CompletionModel(min_samples=1)
    model.add(KEY, 0.0)
    model.add(KEY, -3.0)
    assert model.samples(KEY) == 0
    model.add("other", 12.0)
    assert model.samples("other") == 1
    assert model.samples(KEY) == 0
    assert model.quantile("other", 0.5, MC) == 12.0
    assert model.quantile(KEY, 0.5, MC) == 80.0


# -- timing policy ------------------------------------------------------------


async def test_first_and_next_delay_follow_the_model_clock_when_loose(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """Loose budget, nothing learned: first poll at first_poll, then 0.6 × interval (≥ 1 s)."""
    sched = make_scheduler()
    t = _task(1, clock)
    assert sched.first_delay(t) == 30.0
    assert sched.next_delay(t) == 6.0
    fast = _task(2, clock, model_clock=ModelClock(5.0, 1.0, 5.0, 10.0))
    assert sched.next_delay(fast) == 1.0


async def test_tight_budget_stretches_the_interval(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """is_tight: the interval between polls doubles; statistics report the tightness."""
    tight = True
    sched = make_scheduler(is_tight=lambda: tight)
    t = _task(1, clock)
    assert sched.next_delay(t) == 20.0
    assert sched.statistics().tight is True
    tight = False
    assert sched.next_delay(t) == 6.0
    assert sched.statistics().tight is False


async def test_learned_completions_move_the_first_poll(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """After min_samples completions of a clock key, its first poll is the first step of the
    learned distribution: 50..69 s is about 20 s wide, so 1/(20/10 + 2) of it (the 0.25
    quantile, 55 s), where the documented window of no width put it at 30 s."""
    completions = CompletionModel(min_samples=20)
    sched = make_scheduler(completions=completions)
    t = _task(1, clock)
    _learned(completions, [float(v) for v in range(50, 69)])  # 19: not yet
    assert sched.first_delay(t) == 30.0
    completions.add(KEY, 69.0)
    assert sched.first_delay(t) == 55.0
    # Other clock keys are not affected by what this key learned.
    assert sched.first_delay(_task(2, clock, key="other")) == 30.0


async def test_callback_mode_polls_only_as_a_safety_net(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """callback_mode: first poll at typical_max + callback_margin, then every ≥ 15 s."""
    sched = make_scheduler(callback_margin=45.0, is_tight=lambda: True)
    t = _task(1, clock, callback_mode=True, model_clock=MC)
    assert sched.first_delay(t) == 165.0
    assert sched.next_delay(t) == 20.0
    quick = _task(2, clock, callback_mode=True, model_clock=ModelClock(5.0, 2.0, 5.0, 10.0))
    assert sched.next_delay(quick) == 15.0


# -- the loop -----------------------------------------------------------------


async def test_first_poll_is_at_submitted_at_plus_scaled_first_poll(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """With time_scale 0.5 the first poll lands at submitted_at + 15 s, not a moment earlier."""
    sched = make_scheduler(time_scale=0.5)
    sched.add(_task(1, clock))
    await clock.advance(14.999)
    assert spy.calls == []
    await clock.advance(0.001)
    assert spy.times("task-1") == [START + 15.0]


async def test_later_polls_follow_next_delay(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """After an unfinished poll the next comes next_delay × time_scale later, until done."""
    spy.finish_on["task-1"] = 4
    sched = make_scheduler(time_scale=0.5)
    sched.add(_task(1, clock))
    await _run_until(clock, lambda: sched.tracked == 0)
    assert spy.times("task-1") == pytest.approx([START + 15.0, START + 18.0, START + 21.0, 1024.0])
    assert sched.tracked == 0


async def test_adopted_task_is_polled_from_its_original_submit_time(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A task submitted before this run is polled at submitted_at + first_poll, even if past."""
    sched = make_scheduler()
    sched.add(_task("old", clock, submitted_at=START - 100.0))  # overdue already
    sched.add(_task("recent", clock, submitted_at=START - 10.0))  # due in 20 s
    await clock.settle()
    assert spy.times("task-old") == [START]
    await clock.advance(19.9)
    assert spy.times("task-recent") == []
    await clock.advance(0.1)
    assert spy.times("task-recent") == [START + 20.0]


async def test_add_with_explicit_due(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """add(due=...) overrides the policy for the first poll."""
    sched = make_scheduler()
    sched.add(_task(1, clock), due=START + 3.0)
    await clock.advance(2.9)
    assert spy.calls == []
    await clock.advance(0.1)
    assert spy.times("task-1") == [START + 3.0]


async def test_tight_first_poll_waits_for_the_095_quantile(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """Tight, nothing learned: first poll at the documented 0.95 point, next 2 × interval later."""
    spy.finish_on["task-1"] = 2
    sched = make_scheduler(is_tight=lambda: True)
    sched.add(_task(1, clock, model_clock=MC))
    await clock.advance(115.9)
    assert spy.calls == []
    await _run_until(clock, lambda: sched.tracked == 0)
    assert spy.times("task-1") == pytest.approx([START + 116.0, START + 136.0])


async def test_learned_first_poll_in_the_loop(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """With ≥ min_samples learned, the loop's first poll is at the learned first step."""
    completions = CompletionModel(min_samples=20)
    _learned(completions, [float(v) for v in range(50, 70)])
    sched = make_scheduler(completions=completions)
    sched.add(_task(1, clock))
    await _run_until(clock, lambda: bool(spy.calls))
    assert spy.times("task-1")[0] == START + 55.0


async def test_tight_learned_first_poll_waits_for_the_learned_095_quantile(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """Tight budget and ≥ min_samples learned: the first poll is at the learned 0.95 quantile."""
    completions = CompletionModel(min_samples=20)
    _learned(completions, [float(v) for v in range(50, 70)])
    spy.finish_on["task-1"] = 1
    sched = make_scheduler(completions=completions, is_tight=lambda: True, time_scale=2.0)
    sched.add(_task(1, clock))
    await _run_until(clock, lambda: sched.tracked == 0)
    assert spy.times("task-1") == [START + 68.0 * 2.0]


async def test_callback_mode_first_poll_in_the_loop(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """callback_mode: nothing polled until typical_max + callback_margin."""
    sched = make_scheduler(callback_margin=60.0)
    sched.add(_task(1, clock, callback_mode=True, model_clock=MC))
    await clock.advance(179.0)
    assert spy.calls == []
    await _run_until(clock, lambda: bool(spy.calls))
    assert spy.times("task-1") == [START + 180.0]


async def test_forget_stops_polls(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A forgotten task is never polled again and no longer tracked."""
    sched = make_scheduler()
    t = _task(1, clock)
    sched.add(t)
    sched.add(_task(2, clock))
    await clock.advance(31.0)
    assert len(spy.times("task-1")) == 1
    assert sched.forget("task-1") is t
    assert t.done
    assert sched.forget("task-1") is None
    assert sched.get("task-1") is None
    await clock.advance(120.0)
    assert len(spy.times("task-1")) == 1
    assert len(spy.times("task-2")) > 1
    assert [x.task_id for x in sched.tracked_tasks()] == ["task-2"]


async def test_forget_before_the_first_poll(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """Forgetting a task whose first poll is still pending means it is never polled."""
    sched = make_scheduler()
    sched.add(_task(1, clock))
    sched.forget("task-1")
    await clock.advance(300.0)
    assert spy.calls == []
    assert sched.statistics().tracked == 0


async def test_poll_soon_polls_immediately(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """poll_soon polls a tracked task at once, long before its timer; unknown ids are ignored."""
    sched = make_scheduler()
    sched.add(_task(1, clock))
    await clock.advance(5.0)
    sched.poll_soon("task-1")
    sched.poll_soon("nobody")
    await clock.settle()
    assert spy.times("task-1") == [START + 5.0]


async def test_poll_soon_polls_immediately_even_when_tight(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A confirmation asked for with poll_soon is not deferred by a tight budget."""
    sched = make_scheduler(is_tight=lambda: True)
    sched.add(_task(1, clock))
    await clock.advance(5.0)
    sched.poll_soon("task-1")
    await clock.settle()
    assert spy.times("task-1") == [START + 5.0]


async def test_poll_soon_replaces_the_pending_timer(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """After poll_soon the task has one timer: its polls go on as planned, no extras."""
    sched = make_scheduler()
    sched.add(_task(1, clock))  # due at +30
    await clock.advance(5.0)
    sched.poll_soon("task-1")  # polled at +5; the planned one at +30, then +36, +42, ...
    await clock.settle()
    await clock.advance(60.0)
    times = spy.times("task-1")
    assert times == pytest.approx([START + 5.0] + [START + 30.0 + 6.0 * i for i in range(6)])


async def test_finished_poll_drops_the_task(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A poll returning True forgets the task: tracked drops and no more polls come."""
    spy.finish_on.update({"task-1": 1, "task-2": 3})
    sched = make_scheduler()
    sched.add(_task(1, clock))
    sched.add(_task(2, clock))
    assert sched.tracked == 2
    await clock.advance(30.0)
    assert sched.tracked == 1
    assert sched.get("task-1") is None
    await _run_until(clock, lambda: sched.tracked == 0)
    await clock.advance(600.0)
    assert (len(spy.times("task-1")), len(spy.times("task-2"))) == (1, 3)


async def test_thousand_tasks_cost_exactly_the_expected_polls(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """1,000 tasks finishing on poll 1..5 cost exactly that many polls, never two at once."""
    sched = make_scheduler()
    for i in range(1_000):
        spy.finish_on[f"task-{i}"] = i % 5 + 1
        sched.add(_task(i, clock, submitted_at=START + (i % 37) * 0.25))
    await _run_until(clock, lambda: sched.tracked == 0)
    assert sched.tracked == 0
    assert len(spy.calls) == sum(i % 5 + 1 for i in range(1_000)) == 3_000
    per_task = collections.Counter(tid for tid, _ in spy.calls)
    assert all(per_task[f"task-{i}"] == i % 5 + 1 for i in range(1_000))
    for i in range(0, 1_000, 97):
        times = spy.times(f"task-{i}")
        assert times[0] == START + (i % 37) * 0.25 + 30.0
        assert all(b - a == pytest.approx(6.0) for a, b in itertools.pairwise(times))
    stats = sched.statistics()
    assert (stats.polls, stats.tracked, stats.polls_in_progress) == (3_000, 0, 0)


async def test_max_parallel_caps_polls_in_progress(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """At most max_parallel polls run at once; the rest wait for a slot, none is lost."""
    spy.gate = asyncio.Event()
    spy.finish_on.update({f"task-{i}": 1 for i in range(10)})
    sched = make_scheduler(max_parallel=3)
    for i in range(10):
        sched.add(_task(i, clock))
    await clock.advance(30.0)
    assert sched.statistics().polls_in_progress == 3
    assert spy.running == 3
    spy.gate.set()
    await clock.settle()
    assert sched.tracked == 0
    assert len(spy.calls) == 10
    assert spy.peak == 3


async def test_slow_poll_is_not_duplicated(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """While a poll is in progress the task is not polled again; the next timer starts after."""
    spy.gate = asyncio.Event()
    spy.finish_on["task-1"] = 2
    sched = make_scheduler()
    sched.add(_task(1, clock))
    await clock.advance(30.0)
    await clock.advance(100.0)  # the poll hangs for 100 s
    assert len(spy.calls) == 1
    spy.gate.set()
    await clock.settle()
    await clock.advance(5.9)
    assert len(spy.calls) == 1
    spy.gate = None
    await clock.advance(0.1)
    assert spy.times("task-1") == [START + 30.0, START + 136.0]


async def test_statistics_snapshot(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """statistics() reports tracked tasks, polls made, polls in progress and tightness."""
    spy.gate = asyncio.Event()
    sched = make_scheduler()
    assert sched.statistics() == SchedulerStats(
        tracked=0, polls=0, polls_in_progress=0, tight=False
    )
    sched.add(_task(1, clock))
    sched.add(_task(2, clock, submitted_at=START + 100.0))
    await clock.advance(30.0)
    assert sched.statistics() == SchedulerStats(
        tracked=2, polls=1, polls_in_progress=1, tight=False
    )
    spy.gate.set()
    await clock.settle()
    assert sched.statistics().polls_in_progress == 0


async def test_close_ends_run(clock: FakeClock, spy: PollSpy) -> None:
    """close() ends run() whether it sleeps on a timer or waits with nothing to do."""
    idle = PollScheduler(clock=clock, poll=spy, completions=CompletionModel())
    busy = PollScheduler(clock=clock, poll=spy, completions=CompletionModel())
    busy.add(_task(1, clock))
    runs = [asyncio.create_task(idle.run()), asyncio.create_task(busy.run())]
    await clock.settle()
    assert not any(r.done() for r in runs)
    idle.close()
    busy.close()
    await asyncio.gather(*runs)
    assert busy.tracked == 1  # close stops polling; it does not forget
    await clock.advance(100.0)
    assert spy.calls == []


async def test_close_waits_for_polls_in_progress(clock: FakeClock, spy: PollSpy) -> None:
    """run() returns after close only once the polls it started have finished."""
    spy.gate = asyncio.Event()
    sched = PollScheduler(clock=clock, poll=spy, completions=CompletionModel())
    sched.add(_task(1, clock), due=START)
    run = asyncio.create_task(sched.run())
    await clock.settle()
    assert spy.running == 1
    sched.close()
    await clock.settle()
    assert not run.done()
    spy.gate.set()
    await run
    assert spy.running == 0


async def test_adding_an_earlier_task_wakes_the_loop(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A task due sooner than the current timer is polled on time, not after the old one."""
    sched = make_scheduler()
    sched.add(_task("late", clock), due=START + 500.0)
    await clock.advance(10.0)
    sched.add(_task("soon", clock), due=START + 12.0)
    await clock.advance(2.0)
    assert spy.times("task-soon") == [START + 12.0]
    assert spy.times("task-late") == []


# -- rounds -------------------------------------------------------------------


async def test_polls_go_out_in_rounds(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A round starts when a poll is due and takes the polls due within ``early``;
    the next round is at least ``min_gap`` later. No poll leaves more than ``early``
    before its time, nor more than ``min_gap`` after it."""
    sched = make_scheduler(min_gap=3.0, early=1.5)
    due = {"a": 10.0, "b": 11.0, "c": 12.4, "d": 14.0}
    for name, at in due.items():
        spy.finish_on[f"task-{name}"] = 1
        sched.add(_task(name, clock), due=START + at)
    await _run_until(clock, lambda: sched.tracked == 0)
    polled = {tid.removeprefix("task-"): at - START for tid, at in spy.calls}
    assert polled == pytest.approx({"a": 10.0, "b": 10.0, "c": 13.0, "d": 13.0})
    for name, at in polled.items():
        assert due[name] - 1.5 <= at <= due[name] + 3.0


async def test_a_round_keeps_its_tasks_together_whatever_their_answer_times(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """Tasks polled in one round are due again at slightly different times (their
    answers took different times); the next round takes them all, not just the first.
    Without ``early`` the others would wait a whole round more."""
    calls: list[tuple[str, float]] = []
    answer_s = {"task-0": 0.0, "task-1": 0.2, "task-2": 0.4}

    async def poll(t: Tracked) -> bool:
        calls.append((t.task_id, clock.monotonic()))
        await clock.sleep(answer_s[t.task_id])
        return t.polls >= 2

    sched = make_scheduler(poll=poll, min_gap=3.0, early=1.5)
    for n in range(3):
        # Past their window: the next poll is next_delay after each answer.
        sched.add(_task(n, clock, submitted_at=START - 100.0), due=START + 10.0)
    await _run_until(clock, lambda: sched.tracked == 0)
    # next_delay when loose: max(1, 10 * 0.6) = 6 s after each answer.
    assert sorted(at - START for _, at in calls) == pytest.approx([10.0] * 3 + [16.0] * 3)


async def test_poll_soon_is_not_held_back_by_the_round(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A confirmation asked for with poll_soon goes out at once, even right after a round."""
    sched = make_scheduler(min_gap=3.0, early=1.5)
    sched.add(_task(1, clock), due=START + 10.0)
    sched.add(_task(2, clock), due=START + 11.8)  # not in the round at 10: the next is at 13
    await clock.advance(10.0)
    assert spy.times("task-1") == [START + 10.0]
    assert spy.times("task-2") == []
    await clock.advance(2.0)
    sched.poll_soon("task-2")
    await clock.settle()
    assert spy.times("task-2") == [START + 12.0]


async def test_a_round_slowed_by_busy_slots_polls_each_task_once(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """With more polls due than slots, a task answered early in a round and due again
    within its slack is not polled a second time in that round, and the round ends."""
    calls: list[tuple[str, float]] = []

    async def poll(t: Tracked) -> bool:
        calls.append((t.task_id, clock.monotonic()))
        await clock.sleep(0.1)
        return t.polls >= 3

    fast = ModelClock(first_poll=10.0, interval=2.0, typical_min=10.0, typical_max=20.0)
    sched = make_scheduler(poll=poll, min_gap=3.0, early=1.5, max_parallel=2)
    for n in range(3):
        sched.add(_task(n, clock, model_clock=fast), due=START + 10.0)
    await _run_until(clock, lambda: sched.tracked == 0)
    for n in range(3):
        times = [at for tid, at in calls if tid == f"task-{n}"]
        assert len(times) == 3
        # next_delay when loose: max(1, 2 * 0.6) = 1.2 s; never sooner than that.
        assert all(b - a >= 1.2 - 1e-9 for a, b in itertools.pairwise(times))


# -- polls on equal steps of probability (issue 19) -----------------------------


async def test_polls_land_on_equal_steps_of_the_documented_window(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """40-120 s polled every 10 s by the docs' cadence: 80/10 + 2 = 10 steps of 8 s over the
    window (48, 56, ... 120 s), then every 0.6 x interval for a task that outlived it."""
    spy.finish_on["task-1"] = 12
    sched = make_scheduler()
    sched.add(_task(1, clock, model_clock=MC))
    await _run_until(clock, lambda: sched.tracked == 0)
    expected = [48.0 + 8.0 * k for k in range(10)] + [126.0, 132.0]
    assert [at - START for at in spy.times("task-1")] == pytest.approx(expected)


async def test_a_poll_its_round_took_early_is_not_repeated_at_the_same_step(
    clock: FakeClock, spy: PollSpy, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """A round takes polls up to ``early`` ahead: the next poll is the following step, not the
    step the early poll was due on."""
    spy.finish_on["task-1"] = 3
    sched = make_scheduler(min_gap=3.0, early=1.5)
    sched.add(_task(0, clock, model_clock=MC), due=START + 47.0)  # opens a round at 47
    sched.add(_task(1, clock, model_clock=MC))  # due at 48: taken by the round at 47
    await _run_until(clock, lambda: sched.tracked == 1)
    times = [at - START for at in spy.times("task-1")]
    assert times[0] == pytest.approx(47.0)
    assert all(b - a > 5.0 for a, b in itertools.pairwise(times)), times


async def test_steps_cost_no_more_polls_than_the_docs_cadence_and_see_ends_sooner(
    clock: FakeClock, make_scheduler: Callable[..., PollScheduler]
) -> None:
    """200 tasks ending anywhere in their documented window: the steps spend no more polls
    than 'wait the earliest completion, then every interval', and see each end sooner."""
    import random

    rng = random.Random(19)
    ends = {f"task-{n}": rng.uniform(MC.typical_min, MC.typical_max) for n in range(200)}
    seen: dict[str, float] = {}
    polls: collections.Counter[str] = collections.Counter()

    async def poll(t: Tracked) -> bool:
        polls[t.task_id] += 1
        if clock.monotonic() - START >= ends[t.task_id]:
            seen[t.task_id] = clock.monotonic() - START
            return True
        return False

    sched = make_scheduler(poll=poll)
    for n in range(200):
        sched.add(_task(n, clock, model_clock=MC))
    await _run_until(clock, lambda: sched.tracked == 0)
    ours_polls = sum(polls.values()) / 200
    ours_delay = sum(seen[k] - ends[k] for k in ends) / 200
    # The docs' cadence, for the same ends: first poll at 40 s, then every 10 s.
    docs_polls = sum(1 + math.ceil((e - 40.0) / 10.0) for e in ends.values()) / 200
    docs_delay = sum(40.0 + 10.0 * math.ceil((e - 40.0) / 10.0) - e for e in ends.values()) / 200
    assert ours_polls <= docs_polls + 0.05, (ours_polls, docs_polls)
    assert ours_delay < 0.85 * docs_delay, (ours_delay, docs_delay)
