"""The ledger on SQLite: :class:`~.ledger.Ledger` on the journal's thread.

Every method is one operation on the journal's thread (or inline, in tests:
:class:`~.thread.InlineJournal`), stamped with the injected clock's wall time.
Writes are queued when called, not at the first await, and commit even if the
caller is cancelled. Which writes are durable is :mod:`.ledger`'s rule, held here.

Reads run where the journal refuses writes (see :mod:`.thread`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from functools import partial
from pathlib import Path
from typing import TypeVar, Unpack

from ..clock import Clock
from ..planning.kind import Kind
from ..planning.selection import Again
from .clash import Clash, refuse_clashes
from .decisions import Decision
from .ledger import StateWrites, Totals
from .reconcile import NewJob, SyncResult
from .rows import Change, JobRow
from .runs import LastRuns, RunRecord, keep_run, last_runs
from .states import JobState
from .store import FILE_STAMP, DoneFiles, Journal
from .thread import JournalExecutor
from .unrecorded import adopt_task

__all__ = ["SqliteLedger"]

#: the journal read of the page after (idx, id): what ``SqliteLedger._paged`` iterates
_PageRead = Callable[[int, str | None], Callable[[Journal], list[JobRow]]]

S = JobState
T = TypeVar("T")


class SqliteLedger(StateWrites):
    """The :class:`~.ledger.Ledger` of a SQLite journal (one file, one run at a time)."""

    def __init__(self, executor: JournalExecutor, clock: Clock) -> None:
        self._j = executor
        self._clock = clock
        self.changes = 0

    @property
    def runner(self) -> None:
        return None  # one run at a time holds a SQLite journal

    @property
    def path(self) -> Path:
        return self._j.sync.path

    @property
    def where(self) -> str:
        return str(self._j.sync.path)

    async def close(self) -> None:
        await self._j.close()

    # -- the start of a run -------------------------------------------------
    async def reconcile(
        self,
        jobs: Iterable[NewJob] | None,
        *,
        retry_failed: bool = False,
        again: Again | None = None,
    ) -> tuple[int, SyncResult]:
        """Crash leftovers back to the queue, then the job file synced in (the input edited
        meanwhile is the one sent; None: no job file, the jobs left as they are), the ended
        jobs ``again`` picks queued again. Returns (submits cut off by a crash, the sync)."""
        now = self._clock.wall()
        return await self._j.write(
            lambda j: j.reconcile(jobs, now, retry_failed=retry_failed, again=again), alone=True
        )

    async def read_done(self, consume: Callable[[Iterator[DoneFiles]], T]) -> T:
        """``consume(jobs)`` on the journal's thread over every ``done`` job's files, in
        file order: how they are checked against the disk off the event loop."""
        return await self._j.read(lambda j: consume(j.iter_done_files()))

    async def refetch(self, job_ids: Sequence[str]) -> None:
        """``done`` jobs whose files are not on disk as journaled go back to ``succeeded``
        (files forgotten), in one durable transaction: the lander fetches them again."""
        if job_ids:
            now = self._clock.wall()
            await self._j.write(lambda j: j.refetch(job_ids, now))

    async def totals(self) -> Totals:
        return Totals(await self._j.read(Journal.totals))

    async def learned_completions(self) -> dict[str, list[float]]:
        """The completion times earlier runs saw (older ones pruned as they are read)."""
        return await self._j.write(Journal.learned_completions, durable=False)

    async def in_flight(self) -> list[JobRow]:
        """Every job with a task that may still be running (adopted from an earlier run)."""
        return await self._j.read(lambda j: j.in_states([S.SUBMITTED]))

    async def queued_cost(self) -> tuple[float, int, int]:
        return await self._j.read(Journal.queued_cost)

    async def keep_run(self, record: RunRecord) -> None:
        await self._j.write(lambda j: keep_run(j, record), durable=False)

    async def last_runs(self) -> LastRuns:
        return await self._j.read(last_runs)

    async def counts(self) -> dict[str, int]:
        return await self._j.read(Journal.counts)

    async def queued_cut_off(self) -> int:
        return await self._j.read(Journal.queued_cut_off)

    async def counts_by_model(self) -> dict[str, dict[str, int]]:
        return await self._j.read(Journal.counts_by_model)

    async def callback_token(self, new: str) -> str:
        """The campaign's callback token: made once (``new``), kept for every later run."""
        return await self._kept("callback_token", new)

    async def output(self) -> str | None:
        """Where this journal's results land, once a run found that output usable."""
        return await self._j.read(lambda j: j.get_meta("output"))

    async def keep_file_stamp(self, stamp: str) -> None:
        """The job file this journal was last synced from (``Campaign.stamp``)."""
        await self._j.write(lambda j: j.set_meta_in_tx(FILE_STAMP, stamp))

    async def keep_output(self, where: str) -> None:
        await self._kept("output", where)

    async def identity(self) -> str:
        """The journal's identity: a random id made once, kept for every later run (an
        output folder names the journal it belongs to by it)."""
        return await self._kept("journal_id", uuid.uuid4().hex)

    async def known_task_ids(self, task_ids: Collection[str]) -> set[str]:
        """Those of ``task_ids`` this journal holds (a job's task, now or before)."""
        return await self._j.read(lambda j: j.known_task_ids(task_ids))

    async def keep_campaign(self, name: str) -> str:
        """The campaign this journal is for: the first run's name, kept."""
        return await self._kept("campaign", name)

    async def _kept(self, key: str, new: str) -> str:
        value = await self._j.read(lambda j: j.get_meta(key))
        if value is None:
            await self._j.write(lambda j: j.set_meta_in_tx(key, new))
            value = new
        return value

    async def learned_rpm(self, account: str) -> float | None:
        """The request rate an earlier run learned for this key and base URL (a digest)."""
        value = await self._j.read(lambda j: j.get_meta(f"learned_rpm:{account}"))
        try:
            return None if value is None else float(value)
        except ValueError:
            return None

    def remember_rpm(self, account: str, rpm: float | None) -> asyncio.Future[None]:
        """Keep (or, with None, forget) the rate this run learned, for the next run."""
        key = f"learned_rpm:{account}"

        def keep(j: Journal) -> None:
            if rpm is None:
                j.delete_meta_in_tx(key)
            else:
                j.set_meta_in_tx(key, f"{rpm:.1f}")

        return self._j.write(keep, durable=False)

    # -- reads during the run -----------------------------------------------
    async def _paged(self, read: _PageRead) -> AsyncIterator[JobRow]:
        """Rows a page at a time: ``read(after_idx, after_id)`` is the journal read of the
        page after that row (bounded memory, whatever the campaign's size)."""
        after_idx, after_id = -1, None
        while True:
            rows = await self._j.read(read(after_idx, after_id))
            if not rows:
                return
            for row in rows:
                after_idx, after_id = row.idx, row.id
                yield row

    def rows(self, state: JobState, *, page: int, file_only: bool) -> AsyncIterator[JobRow]:
        """Jobs in ``state``, in file order, read a page at a time."""
        return self._paged(
            lambda idx, job_id: partial(
                Journal.page, states=[state], after_idx=idx, after_id=job_id, limit=page,
                file_only=file_only,
            )
        )  # fmt: skip

    async def queued_by_kind(
        self, order: Callable[[list[Kind]], Iterable[Kind]], *, page: int
    ) -> AsyncIterator[JobRow]:
        """Queued file jobs kind by kind, the kinds as ``order`` ranks them (given in the
        file order of each kind's first job: the start order is planning's,
        :func:`~apixo_batch.planning.order.longest_first`), in file order within a kind.
        Read a page at a time (bounded memory)."""
        kinds = await self._j.read(Journal.queued_kinds)

        def of_kind(kind: Kind) -> _PageRead:
            def read(idx: int, job_id: str | None) -> Callable[[Journal], list[JobRow]]:
                return partial(
                    Journal.queued_page_of_kind, kind=kind, after_idx=idx,
                    after_id=job_id or "", limit=page,
                )  # fmt: skip

            return read

        for kind in order(kinds):
            async for row in self._paged(of_kind(kind)):
                yield row

    async def queued_brief(self) -> list[tuple[str, str, float | None, Kind]]:
        """(id, model, cost, kind) of every queued file job, in file order."""
        return await self._j.read(Journal.queued_brief)

    async def queued_runs(self) -> list[tuple[Kind, int]]:
        return await self._j.read(Journal.queued_runs)

    def by_task(self, task_id: str) -> asyncio.Future[JobRow | None]:
        return self._j.read(lambda j: j.by_task(task_id))

    def file_owners(self) -> asyncio.Future[dict[str, tuple[str, ...]]]:
        return self._j.read(Journal.file_owners)

    def refuse_clashes(
        self, exists: Callable[[str], bool] | None, shown: Callable[[str], str]
    ) -> asyncio.Future[list[Clash]]:
        """Queued jobs whose output name is taken, ended ``failed`` before any submit
        (see :mod:`.clash`; ``exists`` runs on the journal's thread)."""
        now = self._clock.wall()
        return self._j.write(lambda j: refuse_clashes(j, exists, now, shown))

    # -- the submitter's writes ---------------------------------------------
    def mark_submitting(self, job_id: str, attempts: int) -> asyncio.Future[None]:
        """The request is about to leave: from here a crash leaves doubt."""
        return self._change(job_id, S.SUBMITTING, attempts=attempts)

    def record_task_id(
        self,
        job_id: str,
        task_id: str,
        request_type: str,
        possibly_duplicated: bool,
        key_fp: str | None = None,
    ) -> asyncio.Future[None]:
        """The paid task's id: committed at once, alone if need be (invariant 1)."""
        now = self._clock.wall()
        return self._change(
            job_id,
            S.SUBMITTED,
            now=now,
            task_id=task_id,
            submitted_at=now,
            request_type=request_type,
            possibly_duplicated=possibly_duplicated,
            fail_code=None,
            fail_msg=None,
            key_fp=key_fp,
        )

    def adopt(self, job_id: str, task_id: str, request_type: str) -> asyncio.Future[bool]:
        """A paid task id kept outside the journal, journaled (durable) as the job's task;
        False if the job already has it (see :func:`~.unrecorded.adopt_task`)."""
        now = self._clock.wall()
        self.changes += 1
        return self._j.write(lambda j: adopt_task(j, job_id, task_id, request_type, now))

    def hand_back(self, job_id: str, possibly_duplicated: bool) -> asyncio.Future[None]:
        """A marked job goes back to the queue unsent (or sent with no task id known).

        A job still ``queued`` is left as it is: its mark never landed (the journal refused
        it, or the submit was cancelled while it was written and it failed), so nothing was
        sent and nothing is to undo. Any other refusal is raised."""
        now = self._clock.wall()

        def back(j: Journal) -> None:
            row = j.get(job_id)
            if row is not None and row.state is S.QUEUED:
                return
            j.transition(job_id, S.QUEUED, now, possibly_duplicated=possibly_duplicated)

        return self._j.write(back)

    # -- the follower's writes ----------------------------------------------
    def record_success(
        self,
        job_id: str,
        *,
        result_urls: Sequence[str],
        completed_at: float,
        expires_at: float,
        cost_time_ms: int | None,
        via: str,
        clock_key: str,
        seconds: float,
    ) -> asyncio.Future[None]:
        """Result URLs known, with the completion time learned (one transaction)."""
        now = self._clock.wall()
        self.changes += 1

        def succeed(j: Journal) -> None:
            j.transition(
                job_id,
                S.SUCCEEDED,
                now,
                result_urls=list(result_urls),
                completed_at=completed_at,
                expires_at=expires_at,
                cost_time_ms=cost_time_ms,
                arrived_via=via,
            )
            j.record_completion(clock_key, seconds, now)

        return self._j.write(succeed, durable=False)

    # -- the end ------------------------------------------------------------
    async def read_rows(self, consume: Callable[[Iterable[JobRow]], T]) -> T:
        """``consume(rows)`` on the journal's thread, the rows in file order: how the
        manifest and the review page are written without a copy of the journal."""
        return await self._j.read(lambda j: consume(j.iter_all()))

    async def read_reviewed(
        self, consume: Callable[[Iterable[JobRow], Mapping[str, Decision]], T]
    ) -> T:
        return await self._j.read(lambda j: consume(j.iter_all(), j.decisions()))

    def _change(
        self,
        job_id: str,
        new: JobState,
        *,
        now: float | None = None,
        durable: bool = True,
        **change: Unpack[Change],
    ) -> asyncio.Future[None]:
        at = self._clock.wall() if now is None else now
        if new not in (S.SUBMITTING, S.QUEUED):
            self.changes += 1
        return self._j.write(lambda j: j.transition(job_id, new, at, **change), durable=durable)
