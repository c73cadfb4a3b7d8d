"""This run as one runner of a shared campaign (pipeline/runners.py), on a FakeClock and
a lease played by the test: the heartbeat and its stop, claims that wait for others'
work, adoption handed to the follower and the lander."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import anyio
import pytest
from stagefakes import Recorder, drive, job_row

from apixo_batch.apixo.client import TaskStatus
from apixo_batch.clock import FakeClock
from apixo_batch.exitcodes import ExitCode
from apixo_batch.journal import Adoption, JobRow, JobState
from apixo_batch.pipeline.lander import Fetch
from apixo_batch.pipeline.runners import FENCED_REASON, Runner
from apixo_batch.pipeline.stop import Stop, StopKind, Stops

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime

LEASE = 3.0


def _row(n: int, state: JobState = JobState.QUEUED) -> JobRow:
    return job_row(n, state, attempts=0)


class FakeLease:
    """A lease whose answers the test sets: renewals that fail, runners to adopt, what
    remains elsewhere. Keeps the clock's time of every call it gets."""

    def __init__(self, clock: FakeClock) -> None:
        self.lease_s = LEASE
        self.grace_s = 2.0
        self.lost = False
        self._clock = clock
        self._renewed = clock.monotonic()
        self.down = False  # the database does not answer
        self.hangs = False  # a renewal never comes back (a link dropping packets)
        self.renewals: list[float] = []
        self.adoptions: list[Adoption] = []
        self.orphans: list[JobRow] = []
        self.left: list[tuple[int, int]] = []  # remaining(), answer after answer
        self.gone = False
        self.released: list[str] = []
        self.foreign = 0  # paid rows of a key this runner lacks
        self.stray_tasks: list[tuple[str, str, str, str | None]] = []
        self.settled: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: another runner's lease and grace run out at this clock time (None: no other)
        self.others_due: float | None = None
        self.sweeps: list[float] = []

    async def renew(self) -> bool:
        self.renewals.append(self._clock.monotonic())
        if self.hangs:
            await asyncio.Event().wait()
        if self.down:
            raise OSError("the database does not answer")
        if self.lost:
            return False
        self._renewed = self._clock.monotonic()
        return True

    def past_term(self) -> bool:
        return self.lost or self._clock.monotonic() - self._renewed >= LEASE + self.grace_s

    async def adopt(self, skip: Sequence[int] = ()) -> Adoption | None:
        if not skip:
            self.sweeps.append(self._clock.monotonic())
        return self.adoptions.pop(0) if self.adoptions else None

    async def next_adoption_s(self) -> float | None:
        if self.others_due is None:
            return None
        return max(0.0, self.others_due - self._clock.monotonic())

    async def claim_paid(self, states: Sequence[str], *, mine_too: bool = True) -> list[JobRow]:
        got, self.orphans = self.orphans, []
        return got

    async def remaining(self) -> tuple[int, int]:
        return self.left.pop(0) if len(self.left) > 1 else self.left[0]

    async def leave(self) -> None:
        self.gone = True

    async def release(self, job_ids: Sequence[str]) -> None:
        self.released.extend(job_ids)

    async def foreign_paid(self) -> int:
        return self.foreign

    async def not_done_unheld(self) -> int:
        return 0

    async def strays(self) -> list[tuple[str, str, str, str | None]]:
        return [s for s in self.stray_tasks if s[0] not in self.settled]

    async def settle_stray(
        self, task_id: str, state: str, result_urls: Sequence[str], fail_code: str | None
    ) -> None:
        self.settled[task_id] = (state, tuple(result_urls))


def _runner(clock: FakeClock, lease: FakeLease, *, leave_early: bool = False) -> tuple[
    Runner, Stops, Recorder
]:  # fmt: skip
    events = Recorder()
    stops = Stops(events.emitter(clock))
    return (
        Runner(
            lease, clock=clock, stops=stops, emit=events.emitter(clock), leave_early=leave_early
        ),
        stops,
        events,
    )


async def test_the_heartbeat_renews_every_third_of_a_lease_through_a_short_outage() -> None:
    """Renewals every lease/3; a database away for less than lease + grace stops nothing."""
    clock = FakeClock()
    lease = FakeLease(clock)
    runner, stops, _ = _runner(clock, lease)
    beat = asyncio.ensure_future(runner.heartbeat())
    await clock.advance(3.5)
    lease.down = True
    await clock.advance(3.0)  # 4 s since the last renewal: under 5
    lease.down = False
    await clock.advance(3.0)
    assert not beat.done() and stops.all == []
    assert [round(t - lease.renewals[0], 6) for t in lease.renewals] == list(range(9))
    beat.cancel()


