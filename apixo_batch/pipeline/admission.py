"""Admission: queued jobs become permits to submit, in the order jobs should start.

Meters compose, aiometer-style: each job passes every meter in turn, and a
meter may let it through, skip it, or end admission (what earlier meters
granted it is then given back). The budget meter holds the estimated spend: a
job that does not fit what is left of it is skipped and the next ones are still
weighed. The slot meter, always last, holds the concurrency permit, which
travels with the job through the submitter to the follower, who releases it
when the task ends (or strands it when the task is left running past
``--max-wait``). Admission ends when its rows run out (then each meter may tell
why the jobs it skipped stay queued), when a meter ends it, or when the run
stops (the slots close and the wait for one ends); closing its stream ends the
submitter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from anyio.abc import ObjectSendStream

from ..apixo.limits import ConcurrencyLimit, SlotsClosed, SlotsStranded
from ..events import Emitter, Warned
from ..journal import JobRow, JobState, Ledger
from ..planning.completion import CompletionModel
from ..planning.forecast import expected_generation_s
from ..planning.order import longest_first
from ..planning.selection import Selection
from .keypool import KeyAccount, KeyPool
from .stop import BUDGET_STEP, Level, Stop, StopKind, Stops

__all__ = [
    "Admission",
    "Admitted",
    "BudgetMeter",
    "LimitMeter",
    "Meter",
    "Permit",
    "PoolMeter",
    "SlotMeter",
    "Verdict",
    "queued_in_start_order",
    "selected",
]


#: queued jobs read from the journal per page
ADMIT_PAGE = 500
#: ids of jobs that did not fit the budget named in its stop (the rest are counted)
SHOWN_UNFIT = 5


def queued_in_start_order(
    ledger: Ledger, order: str, completions: CompletionModel
) -> AsyncIterator[JobRow]:
    """Queued jobs in the order they should start (``--order``, :mod:`~apixo_batch.planning.order`):
    the longest expected generations first, or the job file's order."""
    if order == "file":
        return ledger.rows(JobState.QUEUED, page=ADMIT_PAGE, file_only=True)
    expected = partial(expected_generation_s, completions)
    return ledger.queued_by_kind(partial(longest_first, expected_s=expected), page=ADMIT_PAGE)


async def selected(rows: AsyncIterator[JobRow], selection: Selection) -> AsyncIterator[JobRow]:
    """The rows ``selection`` picks by id and model (``--only``, ``--model``); the rest are
    left queued, untouched."""
    try:
        async for row in rows:
            if selection.picks(row.id, row.model):
                yield row
    finally:
        aclose = getattr(rows, "aclose", None)
        if aclose is not None:
            await aclose()


class Permit:
    """One concurrency slot, taken for one job; released (or stranded) exactly once."""

    __slots__ = ("_limit", "_running", "_used")

    def __init__(self, limit: ConcurrencyLimit, *, running: bool = False) -> None:
        self._limit = limit
        self._used = False
        self._running = running  # its task exists at APIXO

    def running(self) -> None:
        """Its task exists now (a task id came back): it holds one of the account's slots."""
        if not self._running:
            self._running = True
            self._limit.running()

    def release(self) -> None:
        """The task ended, or was never created: the slot is free again."""
        if not self._used:
            self._used = True
            self._limit.release(running=self._running)

    async def wait_for_a_slot(self) -> None:
        """The account's slots are full (a 429 on submit): keep this permit and wait until a
        task ends and frees one. Raises :class:`SlotsClosed` once none will come."""
        self._limit.full()
        await self._limit.freed()

    def strand(self) -> None:
        """The task still runs at APIXO but is no longer followed: its slot stays taken."""
        if not self._used:
            self._used = True
            self._limit.strand()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A job allowed to start, with its slot (and, in a pool, the key whose slot it is)."""

    row: JobRow
    permit: Permit
    account: KeyAccount | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A meter's answer for one job: let it through, skip it, or end admission."""

    kind: Literal["admit", "skip", "end"]
    #: why admission ends (with ``end``); None: it ends because the run stops anyway
    stop: Stop | None = None


ADMIT = Verdict("admit")
SKIP = Verdict("skip")


class Meter(Protocol):
    """One limit on starting jobs (aiometer's meters): asked for every job, in order."""

    async def admit(self, row: JobRow) -> Verdict:
        """May ``row`` start? May wait (for a slot); takes what it grants."""
        ...

    def undo(self, row: JobRow) -> None:
        """Give back what :meth:`admit` granted ``row``: a later meter refused it."""
        ...

    def finished(self) -> Stop | None:
        """Every row has been weighed: why some stay queued (None: nothing to tell)."""
        ...


