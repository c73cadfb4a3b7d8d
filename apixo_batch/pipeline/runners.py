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
from collections.abc import AsyncIterator, Callable

from anyio.abc import ObjectSendStream

from ..clock import Clock, wait_until
from ..events import Emitter, Warned
from ..journal import JobRow, JobState, Lease
from .lander import Fetch, fetch_of
from .stop import Level, Stop, StopKind, Stops

__all__ = ["FENCED_REASON", "Runner"]

FENCED_REASON = "another runner took over; nothing lost"
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

    async def _nap(self, event: asyncio.Event) -> None:
        """One period on the run's clock, or less should ``event`` be set meanwhile."""
        waiter = asyncio.ensure_future(event.wait())
        try:
            await wait_until(self._clock, {waiter}, self._clock.monotonic() + self.period)
        finally:
            waiter.cancel()

    # -- the lease ------------------------------------------------------------
    async def heartbeat(self) -> None:
        """Renew until cancelled; stop the run once the lease is lost for good."""
        while True:
            await self._clock.sleep(self.period)
            # A renewal that fails (the database away) is one missed: the fence holds the
            # submits meanwhile, and the term below decides when to give up.
            with contextlib.suppress(Exception):
                await self.lease.renew()
            if self.lease.past_term():
                self._stops.request(Stop(StopKind.FENCED, FENCED_REASON, next_step=FENCED_STEP))
                return

    async def leave(self) -> None:
        """Claims, submits in doubt and paid rows given back, the runner shown stopped."""
        if not self.lease.lost:
            with contextlib.suppress(Exception):
                await self.lease.leave()

    # -- claims ---------------------------------------------------------------
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
        except Exception:
            return False  # the database is away: look again a period later
        return elsewhere == 0 or (self._leave_early and unheld == 0)

    # -- adoption -------------------------------------------------------------
    async def adopting(
        self,
        follow: Callable[[list[JobRow]], None],
        land: ObjectSendStream[Fetch],
    ) -> None:
        """Every ``lease/3`` until admission is over: dead runners' paid rows, and paid
        rows nobody owns, taken over (``follow`` the submitted, ``land`` the succeeded)."""
        async with land:
            while not self.admission_over.is_set():
                await self._nap(self.admission_over)
                if self.admission_over.is_set() or self._stops.reached(Level.FOLLOW):
                    return
                try:
                    rows = await self._take_over()
                except Exception:
                    continue  # the database is away: nothing taken over; next period
                follow([r for r in rows if r.state is JobState.SUBMITTED])
                for row in rows:
                    if row.state is JobState.SUCCEEDED:
                        await land.send(fetch_of(row))

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