@pytest.mark.parametrize("how", ["adopted", "silent", "hanging"])
async def test_a_lease_lost_past_its_term_stops_the_run_with_75(how: str) -> None:
    """Taken over (the renewal says so), or not renewed for lease + grace (the database
    refuses, or a renewal never comes back): the run stops at once, every level, exit
    75, "another runner took over; nothing lost"."""
    clock = FakeClock()
    lease = FakeLease(clock)
    runner, stops, events = _runner(clock, lease)
    if how == "adopted":
        lease.lost = True
    elif how == "silent":
        lease.down = True
    else:
        lease.hangs = True
    await drive(clock, runner.heartbeat())
    assert [s.kind for s in stops.all] == [StopKind.FENCED]
    assert stops.exit_code(all_done=True) is ExitCode.TEMP_FAIL
    assert stops.reason == FENCED_REASON
    assert [e.data["reason"] for e in events.of("stopped")] == [FENCED_REASON]
    assert clock.monotonic() - 1000.0 <= (1 if how == "adopted" else LEASE + 2.0 + 1)


async def test_a_fenced_stop_outranks_the_journal_failing_with_it() -> None:
    """The journal failing once the lease is lost is no disk to fix: still 75."""
    stops = Stops()
    stops.request(Stop(StopKind.STORAGE, "the journal failed"))
    stops.request(Stop(StopKind.FENCED, FENCED_REASON))
    assert stops.exit_code(all_done=False) is ExitCode.TEMP_FAIL
    assert stops.reason == FENCED_REASON


async def _collect(rows: AsyncIterator[JobRow]) -> list[str]:
    return [r.id async for r in rows]


async def test_claims_wait_while_others_hold_work_and_end_when_none_is_left() -> None:
    """Rows come as claimed; once none is free the runner looks again every period while
    other runners hold unfinished work (claims of theirs may come back), and ends when
    the campaign has nothing left for it."""
    clock = FakeClock()
    lease = FakeLease(clock)
    batches = [[_row(0), _row(1)], [], [_row(2)], [], []]
    lease.left = [(3, 0), (1, 1), (0, 0)]
    asked: list[float] = []

    async def queued() -> AsyncIterator[JobRow]:
        asked.append(clock.monotonic())
        for row in batches.pop(0):
            yield row

    runner, _, _ = _runner(clock, lease)
    got = await drive(clock, _collect(runner.claims(queued)))
    assert got == ["job-0", "job-1", "job-2"]
    assert [round(t - asked[0], 6) for t in asked] == [0, 0, 1, 1, 2]
    assert runner.admission_over.is_set()


async def test_leave_early_ends_claims_once_all_that_remains_is_held_by_live_runners() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.left = [(5, 0)]

    async def queued() -> AsyncIterator[JobRow]:
        for row in ():
            yield row

    runner, _, _ = _runner(clock, lease, leave_early=True)
    assert await drive(clock, _collect(runner.claims(queued))) == []
    assert clock.monotonic() == 1000.0  # no wait: nothing free, nothing to adopt


async def test_claims_end_when_admission_stops() -> None:
    """A stop of admission (budget, a fatal answer) ends the wait for others' work."""
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.left = [(5, 5)]

    async def queued() -> AsyncIterator[JobRow]:
        for row in ():
            yield row

    runner, stops, _ = _runner(clock, lease)
    claims = asyncio.ensure_future(_collect(runner.claims(queued)))
    await clock.advance(10.0)
    assert not claims.done()
    stops.request(Stop(StopKind.BUDGET, "budget"))
    assert await drive(clock, claims) == []


async def test_adoption_hands_paid_rows_to_the_follower_and_the_lander() -> None:
    """A dead runner's running tasks go to the follower, its results to the lander, and
    paid rows nobody owns the same way; told in one line; the loop ends with admission."""
    clock = FakeClock()
    lease = FakeLease(clock)
    running, landed = _row(1, JobState.SUBMITTED), _row(2, JobState.SUCCEEDED)
    lease.adoptions = [Adoption(dead=7, followed=[running, landed], requeued=2, released=1)]
    lease.orphans = [replace(_row(3, JobState.SUBMITTED), task_id="task-3")]
    runner, _, events = _runner(clock, lease)
    followed: list[str] = []
    land_tx, land_rx = anyio.create_memory_object_stream[Fetch](10)

    async def end_admission() -> None:
        await clock.sleep(2.5)
        runner.admission_over.set()

    async def both() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                runner.adopting(lambda rows: followed.extend(r.id for r in rows), land_tx)
            )
            tg.create_task(end_admission())

    await drive(clock, both())
    with land_rx:
        fetches = [f async for f in land_rx]
    assert followed == ["job-1", "job-3"]
    assert [(f.id, f.task_id, f.result_urls) for f in fetches] == [
        ("job-2", "task-2", ("https://r/1.mp4",))
    ]
    assert runner.adopted == 2 and runner.requeued == 2
    [told] = events.of("warning")
    assert "runner 7 stopped renewing its lease" in told.data["message"]


