"""The stages of one run, built from the run's resources and joined by streams::

    Admission ──▶ Submitter ──▶ Follower ──▶ Lander
                                    ▲           ▲
                     callbacks ─────┘   feeder ─┘ (results of earlier runs)

Each stage ends when its input has closed and its work is done, closing its output as
it returns. An interrupt gives the submits on the wire ``stop_grace_s``, then cancels
the rest (a download's ``.part`` stays for the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import aiohttp
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..apixo.client import ApixoClient, TaskStatus
from ..apixo.limits import ConcurrencyLimit
from ..apixo.receiver import HandlerResult
from ..clock import Clock
from ..defaults import DOWNLOAD_BACKOFF, SUBMIT_BACKOFF
from ..events import Emitter
from ..journal import JobRow, Ledger
from ..outputs.output import Output
from ..planning.completion import CompletionModel
from .admission import (
    Admission,
    Admitted,
    BudgetMeter,
    LimitMeter,
    PoolMeter,
    SlotMeter,
    queued_in_start_order,
    selected,
)
from .follower import Follower
from .keypool import KeyPool
from .lander import Fetch, Lander
from .options import RunOptions
from .runners import Runner
from .stop import Stops
from .submitter import Submitted, Submitter
from .turnaround import Turnaround

__all__ = ["RunParts", "Stages"]


@dataclass(frozen=True, slots=True)
class RunParts:
    """What every stage of one run shares: its options, clock, stops, events and limits."""

    options: RunOptions
    clock: Clock
    stops: Stops
    emit: Emitter
    slots: ConcurrencyLimit
    completions: CompletionModel
    turnaround: Turnaround
    #: the run's keys (one key: the pool is that key, and the stages work as without one)
    pool: KeyPool | None = None


class Stages:
    """The stages of one run: built at once, run by :meth:`run` in one task group."""

    def __init__(
        self,
        parts: RunParts,
        ledger: Ledger,
        *,
        client: ApixoClient | None,
        downloads: aiohttp.ClientSession,
        output: Output,
        callback_url: str | None,
        spent_before: float,
        runner: Runner | None = None,
        ours: Callable[[list[JobRow]], list[JobRow]] = lambda rows: rows,
    ) -> None:
        o, self._parts, self._ledger = parts.options, parts, ledger
        #: this run as one of several runners of the campaign (PostgreSQL), or None
        self._runner = runner
        #: of tasks taken over from other runners, those this run's keys can follow
        self._ours = ours
        self._spent_before = spent_before
        self._client = client
        self.submitter: Submitter | None = None
        self.follower: Follower | None = None
        if client is not None:
            self.submitter = Submitter(
                client,
                ledger,
                backoff=SUBMIT_BACKOFF.scaled(o.time_scale),
                callback_url=callback_url,
                patience=o.patience,
                turnaround=parts.turnaround,
                clock=parts.clock,
                stops=parts.stops,
                emit=parts.emit,
                pool=parts.pool,
            )
            self.follower = Follower(
                client,
                ledger,
                slots=parts.slots,
                completions=parts.completions,
                time_scale=o.time_scale,
                patience=o.patience,
                submits=self.submitter,
                turnaround=parts.turnaround,
                clock=parts.clock,
                stops=parts.stops,
                emit=parts.emit,
                pool=parts.pool,
            )
        self.lander = Lander(
            ledger,
            downloads,
            output=output,
            clock=parts.clock,
            emit=parts.emit,
            backoff=DOWNLOAD_BACKOFF.scaled(o.time_scale),
            workers=o.download_concurrency,
            patience=o.patience,
            stops=parts.stops,
            # `download --only` fetches what it picks; a run finishes every paid result.
            selection=o.selection if o.mode == "download" else None,
        )
        self._fetches: MemoryObjectReceiveStream[Fetch] | None = None

    def _take_over(self, rows: list[JobRow]) -> None:
        """Tasks of other runners (dead, or gone with their work unfinished): followed to
        their end, never submitted again."""
        self.adopt(self._ours(rows))

    async def _poll_stray(self, model: str, task_id: str, key_fp: str | None) -> TaskStatus:
        """A stray task's status, read with the key that created it (paced by its bucket)."""
        assert self._client is not None
        client = self._client
        pool = self._parts.pool
        account = pool.get(key_fp) if pool is not None else None
        if account is not None and account.client is not None:
            client = account.client
        return await client.status(model, task_id)

    def adopt(self, in_flight: list[JobRow]) -> None:
        """Tasks paid for by earlier runs: followed to their end, never submitted again."""
        if self.follower is not None:
            self.follower.adopt(in_flight)

    @property
    def downloading(self) -> int:
        """Results being fetched, and waiting to be."""
        queued = self._fetches.statistics().current_buffer_used if self._fetches else 0
        return self.lander.busy + queued

    @property
    def retries(self) -> int:
        return sum(s.retries for s in (self.submitter, self.follower, self.lander) if s)

    async def on_callback(self, status: TaskStatus) -> HandlerResult:
        if self.follower is None:
            return "unknown"
        return await self.follower.on_callback(status)

    async def run(self, *, submit: bool, interrupt: asyncio.Event) -> None:
        """The stages, until the last one returns or an interrupt has had its grace."""
        work = asyncio.ensure_future(self._stages(submit=submit))
        interrupted = asyncio.ensure_future(interrupt.wait())
        try:
            await asyncio.wait({work, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and self.submitter is not None:
                # Interrupted: submits on the wire get the grace to be answered and
                # journaled; the rest waits for the bucket or a backoff, or is a poll or
                # a download whose .part stays for the next run.
                await self.submitter.drain(self._parts.options.stop_grace_s)
        finally:
            interrupted.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _stages(self, *, submit: bool) -> None:
        """One task group; each stage closes its output stream as it returns."""
        parts, o = self._parts, self._parts.options
        admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](0)
        pool = parts.pool
        # Bounded by the slots already: a submit never waits on the follower.
        room = sum(a.slots.top for a in pool.accounts) if pool else o.max_concurrent
        submitted_tx, submitted_rx = anyio.create_memory_object_stream[Submitted](room)
        fetch_tx, fetch_rx = anyio.create_memory_object_stream[Fetch](max(500, o.max_concurrent))
        self._fetches = fetch_rx
        feeder_tx = fetch_tx.clone()
        async with asyncio.TaskGroup() as tg:
            if self.follower is not None:
                tg.create_task(self.follower.run(submitted_rx, fetch_tx))
            else:
                submitted_rx.close()
                fetch_tx.close()
            runner = self._runner
            if runner is not None and self.follower is not None and submit:
                follower = self.follower
                tg.create_task(
                    runner.adopting(
                        self._take_over,
                        fetch_tx.clone(),
                        self._poll_stray,
                        busy=lambda: follower.tracked > 0,
                    )
                )
            if submit and self.submitter is not None:
                rows = queued_in_start_order(self._ledger, o.order, parts.completions)
                if runner is not None:
                    rows = runner.claims(
                        partial(queued_in_start_order, self._ledger, o.order, parts.completions)
                    )
                if o.selection.filtered:
                    rows = selected(rows, o.selection)
                admission = Admission(
                    rows,
                    meters=[
                        BudgetMeter(o.budget, self._spent_before, parts.emit),
                        LimitMeter(o.limit),
                    ],
                    slots=PoolMeter(pool) if pool and pool.pooled else SlotMeter(parts.slots),
                    stops=parts.stops,
                    unclaim=runner.release if runner is not None else None,
                )
                tg.create_task(admission.run(admitted_tx))
                tg.create_task(self.submitter.run(admitted_rx, submitted_tx))
            else:
                admitted_tx.close()
                admitted_rx.close()
                submitted_tx.close()
            tg.create_task(self.lander.feed(feeder_tx))
            tg.create_task(self.lander.run(fetch_rx))
