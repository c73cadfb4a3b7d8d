"""This run as one of several runners of a campaign whose journal is in PostgreSQL.

The journal keeps the SQL (:mod:`~apixo_batch.journal.pg.lease`); this module keeps
the runner's clockwork:

* **the heartbeat** renews the lease every ``lease/3``. A renewal that fails only
  pauses submits (the fence refuses every mark meanwhile); the run stops, exit 75
  ("another runner took over; nothing lost"), once the lease was taken over or has
  not been renewed for ``lease + grace``, after which another runner may adopt its
  work. The fence, not this stop, is what keeps a submit from leaving.
* **adoption** every ``lease/3``: a dead runner's paid rows become this run's, its
  tasks followed and its results fetched, never submitted again; its submits in doubt
  go back to the queue flagged, for any runner to claim. Paid rows nobody owns (a
  runner that left before its tasks ended) are taken the same way.
* **claims**: admission reads queued rows by claiming them a few at a time. When none
  is free, the run waits while other runners still hold unfinished work (it may have
  to adopt it, or their claims may come back), and leaves once the campaign has
  nothing left for it (``--leave-early``: once what remains is all live runners').
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from anyio.abc import ObjectSendStream

from ..apixo.client import TaskStatus
from ..clock import Clock, wait_until
from ..events import Emitter, Warned
from ..journal import JobRow, JobState, Lease
from .lander import Fetch, fetch_of
from .stop import Level, Stop, StopKind, Stops

__all__ = ["FENCED_REASON", "Poll", "Runner"]

#: one status read of a task: (model, task id, key fingerprint; None: the run's key)
Poll = Callable[[str, str, str | None], Awaitable[TaskStatus]]

FENCED_REASON = "another runner took over; nothing lost"
#: a sweep wakes this long after another runner's lease and grace ran out (the database's
#: clock and ours agree on a duration, not on this side of an instant)
_PAST_DUE_S = 0.02
FENCED_STEP = (
    "nothing to do: the runners still running finish the campaign (or run the same "
    "command again to join it)"
)


class Runner:
    """The lease of this run and what keeps it (module docstring)."""

    def __init__(
        self,
        lease: Lease,
        *,
        clock: Clock,
        stops: Stops,
        emit: Emitter,
        leave_early: bool = False,
    ) -> None:
        self.lease = lease
        self._clock = clock
        self._stops = stops
        self._emit = emit
        self._leave_early = leave_early
        self.period = lease.lease_s / 3
        #: admission is over (no claim will come): adoption has nobody left to hand to
        self.admission_over = asyncio.Event()
        self._stopping = asyncio.Event()
        stops.on(Level.ADMISSION, self._stopping.set)
        #: rows of dead runners this run took over, and submits of theirs it requeued
        self.adopted = 0
        self.requeued = 0
        #: stray tasks followed to their end here (their results listed in the manifest)
        self.strays_settled = 0

    async def _nap(self, event: asyncio.Event, seconds: float | None = None) -> None:
        """One period (or ``seconds``) on the run's clock, or less should ``event`` be
        set meanwhile."""
        waiter = asyncio.ensure_future(event.wait())
        nap = self.period if seconds is None else seconds
        try:
            await wait_until(self._clock, {waiter}, self._clock.monotonic() + nap)
        finally:
            waiter.cancel()

    # -- the lease ------------------------------------------------------------
    async def heartbeat(self) -> None:
        """Renew until cancelled; stop the run once the lease is lost for good. A renewal
        that hangs (a link that drops packets rather than refusing them) delays no beat:
        the term is checked every period whether or not it came back."""
        renewing: asyncio.Future[None] | None = None
        try:
            while True:
                await self._clock.sleep(self.period)
                if renewing is None or renewing.done():
                    renewing = asyncio.ensure_future(self._renew())
                    # The term is read once it came back, or half a period on.
                    await wait_until(
                        self._clock, {renewing}, self._clock.monotonic() + self.period / 2
                    )
                if self.lease.past_term():
                    self._stops.request(Stop(StopKind.FENCED, FENCED_REASON, next_step=FENCED_STEP))
                    return
        finally:
            if renewing is not None:
                renewing.cancel()

    async def _renew(self) -> None:
        # A renewal that fails (the database away) is one missed: the fence holds the
        # submits meanwhile, and the term decides when to give up.
        with contextlib.suppress(Exception):
            await self.lease.renew()

    async def leave(self) -> None:
        """Claims, submits in doubt and paid rows given back, the runner shown stopped."""
        if not self.lease.lost:
            with contextlib.suppress(Exception):
                await self.lease.leave()

    # -- claims ---------------------------------------------------------------
    async def release(self, row: JobRow) -> None:
        """A claimed row this run will not send after all (``--limit`` reached, admission
        ended on it): free again for any runner now, not when this one leaves."""
        with contextlib.suppress(Exception):
            await self.lease.release([row.id])

    async def claims(self, queued: Callable[[], AsyncIterator[JobRow]]) -> AsyncIterator[JobRow]:
        """The rows of ``queued()`` (each call claims what is free now), again and again
        while other runners hold unfinished work, until the campaign has nothing left
        for this run or admission stops."""
        try:
            while not self._stopping.is_set():
                got = 0
                rows = queued()
                try:
                    async for row in rows:
                        got += 1
                        yield row
                finally:
                    aclose = getattr(rows, "aclose", None)
                    if aclose is not None:
                        await aclose()  # its unasked claims given back
                if got:
                    continue  # rows may have been freed meanwhile: ask again at once
                if await self._nothing_left():
                    return
                await self._nap(self._stopping)
        finally:
            self.admission_over.set()

    async def _nothing_left(self) -> bool:
        try:
            elsewhere, unheld = await self.lease.remaining()
            if not (elsewhere == 0 or (self._leave_early and unheld == 0)):
                return False
            waiting = await self.lease.foreign_paid()
        except Exception:
            return False  # the database is away: look again a period later
        if waiting:
            # Leaving is right (this run cannot poll them), but they are paid: say where.
            self._emit(
                Warned(
                    message=f"{waiting} paid task(s) were created with a key this runner "
                    "was not given: they wait in the journal (never submitted again) "
                    "for a runner given that key"
                )
            )
        return True

    # -- adoption -------------------------------------------------------------
    async def adopting(
        self,
        follow: Callable[[list[JobRow]], None],
        land: ObjectSendStream[Fetch],
        poll: Poll | None = None,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """Every ``lease/3`` until admission is over: dead runners' paid rows, and paid
        rows nobody owns, taken over (``follow`` the submitted, ``land`` the succeeded);
        stray tasks of its jobs read (``poll``) until they end: after admission too,
        while the run still follows tasks (``busy``), and once more as it ends."""
        await self._sweeps(follow, land, poll)
        if poll is None:
            return
        while busy() and not self._stops.reached(Level.FOLLOW):
            await self.follow_strays(poll, after_admission=True)
            await self._clock.sleep(self.period)
        if not self._stops.reached(Level.FOLLOW):
            await self.follow_strays(poll, after_admission=True)

    async def _sweeps(
        self,
        follow: Callable[[list[JobRow]], None],
        land: ObjectSendStream[Fetch],
        poll: Poll | None,
    ) -> None:
        async with land:
            nap = self.period
            while not self.admission_over.is_set():
                await self._nap(self.admission_over, nap)
                if self.admission_over.is_set() or self._stops.reached(Level.FOLLOW):
                    return
                nap = self.period
                try:
                    rows = await self._take_over()
                    nap = await self._next_sweep()
                except Exception:
                    continue  # the database is away: nothing taken over; next period
                follow([r for r in rows if r.state is JobState.SUBMITTED])
                for row in rows:
                    if row.state is JobState.SUCCEEDED:
                        await land.send(fetch_of(row))
                if poll is not None:
                    await self.follow_strays(poll)

    async def _next_sweep(self) -> float:
        """Seconds to the next sweep: a period, or less when another runner's lease and
        grace run out sooner (it is adopted then, not up to a period later: a runner
        killed just after it renewed is adopted within lease + grace of its death)."""
        due = await self.lease.next_adoption_s()
        if due is None:
            return self.period
        # Never a spin: a runner due but not taken (another adopter holds it) waits a bit.
        return min(self.period, max(self.period / 10, due + _PAST_DUE_S))

    async def follow_strays(self, poll: Poll, *, after_admission: bool = False) -> None:
        """One read of each stray task this runner may follow (a task id that came back to
        a runner cut off while its row was adopted: paid, never the job's): once it has
        ended, its end and result URLs are kept for the manifest. Failures wait for the
        next period. Cut short once admission is over (``after_admission``: once a
        period has gone by), so that no read holds up the end of the run."""
        try:
            strays = await self.lease.strays()
        except Exception:
            return
        end = self._clock.monotonic() + self.period
        for task_id, _job, model, key_fp in strays:
            if self.admission_over.is_set() and (
                not after_admission or self._clock.monotonic() >= end
            ):
                return
            # At most a period each: a read held up (a paused bucket, retries) must not
            # hold up adoption, nor the end of the run.
            read = asyncio.ensure_future(poll(model, task_id, key_fp))
            await wait_until(self._clock, {read}, self._clock.monotonic() + self.period)
            if not read.done():
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
                continue
            try:
                status = read.result()
                if status.finished:
                    await self.lease.settle_stray(
                        task_id, status.state, status.result_urls, status.fail_code
                    )
                    self.strays_settled += 1
            except Exception:
                continue

    async def _take_over(self) -> list[JobRow]:
        rows: list[JobRow] = []
        swept: list[int] = []
        while (taken := await self.lease.adopt(swept)) is not None:
            swept.append(taken.dead)
            self.adopted += len(taken.followed)
            self.requeued += taken.requeued
            if not (taken.followed or taken.requeued or taken.released):
                continue  # nothing of it left to take (it left, or its rows are held)
            self._emit(
                Warned(
                    message=f"runner {taken.dead} stopped renewing its lease: "
                    f"{len(taken.followed)} paid task(s) of its taken over (followed, "
                    f"never submitted again), {taken.requeued} submit(s) in doubt "
                    "queued again (counted as possibly duplicated)"
                )
            )
            rows.extend(taken.followed)
        rows.extend(
            await self.lease.claim_paid(
                [JobState.SUBMITTED.value, JobState.SUCCEEDED.value], mine_too=False
            )
        )
        return rows
