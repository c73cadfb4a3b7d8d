"""Admission: queued jobs become permits to submit, in the order jobs should start.

Meters compose, aiometer-style: each job passes every meter in turn, and a
meter may let it through, skip it, or end admission. The budget meter holds
the estimated spend; the slot meter holds the concurrency permit, which
travels with the job through the submitter to the follower, who releases it
when the task ends (or strands it when the task is left running past
``--max-wait``). Admission ends when its rows run out, when a meter ends it,
or when the run stops (the slots close and the wait for one ends); closing its
stream ends the submitter.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from anyio.abc import ObjectSendStream

from ..events import Emitter
from ..journal import JobRow
from ..limits import ConcurrencyLimit, SlotsClosed, SlotsStranded
from .stop import Level, Stop, StopKind, Stops

__all__ = ["Admission", "Admitted", "BudgetMeter", "Permit", "Verdict"]


class Permit:
    """One concurrency slot, taken for one job; released (or stranded) exactly once."""

    __slots__ = ("_limit", "_used")

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self._limit = limit
        self._used = False

    def release(self) -> None:
        """The task ended, or was never created: the slot is free again."""
        if not self._used:
            self._used = True
            self._limit.release()

    def strand(self) -> None:
        """The task still runs at APIXO but is no longer followed: its slot stays taken."""
        if not self._used:
            self._used = True
            self._limit.strand()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A job allowed to start, with its slot."""

    row: JobRow
    permit: Permit


class Verdict(enum.Enum):
    ADMIT = "admit"
    SKIP = "skip"  # this job may not start, later ones may
    END = "end"  # no job starts any more


class BudgetMeter:
    """``--budget``: admit nothing that would take the estimated spend past the cap.

    Spend counts every task the journal knows as paid, plus what was admitted in
    this run (a submit handed back is still counted: the estimate stays on the
    safe side). Jobs of unknown price are not admitted under a budget."""

    def __init__(self, budget: float | None, spent: float, emit: Emitter) -> None:
        self.budget = budget
        self.committed = spent
        self._emit = emit
        self._unknown = 0

    def check(self, row: JobRow) -> tuple[Verdict, str | None]:
        if self.budget is None:
            return Verdict.ADMIT, None
        if row.cost_usd is None:
            self._unknown += 1
            if self._unknown == 1:
                self._emit(
                    "warning",
                    message="jobs of unknown price are not submitted under "
                    "--budget (add their price to the job file's prices:)",
                )
            return Verdict.SKIP, None
        if self.committed + row.cost_usd > self.budget + 1e-9:
            # Only admission stops: submits already admitted fit the budget.
            return Verdict.END, (
                f"--budget ${self.budget:.2f} reached (estimated spend "
                f"${self.committed:.2f}); the remaining jobs stay pending"
            )
        self.committed += row.cost_usd
        return Verdict.ADMIT, None


class Admission:
    """Turns ``rows`` (in start order) into :class:`Admitted` jobs on ``out``."""

    def __init__(
        self,
        rows: AsyncIterator[JobRow],
        *,
        budget: BudgetMeter,
        slots: ConcurrencyLimit,
        stops: Stops,
        emit: Emitter,
    ) -> None:
        self._rows = rows
        self.budget = budget
        self._slots = slots
        self._stops = stops
        self._emit = emit
        # A stop closes the slots: a wait for one ends at once, and no more are taken.
        stops.on(Level.ADMISSION, slots.close)

    async def run(self, out: ObjectSendStream[Admitted]) -> None:
        async with out:
            try:
                async for row in self._rows:
                    if not await self._admit(row, out):
                        return
            finally:
                aclose = getattr(self._rows, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _admit(self, row: JobRow, out: ObjectSendStream[Admitted]) -> bool:
        """Send ``row`` on, skip it, or end admission (False)."""
        if self._stops.reached(Level.ADMISSION):
            return False
        verdict, reason = self.budget.check(row)
        if verdict is Verdict.SKIP:
            return True
        if verdict is Verdict.END:
            assert reason is not None
            if self._stops.request(Stop(StopKind.BUDGET, reason)):
                self._emit("stopped", reason=reason)
            return False
        try:
            await self._slots.acquire()
        except SlotsStranded:
            self._stops.request(
                Stop(StopKind.STRANDED, "tasks past --max-wait hold every concurrency slot")
            )
            return False
        except SlotsClosed:
            return False
        permit = Permit(self._slots)
        try:
            await out.send(Admitted(row, permit))
        except BaseException:
            permit.release()
            raise
        return True