async def test_the_sweep_wakes_when_another_runners_lease_and_grace_run_out() -> None:
    """Sweeps come every third of a lease, and one comes right when another runner's
    lease and grace run out (not up to a period later): a runner killed just after it
    renewed is adopted within lease + grace of its death. One already due but not taken
    is looked at again after a tenth of a period, not in a spin."""
    clock = FakeClock()
    lease = FakeLease(clock)
    start = clock.monotonic()
    lease.others_due = start + 2.5  # the other's lease + grace, as the database says
    runner, _, _ = _runner(clock, lease)
    land_tx, _land_rx = anyio.create_memory_object_stream[Fetch](10)

    async def end_admission() -> None:
        await clock.sleep(2.9)
        runner.admission_over.set()

    async def both() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(runner.adopting(lambda rows: None, land_tx))
            tg.create_task(end_admission())

    await drive(clock, both())
    at = [round(t - start, 3) for t in lease.sweeps]
    period = LEASE / 3
    assert at[:3] == [period, 2.0, 2.52], at  # a period, a period, then the other's end
    assert at[3] == round(2.52 + period / 10, 3), at  # still due: a tenth of a period
    _land_rx.close()


async def test_leaving_gives_back_unless_the_lease_was_lost() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    runner, _, _ = _runner(clock, lease)
    lease.lost = True
    await runner.leave()
    assert not lease.gone
    lease.lost = False
    await runner.leave()
    assert lease.gone


async def test_a_runner_leaves_without_paid_tasks_of_a_key_it_lacks_and_says_so() -> None:
    """Nothing this runner can do is left, but paid tasks of another key wait for a
    runner given it: it leaves (it cannot poll them) and tells how many wait."""
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.left = [(0, 0)]
    lease.foreign = 3

    async def queued() -> AsyncIterator[JobRow]:
        for row in ():
            yield row

    runner, _, events = _runner(clock, lease)
    assert await drive(clock, _collect(runner.claims(queued))) == []
    (warned,) = [e for e in events.of("warning") if "key this runner" in getattr(e, "message", "")]
    assert getattr(warned, "message", "").startswith("3 paid task(s)")


async def test_stray_tasks_are_read_until_they_end_and_their_results_kept() -> None:
    """A stray task (a late task id of a runner whose row was adopted) is paid: the job's
    owner reads it with the key that created it until it ends, then keeps its end and
    result URLs for the manifest; a read that fails waits for the next period."""
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.stray_tasks = [("task-s", "job-1", "veo3-fast", "fp-b")]
    answers: list[TaskStatus | Exception] = [
        TaskStatus("task-s", "processing"),
        OSError("the API does not answer"),
        TaskStatus("task-s", "success", result_urls=("https://r/1.mp4",)),
    ]
    asked: list[tuple[str, str, str | None]] = []

    async def poll(model: str, task_id: str, key_fp: str | None) -> TaskStatus:
        asked.append((model, task_id, key_fp))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    runner, _, _ = _runner(clock, lease)
    for _ in range(4):
        await runner.follow_strays(poll)
    assert asked == [("veo3-fast", "task-s", "fp-b")] * 3
    assert lease.settled == {"task-s": ("success", ("https://r/1.mp4",))}
    assert runner.strays_settled == 1


async def test_strays_are_read_after_admission_while_the_run_follows_tasks() -> None:
    """Admission over early (nothing left to claim), the run still follows its tasks for
    a while: a stray is read every period until it ends (its URLs kept), not left
    "pending" in the manifest for want of a read; once the run has nothing to follow,
    one last read, and the loop ends."""
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.stray_tasks = [("task-s", "job-1", "veo3-fast", None)]
    reads: list[float] = []

    async def poll(model: str, task_id: str, key_fp: str | None) -> TaskStatus:
        reads.append(clock.monotonic())
        if len(reads) < 3:
            return TaskStatus(task_id, "processing")
        return TaskStatus(task_id, "success", result_urls=("https://r/s.mp4",))

    runner, _, _ = _runner(clock, lease)
    runner.admission_over.set()
    land_tx, land_rx = anyio.create_memory_object_stream[Fetch](10)
    following_until = clock.monotonic() + 10.0
    await drive(
        clock,
        runner.adopting(
            lambda rows: None, land_tx, poll, busy=lambda: clock.monotonic() < following_until
        ),
    )
    land_rx.close()
    assert len(reads) == 3
    assert lease.settled == {"task-s": ("success", ("https://r/s.mp4",))}
    assert clock.monotonic() <= following_until + LEASE / 3  # ends with the following
