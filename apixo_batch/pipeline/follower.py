"""The follower: every task in flight, until its end is known; then its slot is free.

Tasks come from the submitter's stream (and, at the start, from the journal:
tasks adopted from an earlier run). The poll scheduler decides when each is
polled; in callback mode the receiver's deliveries settle tasks and polls are
the safety net. A callback may come before its submit's answer has been
journaled: it is held as an *early* callback (a future) until the task
arrives on the stream, or for a few seconds at most.

A task's end is journaled (``succeeded`` with its result URLs, or ``failed``),
its slot released, and a success handed to the lander. A task still running
after ``--max-wait`` is left pending (its slot stranded). The follower ends
when its input has closed and nothing is followed, or at once when the key is
refused (a poll can learn nothing more); closing its stream ends the lander's
input from this side.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ..apixo.client import ApixoClient, TaskStatus
from ..apixo.limits import ConcurrencyLimit
from ..apixo.receiver import HandlerResult
from ..catalog.failcodes import classify
from ..catalog.models import RESULT_TTL_S, get_model
from ..clock import Clock, wait_until
from ..defaults import PATIENCE
from ..errors import (
    ApiError,
    ApixoError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from ..events import Emitter, Failed, Pending, Retried, Running, Succeeded, Throttled, Warned
from ..journal import JobRow, JobState, Ledger
from ..planning.completion import CompletionModel
from ..planning.kind import Kind
from ..retry import Patience
from .admission import Permit
from .keypool import KeyPool
from .lander import Fetch
from .scheduler import PollScheduler, Tracked
from .stop import Level, Stop, StopKind, Stops, no_access, refusal_step
from .submitter import Submitted
from .turnaround import Turnaround

__all__ = ["Follower"]

#: consecutive 404s to a status call before a task counts as gone
NOT_FOUND_GIVE_UP = 5
#: what a poll can come to, as ``Follower.polls`` counts them (the metrics' outcomes)
POLL_OUTCOMES = ("running", "finished", "rate-limited", "error", "refused")
#: unscaled seconds between two rounds of polls: the scheduler wakes at most once per
#: round and sends every poll due by then, plus those due within half a round. Polls
#: land on a task's steps a few seconds apart, so a round of a second moves them by
#: half a second at most while bounding wake-ups (bench/compare.py measures the
#: detection delay this leaves)
POLL_GAP_S = 1.0
#: seconds (injected clock, unscaled: it bounds our own journal commit, not APIXO) an
#: early callback waits for its submit's task id before it is answered "unknown"
EARLY_CALLBACK_WAIT_S = 5.0


class SubmitsUnderWay(Protocol):
    """What the follower asks of the submitter: may a task id still be on its way?"""

    @property
    def under_way(self) -> int: ...


class Follower:
    """Follows tasks to their end; releases their slots; hands successes to the lander."""

    def __init__(
        self,
        client: ApixoClient,
        ledger: Ledger,
        *,
        clock: Clock,
        stops: Stops,
        emit: Emitter,
        slots: ConcurrencyLimit,
        completions: CompletionModel,
        time_scale: float,
        submits: SubmitsUnderWay | None = None,
        patience: Patience = PATIENCE,
        turnaround: Turnaround | None = None,
        pool: KeyPool | None = None,
    ) -> None:
        self._client = client
        #: several keys: each task is polled with the key that created it
        self._pool = pool if pool is not None and pool.pooled else None
        self._key_of: dict[str, str | None] = {}
        self._unreadable: set[str] = set()  # pool keys that no longer read their tasks
        self._ledger = ledger
        self._clock = clock
        self._stops = stops
        self._emit = emit
        self._slots = slots
        self.completions = completions
        self._time_scale = time_scale
        #: --max-wait: how long this run follows one task before leaving it pending
        self._patience = patience
        self._submits = submits
        self._turnaround = turnaround or Turnaround()
        self.scheduler = PollScheduler(
            clock=clock,
            poll=self._poll,
            completions=completions,
            time_scale=time_scale,
            is_tight=client.bucket.is_tight,
            poll_rate=self._poll_rate,
            min_gap=max(0.01, POLL_GAP_S * time_scale),
            early=POLL_GAP_S * time_scale / 2,
            on_empty=self._maybe_done,
        )
        self._permits: dict[str, Permit] = {}
        self._early: dict[str, tuple[TaskStatus, asyncio.Future[None]]] = {}
        self._seen_running: set[str] = set()
        self._left: set[str] = set()  # tasks left pending at --max-wait in this run
        self._out: ObjectSendStream[Fetch] | None = None
        self._input_open = True
        self._halted = False
        self._done = asyncio.Event()  # input closed and nothing followed, or halted
        self.retries = 0
        #: polls answered so far, by outcome: running, finished, rate-limited, error, refused
        self.polls: dict[str, int] = dict.fromkeys(POLL_OUTCOMES, 0)
        stops.on(Level.FOLLOW, self._halt)

    @property
    def tracked(self) -> int:
        return self.scheduler.tracked

    def adopt(self, rows: list[JobRow]) -> None:
        """Tasks an earlier run submitted: followed again, their slots counted (even past
        the limit), the first poll as soon as each could plausibly be done."""
        now_wall, now_mono = self._clock.wall(), self._clock.monotonic()
        for row in rows:
            slots = self._slots
            if self._pool is not None:
                account = self._pool.get(row.key_fp)
                assert account is not None  # the start-up kept other keys' tasks out
                account.adopted += 1
                slots = account.slots
            slots.adopt()
            self._track(row, Permit(slots, running=True), now_wall, now_mono, adopted=True)

    async def run(
        self, submitted: ObjectReceiveStream[Submitted], out: ObjectSendStream[Fetch]
    ) -> None:
        self._out = out
        async with out, submitted, asyncio.TaskGroup() as tg:
            polling = tg.create_task(self.scheduler.run())
            try:
                async for item in submitted:
                    await self._take(item)
                self._input_open = False
                self._maybe_done()
                await self._done.wait()
            finally:
                self.scheduler.close()
                # A poll still out is for a task settled some other way, or the run is
                # stopping: its answer is not needed.
                polling.cancel()

    def _halt(self) -> None:
        """The key is refused, or the run is interrupted: no more polls."""
        self._halted = True
        self.scheduler.close()
        self._done.set()

    def _maybe_done(self) -> None:
        if not self._input_open and self.scheduler.tracked == 0:
            self._done.set()

    def _poll_rate(self) -> float:
        # Polls may use what submits leave: most of the bucket once submits are over, or
        # while every slot is taken (a submit then waits for an end, not for a request:
        # one per task ending, and the bucket serves submits first anyway).
        slots_bind = self._slots.in_flight >= self._slots.cap
        share = 0.9 if not self._input_open or slots_bind else 0.6
        if self._pool is not None:
            # Each key polls its own tasks through its own bucket: their rates add up.
            return sum(a.bucket.rate_per_s for a in self._pool.accounts) * share
        bucket = self._client.bucket
        if "status" in bucket.routes:
            # Polls in a window of their own: submits take none of it.
            return bucket.route_rate_per_s("status") * 0.9
        return bucket.rate_per_s * share

    async def _take(self, item: Submitted) -> None:
        if self._halted:
            return  # journaled `submitted`: the next run follows it
        row = item.row
        t = self._track(row, item.permit, self._clock.wall(), item.at_mono, adopted=False)
        early = self._early.pop(t.task_id, None)
        if early is not None:
            status, seen = early
            if await self._finished(t, status, via="callback"):
                self.scheduler.forget(t.task_id)
            if not seen.done():
                seen.set_result(None)

    def _track(
        self, row: JobRow, permit: Permit, now_wall: float, now_mono: float, *, adopted: bool
    ) -> Tracked:
        spec = get_model(row.model)
        inp = row.input
        if spec is None or row.task_id is None:
            raise ApixoError(f"job {row.id}: model {row.model!r} is not in the catalog")
        age = max(0.0, now_wall - (row.submitted_at or now_wall))
        tracked = Tracked(
            job_id=row.id,
            filename=row.out_name,
            task_id=row.task_id,
            model=row.model,
            clock_key=Kind.of(row.model, inp).key,
            model_clock=spec.clock(inp),
            submitted_at=now_mono - age,
            max_wait=self._patience.start(self._clock, since=now_mono),
            callback_mode=row.request_type == "callback" and not adopted,
        )
        self._permits[tracked.task_id] = permit
        if self._pool is not None:
            self._key_of[tracked.task_id] = row.key_fp
        due = None
        if adopted:
            # Resuming: the first poll comes as soon as the task could plausibly be done.
            first = tracked.submitted_at + self.scheduler.first_delay(tracked) * self._time_scale
            due = max(now_mono, first)
        self.scheduler.add(tracked, due=due)
        return tracked

    # -- polls ----------------------------------------------------------------
    async def _poll(self, t: Tracked) -> bool:
        """One poll of ``t``; True when it is no longer to be followed."""
        if self._halted or t.settled:
            return False  # no request: the run is ending, or a callback is settling it
        if t.max_wait.expired():
            self._emit(
                Pending(
                    t.job_id,
                    task_id=t.task_id,
                    model=t.model,
                    message=f"still running after --max-wait {self._patience.in_minutes:g} min; "
                    "left pending for the next run or `download`",
                )
            )
            self._permits.pop(t.task_id).strand()
            self._left.add(t.task_id)
            return True
        try:
            status = await self._client_for(t).status(t.model, t.task_id)
        except RateLimited as exc:
            self.polls["rate-limited"] += 1
            self._emit(Throttled(t.job_id, retry_after=exc.retry_after))
            return False
        except (ServerError, TransportError) as exc:
            self.polls["error"] += 1
            self.retries += 1
            self._emit(Retried(t.job_id, call="status", error=str(exc)))
            return False
        except ApiError as exc:
            self.polls["refused"] += 1
            return await self._poll_refused(t, exc)
        t.not_found = 0
        self.polls["finished" if status.finished else "running"] += 1
        if not status.finished:
            if t.job_id not in self._seen_running and status.state == "processing":
                self._seen_running.add(t.job_id)
                self._emit(Running(t.job_id, task_id=t.task_id, model=t.model))
            return False
        return await self._finished(t, status, via="poll")

    def _client_for(self, t: Tracked) -> ApixoClient:
        if self._pool is None:
            return self._client
        account = self._pool.get(self._key_of.get(t.task_id))
        return account.client if account is not None and account.client else self._client

    def _unread(self, t: Tracked, exc: ApiError) -> bool:
        """A pool's key refuses to read its own task: the task is left pending (journaled
        ``submitted``, never sent again: another key could not read it either), told
        once per key; the other keys' tasks go on."""
        assert self._pool is not None
        fp = self._key_of.get(t.task_id)
        account = self._pool.get(fp)
        name = account.fingerprint if account is not None else str(fp)
        if name not in self._unreadable:
            self._unreadable.add(name)
            if account is not None:
                # Tasks it created now could not be followed either: it submits no more.
                self._pool.retire(account, f"{exc.status}: {exc.api_message or exc}")
            self._emit(
                Warned(
                    key=name,
                    message=f"key {name} no longer reads its tasks ({exc.status}: "
                    f"{exc.api_message or exc}); they stay in flight in the journal, never "
                    "submitted again (a run with that key follows them)",
                )
            )
        self._permits.pop(t.task_id).strand()
        self._left.add(t.task_id)
        return True

    async def _poll_refused(self, t: Tracked, exc: ApiError) -> bool:
        if exc.fatal and self._pool is not None:
            return self._unread(t, exc)
        if exc.fatal:
            # Without a working key nothing more can be learned in this run.
            reason = f"the API refused a poll: {exc}"
            if isinstance(exc, Forbidden):
                reason = f"the API refused a poll: {no_access('status', t.model)} ({exc})"
            self._stops.request(
                Stop(StopKind.KEY_REFUSED, reason, fatal=str(exc), next_step=refusal_step(exc))
            )
            return False
        if isinstance(exc, NotFound):
            t.not_found += 1
            if t.not_found >= NOT_FOUND_GIVE_UP:
                # Asked again and again, APIXO says the task does not exist: provably gone.
                gone = TaskStatus(
                    task_id=t.task_id,
                    state="failed",
                    fail_code="TASK_NOT_FOUND",
                    fail_msg=f"APIXO answered 404 for this task {t.not_found} times",
                )
                return await self._finished(t, gone, via="poll")
        self.retries += 1
        self._emit(Retried(t.job_id, call="status", error=str(exc)))
        return False

    # -- callbacks ------------------------------------------------------------
    async def on_callback(self, status: TaskStatus) -> HandlerResult:
        """A callback passed the token check: settle its task, or hold it for its submit."""
        t = self.scheduler.get(status.task_id)
        row: JobRow | None = None
        if t is None:
            if status.task_id in self._left:
                return "duplicate"  # left pending at --max-wait: the next run follows it
            row = await self._ledger.by_task(status.task_id)
            t = self.scheduler.get(status.task_id)  # it may have arrived meanwhile
        if t is None:
            under_way = self._submits is not None and self._submits.under_way > 0
            if row is not None:
                # Journaled but not followed: settled already, left pending, or its task
                # id is still on its way here (a submit, or the stream from the submitter).
                on_its_way = row.state is JobState.SUBMITTED and (under_way or self._input_open)
                if not (on_its_way and status.finished):
                    return "duplicate"
                return await self._hold_early(status)
            if not under_way:
                return "unknown"
            if not status.finished:
                return "accepted"  # nothing to settle; the final callback or a poll will come
            return await self._hold_early(status)
        if not status.finished:
            return "accepted"
        if t.settled:
            return "duplicate"
        if await self._finished(t, status, via="callback"):
            self.scheduler.forget(t.task_id)
        return "accepted"

    async def _hold_early(self, status: TaskStatus) -> HandlerResult:
        """The submit's answer may still be on its way to the journal: wait for it rather
        than lose the callback (the task's arrival on the stream settles it)."""
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._early[status.task_id] = (status, seen)
        deadline = self._clock.monotonic() + EARLY_CALLBACK_WAIT_S
        try:
            if not await wait_until(self._clock, {seen}, deadline):
                return "unknown"
        finally:
            if self._early.get(status.task_id, (None, None))[1] is seen:
                del self._early[status.task_id]
        return "accepted"

    # -- the end of a task ----------------------------------------------------
    async def _finished(self, t: Tracked, status: TaskStatus, *, via: str) -> bool:
        """Settle ``t`` once; False if a callback and a poll raced and the other won."""
        if t.settled:
            return False
        t.settled = True
        # Its end is known now (the answer was just read, or the callback just came).
        t.known_at = self._clock.monotonic()
        try:
            await self._settle(t, status, via)
        except BaseException:
            # Not journaled (the journal failed): a later poll or callback tries again.
            t.settled = False
            raise
        return True

    def _free(self, t: Tracked) -> None:
        """The task has ended at APIXO: its slot goes to the next submit now, before the
        journal's commit (the task is polled again if that commit is lost)."""
        permit = self._permits.pop(t.task_id, None)
        if permit is not None:
            self._turnaround.ended(t.known_at)
            permit.release()

    async def _settle(self, t: Tracked, status: TaskStatus, via: str) -> None:
        self._seen_running.discard(t.job_id)
        if status.state == "success":
            await self._succeeded(t, status, via)
        else:
            written = self._ledger.record_failure(
                t.job_id,
                fail_code=status.fail_code or "UNKNOWN",
                fail_msg=status.fail_msg or "",
                completed_at=(status.complete_time_ms or 0) / 1000.0 or self._clock.wall(),
                via=via,
            )
            self._free(t)
            await written
            self._emit(
                Failed(
                    t.job_id,
                    task_id=t.task_id,
                    model=t.model,
                    fail_code=status.fail_code,
                    fail_msg=status.fail_msg,
                    fail_class=_fail_class(status.fail_code),
                )
            )

    async def _succeeded(self, t: Tracked, status: TaskStatus, via: str) -> None:
        now = self._clock.wall()
        cost_ms = status.cost_time_ms
        completed = (status.complete_time_ms / 1000.0) if status.complete_time_ms else now
        seconds = (
            cost_ms / 1000.0 if cost_ms else self._clock.monotonic() - t.submitted_at
        ) / self._time_scale
        written = self._ledger.record_success(
            t.job_id,
            result_urls=status.result_urls,
            completed_at=completed,
            expires_at=completed + RESULT_TTL_S * self._time_scale,
            cost_time_ms=cost_ms,
            via=via,
            clock_key=t.clock_key,
            seconds=seconds,
        )
        self._free(t)
        self.completions.add(t.clock_key, seconds)
        await written
        self._emit(
            Succeeded(
                t.job_id,
                task_id=t.task_id,
                model=t.model,
                via=via,
                urls=len(status.result_urls),
                completed_at=completed if status.complete_time_ms else None,
            )
        )
        assert self._out is not None
        fetch = Fetch(
            t.job_id, t.model, t.filename, status.result_urls, fresh=True, task_id=t.task_id
        )
        try:
            await self._out.send(fetch)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # A callback after the follower ended (key refused, interrupt): the result is
            # journaled `succeeded`, for `download` or the next run.
            pass


def _fail_class(code: str | None) -> str | None:
    known = classify(code)
    return known.value if known is not None else None