class BudgetMeter:
    """``--budget``: admit every job that fits what is left of the cap, skip the others.

    Jobs come in start order; a job fits when the estimated spend plus its price stays
    within the cap. One that does not fit is skipped (it stays queued) and the jobs after
    it are still weighed: a $1.20 job first in line must not keep three $0.30 jobs out of
    a $1.00 budget. Once the rows run out, :meth:`finished` names what did not fit.

    Spend counts every task the journal knows as paid, plus what was admitted in
    this run (a submit handed back is still counted: the estimate stays on the
    safe side). Jobs of unknown price are not admitted under a budget."""

    def __init__(self, budget: float | None, spent: float, emit: Emitter) -> None:
        self.budget = budget
        self.committed = spent
        self._emit = emit
        self._unknown = 0
        #: jobs skipped because they did not fit: how many, and the first few ids
        self.unfit = 0
        self.unfit_ids: list[str] = []

    async def admit(self, row: JobRow) -> Verdict:
        if self.budget is None:
            return ADMIT
        if row.cost_usd is None:
            self._unknown += 1
            if self._unknown == 1:
                self._emit(
                    Warned(
                        message="jobs of unknown price are not submitted under "
                        "--budget (add their price to the job file's prices:)",
                    )
                )
            return SKIP
        if self.committed + row.cost_usd > self.budget + 1e-9:
            self.unfit += 1
            if len(self.unfit_ids) < SHOWN_UNFIT:
                self.unfit_ids.append(f"{row.id} (${row.cost_usd:.2f})")
            return SKIP
        self.committed += row.cost_usd
        return ADMIT

    def undo(self, row: JobRow) -> None:
        if self.budget is not None and row.cost_usd is not None:
            self.committed -= row.cost_usd

    def finished(self) -> Stop | None:
        """Every queued job weighed: the budget stop naming the jobs that did not fit."""
        if self.budget is None or not self.unfit:
            return None
        more = self.unfit - len(self.unfit_ids)
        named = ", ".join(self.unfit_ids) + (f" and {more:,} more" if more else "")
        # Only admission stops: submits already admitted fit the budget.
        reason = (
            f"--budget ${self.budget:.2f} reached (estimated spend ${self.committed:.2f}); "
            f"the remaining jobs stay pending: {self.unfit:,} did not fit: {named}"
        )
        return Stop(StopKind.BUDGET, reason, next_step=BUDGET_STEP)


class LimitMeter:
    """``--limit N``: the first N jobs in the start order, then admission ends (the rest
    stay queued for the next run, which is not a stop: nothing went wrong)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.admitted = 0

    async def admit(self, row: JobRow) -> Verdict:
        if self.limit is None:
            return ADMIT
        if self.admitted >= self.limit:
            return Verdict("end")
        self.admitted += 1
        return ADMIT

    def undo(self, row: JobRow) -> None:
        if self.limit is not None:
            self.admitted -= 1

    def finished(self) -> Stop | None:
        return None  # the jobs past the limit wait for the next run: nothing went wrong


class SlotMeter:
    """A concurrency slot per job: waits for one; ends admission once none can come."""

    def __init__(self, slots: ConcurrencyLimit) -> None:
        self.slots = slots
        self.account: KeyAccount | None = None

    def close(self) -> None:
        self.slots.close()

    async def admit(self, row: JobRow) -> Verdict:
        try:
            await self.slots.acquire()
        except SlotsStranded:
            reason = "tasks past --max-wait hold every concurrency slot"
            return Verdict("end", Stop(StopKind.STRANDED, reason))
        except SlotsClosed:
            return Verdict("end")
        return ADMIT

    def undo(self, row: JobRow) -> None:
        self.slots.release()

    def finished(self) -> Stop | None:
        return None

    def permit(self) -> Permit:
        """The slot just granted, as the permit that travels with the job."""
        return Permit(self.slots)


class PoolMeter:
    """A slot of one key of a pool per job: the key with the most free capacity; waits
    when every key is full; ends admission once no key can submit."""

    def __init__(self, pool: KeyPool) -> None:
        self.pool = pool
        self.account: KeyAccount | None = None  # the key of the slot just granted

    def close(self) -> None:
        self.pool.close()

    async def admit(self, row: JobRow) -> Verdict:
        try:
            self.account = await self.pool.take()
        except SlotsStranded:
            reason = "tasks past --max-wait hold every concurrency slot of every key"
            return Verdict("end", Stop(StopKind.STRANDED, reason))
        except SlotsClosed:
            return Verdict("end")  # stopping, or every key retired (its stop is told)
        return ADMIT

    def undo(self, row: JobRow) -> None:
        if self.account is not None:
            self.account.slots.release()

    def finished(self) -> Stop | None:
        return None

    def permit(self) -> Permit:
        assert self.account is not None
        return Permit(self.account.slots)


class Admission:
    """Turns ``rows`` (in start order) into :class:`Admitted` jobs on ``out``.

    Every job passes each of ``meters`` in turn, then the slot meter, whose permit
    travels with it."""

    def __init__(
        self,
        rows: AsyncIterator[JobRow],
        *,
        meters: Sequence[Meter],
        slots: SlotMeter | PoolMeter,
        stops: Stops,
        unclaim: Callable[[JobRow], Awaitable[None]] | None = None,
    ) -> None:
        self._rows = rows
        #: gives back a claimed row admission ended on (several runners): another
        #: runner may send it, this one never will
        self._unclaim = unclaim
        self._meters = [*meters, slots]
        self._slots = slots
        self._stops = stops
        # A stop closes the slots: a wait for one ends at once, and no more are taken.
        stops.on(Level.ADMISSION, slots.close)

    async def run(self, out: ObjectSendStream[Admitted]) -> None:
        async with out:
            try:
                async for row in self._rows:
                    if not await self._admit(row, out):
                        return
                # Rows run out: a meter that skipped jobs tells why they stay queued.
                for meter in self._meters:
                    stop = meter.finished()
                    if stop is not None:
                        self._stops.request(stop)
            finally:
                aclose = getattr(self._rows, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _admit(self, row: JobRow, out: ObjectSendStream[Admitted]) -> bool:
        """Send ``row`` on, skip it, or end admission (False)."""
        for n, meter in enumerate(self._meters):
            if self._stops.reached(Level.ADMISSION):
                verdict = Verdict("end")
            else:
                verdict = await meter.admit(row)
            if verdict.kind == "admit":
                continue
            for granted in reversed(self._meters[:n]):
                granted.undo(row)
            if verdict.kind == "skip":
                return True
            if verdict.stop is not None:
                self._stops.request(verdict.stop)
            if self._unclaim is not None:
                await self._unclaim(row)
            return False
        permit = self._slots.permit()
        try:
            await out.send(Admitted(row, permit, self._slots.account))
        except BaseException:
            permit.release()
            raise
        return True
