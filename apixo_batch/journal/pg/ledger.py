"""The ledger on PostgreSQL: :class:`~..ledger.Ledger` for ``--state postgresql://…``.

The same operations as :class:`~..local.SqliteLedger`, as SQL on the tables of
:mod:`.schema`, run in order by :class:`~.executor.PgExecutor` with the same
durability per write (``mark_submitting`` and ``record_task_id`` durable and never
waiting; ``succeeded``/``done`` with ``synchronous_commit=off``). A state change
checks its from-state in the same UPDATE, as :mod:`..changes` does; the task id of
a submit and its ``task_history`` row commit in one transaction.

Several runs may share a campaign. Each ``run`` opens the ledger as a *runner*
(:class:`~..ledger.RunnerSpec`): its own session holds a lease row
(:class:`~.lease.RunnerLease`, :attr:`PgLedger.runner`), queued rows are claimed
before they are admitted, a submit is marked only on a row the runner owns while
its lease is live, and it follows and lands only the rows it owns. Its start-up
syncs the job file under the campaign row's lock (one syncer at a time) and
requeues only the ``submitting`` rows of dead runners (adoption), never a live
one's. Opened without a runner (``verify --fix``, ``adopt``, tests), the ledger
claims nothing and sees every row, as one run did.

What consumes rows off the event loop (the manifest, the check of the disk) runs
in a worker thread that reads the rows a page at a time through the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, Literal, TypeVar, Unpack

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ...clock import Clock
from ...errors import JournalError
from ...planning.kind import Kind
from ...planning.selection import Again
from ..clash import OUTPUT_EXISTS, Clash, find_clashes
from ..decisions import Decision
from ..ledger import RunnerSpec, StateWrites, Totals
from ..naming import name_owners
from ..reconcile import NewJob, SyncResult, take_json
from ..rows import (
    CHANGES,
    OUTPUT_COLUMNS,
    SELECT,
    Change,
    JobRow,
    OutputRow,
    json_list,
    output_row,
)
from ..runs import LAST_RUN, LAST_WORK_RUN, LastRuns, RunRecord
from ..states import TRANSITIONS, JobState, illegal_change
from ..store import FILE_STAMP, DoneFiles
from ..unrecorded import AdoptRefused
from .executor import Op, PgConn, PgExecutor, database_failed
from .lease import STRAY, RunnerLease
from .outputs import reserved_rows
from .schema import migrate
from .url import shown

__all__ = ["PgLedger", "open_pg_ledger"]

S = JobState
T = TypeVar("T")
#: rows per page of the reads that stream (the manifest, the disk check, sync chunks)
PAGE = 2000
#: newest completion times kept per clock key (as SQLite's journal keeps)
KEEP_COMPLETIONS = 500
_LEGAL_FROM: dict[JobState, list[str]] = {
    new: [old.value for old in JobState if new in TRANSITIONS[old]] for new in JobState
}
#: the states a job ends in
_ENDS = frozenset({S.DONE, S.FAILED, S.EXPIRED})
#: the states a lazy mark, written again after a server crash (executor.py), still
#: applies to: those just before it. A row found anywhere else moved on (or was never
#: this far: the mark before it is written again first, in order).
_BEHIND: dict[JobState, list[str]] = {
    S.SUCCEEDED: [S.SUBMITTED.value],
    S.DONE: [S.SUCCEEDED.value],
}
_NEW_COLUMNS = (
    "id",
    "idx",
    "model",
    "provider",
    "input_json",
    "input_hash",
    "filename",
    "cost_usd",
)
#: Journal.output_rows: the columns of rows.output_row, then the result URLs' count
_OUTPUT_ROWS = (
    f"SELECT {OUTPUT_COLUMNS}, CASE WHEN result_urls IS NULL OR "
    "result_urls = '' THEN NULL ELSE json_array_length(result_urls::json) END "
    "FROM jobs WHERE campaign=%s"
)
#: one chunk of the job file's new rows, as column arrays: one statement for them all
_INSERT_NEW = (
    f"INSERT INTO jobs (campaign, {', '.join(_NEW_COLUMNS)}, in_file, state, updated_at) "
    f"SELECT %s, v.*, true, '{S.QUEUED.value}', %s FROM unnest(%s::text[], %s::integer[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::double precision[]) "
    f"AS v({', '.join(_NEW_COLUMNS)})"
)
#: one chunk of known rows whose input is unchanged: the file's order, name and cost,
#: written only where they differ (a joining runner whose file matches writes nothing)
_UPDATE_SAME = (
    "UPDATE jobs SET idx=v.idx, filename=v.filename, cost_usd=v.cost_usd, in_file=true, "
    "changed_input_hash=NULL FROM unnest(%s::text[], %s::integer[], %s::text[], "
    "%s::double precision[]) AS v(id, idx, filename, cost_usd) "
    "WHERE jobs.campaign=%s AND jobs.id=v.id AND (jobs.idx IS DISTINCT FROM v.idx "
    "OR jobs.filename IS DISTINCT FROM v.filename OR jobs.cost_usd IS DISTINCT FROM "
    "v.cost_usd OR NOT jobs.in_file OR jobs.changed_input_hash IS NOT NULL)"
)
#: an ended job queued again (reconcile.Reconcile._queued_again): the file's input, a
#: take, and nothing of the earlier task
_QUEUED_AGAIN = (
    "UPDATE jobs SET idx=%s, model=%s, provider=%s, input_json=%s, input_hash=%s, "
    "filename=%s, cost_usd=%s, in_file=true, changed_input_hash=NULL, take=%s, "
    "earlier_files=%s, task_id=NULL, request_type=NULL, submitted_at=NULL, "
    "completed_at=NULL, result_urls='[]', expires_at=NULL, files='[]', bytes=NULL, "
    "sha256='[]', fail_code=NULL, fail_msg=NULL, cost_time_ms=NULL, arrived_via=NULL "
    "WHERE campaign=%s AND id=%s"
)


def _assignments(change: Change) -> tuple[str, list[Any]]:
    sets = ["state=%s", "updated_at=%s"]
    values: list[Any] = []
    for key, value in change.items():
        if key not in CHANGES:  # a caller mypy did not check
            raise JournalError(f"unknown journal column {key!r}")
        write = CHANGES[key]
        sets.append(f"{key}=%s")
        values.append(value if write is None or value is None else write(value))
    return ", ".join(sets), values


def _row(values: Sequence[Any] | None) -> JobRow | None:
    return None if values is None else JobRow.from_sql(values)


#: rows per claim of queued rows: what admission asks for at a time, so a runner holds
#: few rows it has no slot for yet (the others may take the rest)
CLAIM = 10


async def open_pg_ledger(
    url: str,
    campaign: str,
    clock: Clock,
    anchor: Path,
    *,
    commit_delay: float = 0.0,
    runner: RunnerSpec | None = None,
) -> PgLedger:
    """The ledger of ``campaign`` in the database at ``url``: schema brought up to date,
    the pool opened, and with ``runner`` this process registered as one of the
    campaign's runners (its lease live from here; renewing it is the caller's).
    ``anchor``: the local path of :attr:`PgLedger.path`. A database that cannot be
    reached is :class:`~.executor.DatabaseFailed` (one line, no password)."""
    where = shown(url)

    async def connect() -> PgConn:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)

    try:
        session: PgConn = await connect()
    except psycopg.Error as exc:
        raise database_failed(url, exc, "cannot be reached") from None
    lease = None
    try:
        await migrate(session, where)
        if runner is not None and await _campaign_of(session, campaign) == campaign:
            lease = RunnerLease(
                session,
                campaign,
                clock,
                lease_s=runner.lease_s,
                grace_s=runner.grace_s,
                # a renewal every lease/3: the fence keeps one missed renewal's margin
                margin_s=runner.lease_s / 6,
                connect=connect,
                node=runner.node,
                selection=runner.selection,
            )
            await lease.register(
                runner.host, runner.pid, runner.version, sorted(set(runner.accounts.values()))
            )
        pool: AsyncConnectionPool[PgConn] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True},
            open=False,
            check=AsyncConnectionPool.check_connection,
            name="apixo-journal",
        )
        await pool.open(wait=True, timeout=30.0)
    except psycopg.Error as exc:
        await session.close()
        raise database_failed(url, exc) from None
    except BaseException:
        await session.close()
        raise
    # A runner rides out a database away for as long as its work may still be its own
    # (lease + grace; past that it stops, exit 75): its submits pause meanwhile (no
    # mark lands), its other writes wait their turn.
    ride_out = 0.0 if lease is None else lease.lease_s + lease.grace_s
    executor = PgExecutor(pool, url, commit_delay=commit_delay, ride_out=ride_out)
    if lease is not None:
        executor.riding = lambda: not lease.past_term()
    return PgLedger(
        executor,
        session,
        campaign,
        clock,
        anchor,
        lease=lease,
        accounts=runner.accounts if runner is not None else None,
    )


async def _campaign_of(session: PgConn, campaign: str) -> str:
    """The campaign the database keeps (the first one's), ``campaign`` made it if none:
    a runner registers only for it (another campaign is refused before anything)."""
    cur = await session.execute("SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1")
    row = await cur.fetchone()
    if row is not None:
        return str(row[0])
    await session.execute(
        "INSERT INTO campaigns (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (campaign,)
    )
    cur = await session.execute("SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1")
    row = await cur.fetchone()
    return campaign if row is None else str(row[0])


class PgLedger(StateWrites):
    """The :class:`~..ledger.Ledger` of a campaign in PostgreSQL (module docstring)."""

    def __init__(
        self,
        executor: PgExecutor,
        session: PgConn,
        campaign: str,
        clock: Clock,
        anchor: Path,
        *,
        lease: RunnerLease | None = None,
        accounts: Mapping[str | None, str] | None = None,
    ) -> None:
        self._j = executor
        #: a key's account by its fingerprint: what a runner's task ids are recorded with
        self._accounts = dict(accounts or {})
        self._session = session
        self._c = campaign
        self._clock = clock
        self._anchor = anchor
        self._lease = lease
        #: the attempt each job was marked with, which its task id's write must match
        self._marked: dict[str, int] = {}
        self.changes = 0

    @property
    def runner(self) -> RunnerLease | None:
        """This process as a runner of the campaign (its lease), or None when the ledger
        was opened without one."""
        return self._lease

    @property
    def path(self) -> Path:
        return self._anchor

    @property
    def where(self) -> str:
        return self._j.where

    @property
    def executor(self) -> PgExecutor:
        return self._j

    @property
    def campaign(self) -> str:
        """The campaign's row in ``campaigns`` (every runner of it names the same)."""
        return self._c

    async def close(self) -> None:
        try:
            await self._j.close()
        finally:
            if self._lease is not None:
                await self._lease.close()  # its session may be a newer one
            else:
                await self._session.close()

    # -- helpers ------------------------------------------------------------
    async def _one(self, conn: PgConn, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        cur = await conn.execute(sql.encode(), args)
        return await cur.fetchone()

    async def _all(self, conn: PgConn, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur = await conn.execute(sql.encode(), args)
        return await cur.fetchall()

    async def _get(self, conn: PgConn, job_id: str) -> JobRow | None:
        return _row(
            await self._one(
                conn, f"SELECT {SELECT} FROM jobs WHERE campaign=%s AND id=%s", (self._c, job_id)
            )
        )

    async def _transition(
        self,
        conn: PgConn,
        job_id: str,
        new: JobState,
        now: float,
        *,
        owner: Literal["mine", "free", "any"] = "free",
        since: Sequence[str] | None = None,
        task: str | None = None,
        **change: Unpack[Change],
    ) -> str | None:
        """:meth:`~..changes.StateChanges.transition` in PostgreSQL: one UPDATE from the
        legal states (for a submit's task id, its ``task_history`` row with it). A runner
        changes only a row it owns (``owner="mine"``: its follower's and lander's
        writes), or that nobody owns (``"free"``); a row another runner took over is that
        runner's to journal, and a stalled runner's late answer must not undo it.
        ``since``: only from these states (not every legal one); ``task``: only while the
        row holds that task id. The row's task id after the change."""
        try:
            assignments, values = _assignments(change)
        except JournalError:
            await self._check(conn, job_id, new)
            raise
        values = [new.value, now, *values]
        if new in _ENDS:
            # An ended job is nobody's: should it be queued (or fetched) again, any
            # runner may claim it.
            assignments += ", owner=NULL"
        if new is S.SUBMITTED and "task_id" in change:
            cur = await conn.execute(
                f"UPDATE jobs SET {assignments} WHERE campaign=%s AND id=%s AND state='submitting'",
                (*values, self._c, job_id),
            )
            if cur.rowcount:
                await conn.execute(
                    "INSERT INTO task_history (task_id, campaign, job_id, input_hash, "
                    "submitted_at) SELECT %s, campaign, id, input_hash, %s FROM jobs "
                    "WHERE campaign=%s AND id=%s ON CONFLICT (task_id) DO NOTHING",
                    (change["task_id"], now, self._c, job_id),
                )
                return change["task_id"]
        whose = ""
        me: tuple[int | str | None, ...] = ()
        if self._lease is not None and owner == "free":
            whose, me = " AND (owner IS NULL OR owner=%s)", (self._lease.id,)
        elif self._lease is not None and owner == "mine":
            whose, me = " AND owner=%s", (self._lease.id,)
        if task is not None:
            whose, me = whose + " AND task_id=%s", (*me, task)
        cur = await conn.execute(
            f"UPDATE jobs SET {assignments} WHERE campaign=%s AND id=%s AND state = ANY(%s)"
            + whose
            + " RETURNING task_id",
            (*values, self._c, job_id, _LEGAL_FROM[new] if since is None else since, *me),
        )
        row = await cur.fetchone()
        if row is None:
            await self._check(conn, job_id, new)
            raise JournalError(f"job {job_id!r}: the change to {new} did not apply")
        return None if row[0] is None else str(row[0])

    async def _check(self, conn: PgConn, job_id: str, new: JobState) -> None:
        row = await self._one(
            conn, "SELECT state FROM jobs WHERE campaign=%s AND id=%s", (self._c, job_id)
        )
        if row is None:
            raise JournalError(f"job {job_id!r} is not in the journal")
        refusal = illegal_change(job_id, JobState(row[0]), new)
        if refusal is not None:
            raise JournalError(refusal)

    async def _move_all(
        self,
        conn: PgConn,
        old: JobState,
        new: JobState,
        now: float,
        where: str = "true",
        **change: Unpack[Change],
    ) -> int:
        if new not in TRANSITIONS[old]:
            raise JournalError(f"illegal state change {old} -> {new} (of every {old} job)")
        assignments, values = _assignments(change)
        cur = await conn.execute(
            f"UPDATE jobs SET {assignments} WHERE campaign=%s AND state=%s AND ({where})",
            (new.value, now, *values, self._c, old.value),
        )
        return cur.rowcount

    def _write(
        self, op: Op[T], *, durable: bool = True, alone: bool = False, replay: Op[Any] | None = None
    ) -> asyncio.Future[T]:
        return self._j.write(op, durable=durable, alone=alone, replay=replay)

    def _replay(
        self, job_id: str, new: JobState, at: float, change: Change, wrote: dict[str, str]
    ) -> Op[None]:
        """A lazy mark's replay after a server crash (executor.py): the same change, to a
        row of this runner's still just behind it and on the same task (``wrote``: the
        task id the mark was written on, once it was; a job sent again since, a reroll,
        is left alone)."""
        since = _BEHIND[new]

        async def replay(conn: PgConn) -> None:
            task = wrote.get("task")
            if task is None:
                return  # the mark changed nothing (another runner's row): nothing to redo
            with contextlib.suppress(JournalError):
                await self._transition(
                    conn, job_id, new, at, owner="mine", since=since, task=task, **change
                )

        return replay

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

        lease = self._lease
        wrote: dict[str, str] = {}

        async def op(conn: PgConn) -> None:
            try:
                task = await self._transition(conn, job_id, new, at, owner="mine", **change)
            except JournalError:
                if lease is None or await self._mine(conn, job_id, lease):
                    raise
                # Another runner's row now: it adopted this runner's work while this one
                # was cut off or stalled (and this one is fenced), or it ended the job
                # first. Its owner journals it; nothing is lost.
                return
            if task is not None:
                wrote["task"] = task

        # A partial result's files need none: the row stays succeeded, for `download`.
        replay = None
        if new is S.DONE and not durable:
            replay = self._replay(job_id, new, at, change, wrote)
        return self._write(op, durable=durable, replay=replay)

    async def _mine(self, conn: PgConn, job_id: str, lease: RunnerLease) -> bool:
        row = await self._one(
            conn, "SELECT owner FROM jobs WHERE campaign=%s AND id=%s", (self._c, job_id)
        )
        return row is not None and row[0] == lease.id

    # -- the start of a run -------------------------------------------------
    async def reconcile(
        self,
        jobs: Iterable[NewJob] | None,
        *,
        retry_failed: bool = False,
        again: Again | None = None,
    ) -> tuple[int, SyncResult]:
        now = self._clock.wall()
        picks = Again(failed=retry_failed) if again is None else again

        lease = self._lease

        async def op(conn: PgConn) -> tuple[int, SyncResult]:
            await self._campaign_row(conn)
            orphans = "true"
            if lease is not None:
                # One syncer at a time: a runner starting meanwhile waits here, then
                # finds the rows this one inserted (nothing inserted twice).
                await conn.execute("SELECT id FROM campaigns WHERE id=%s FOR UPDATE", (self._c,))
                # A live runner's submits are its own; a dead one's are adoption's. Only
                # a submit nobody owns (an earlier single run's) is a crash leftover here.
                orphans = "owner IS NULL"
            recovered = await self._move_all(
                conn, S.SUBMITTING, S.QUEUED, now, orphans, possibly_duplicated=True
            )
            await self._move_all(
                conn,
                S.FAILED,
                S.QUEUED,
                now,
                "fail_code='SUBMIT_ERROR' AND task_id IS NULL",
                fail_code=None,
                fail_msg=None,
            )
            if jobs is None:
                return recovered, SyncResult(changed_after_submit=[])
            return recovered, await self._sync(conn, jobs, now, picks)

        recovered, synced = await self._write(op, alone=True)
        if lease is not None:
            # Dead runners' work: paid rows this runner's to follow and land, their
            # submits in doubt back in the queue (flagged), as a crash's are.
            swept: list[int] = []
            try:
                while (taken := await lease.adopt(swept)) is not None:
                    swept.append(taken.dead)
                    recovered += taken.requeued
            except psycopg.OperationalError:
                # The runner's session is away (and could not reconnect): nothing adopted
                # now; the run's sweep every lease/3 takes them once the database answers.
                pass
        return recovered, synced

    async def _campaign_row(self, conn: PgConn) -> None:
        await conn.execute(
            "INSERT INTO campaigns (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (self._c,)
        )

    async def _sync(
        self, conn: PgConn, jobs: Iterable[NewJob], now: float, again: Again
    ) -> SyncResult:
        result = SyncResult(changed_after_submit=[])
        # Only rows that change are written (and so locked): a runner joining a campaign
        # others are running holds none of their rows while it syncs.
        seen: list[str] = []
        chunk: list[NewJob] = []
        for job in jobs:
            seen.append(job.id)
            chunk.append(job)
            if len(chunk) >= PAGE:
                await self._sync_chunk(conn, chunk, now, result, again)
                chunk = []
        if chunk:
            await self._sync_chunk(conn, chunk, now, result, again)
        await conn.execute(
            "UPDATE jobs SET in_file=false WHERE campaign=%s AND in_file AND NOT (id = ANY(%s))",
            (self._c, seen),
        )
        row = await self._one(
            conn, "SELECT count(*) FROM jobs WHERE campaign=%s AND NOT in_file", (self._c,)
        )
        result.dropped_from_file = int(row[0]) if row else 0
        return result

    async def _sync_chunk(
        self, conn: PgConn, chunk: list[NewJob], now: float, result: SyncResult, again: Again
    ) -> None:
        known: dict[str, tuple[Any, ...]] = {
            str(row[0]): row[1:]
            for row in await self._all(
                conn,
                "SELECT id, input_hash, state, task_id, fail_code, take, files, earlier_files "
                "FROM jobs WHERE campaign=%s AND id = ANY(%s)",
                (self._c, [j.id for j in chunk]),
            )
        }
        inserts: list[tuple[Any, ...]] = []
        same: list[tuple[Any, ...]] = []
        replaced: list[tuple[Any, ...]] = []
        kept: list[tuple[Any, ...]] = []
        assert result.changed_after_submit is not None
        for j in chunk:
            old = known.get(j.id)
            if old is None:
                inserts.append(
                    (
                        j.id,
                        j.idx,
                        j.model,
                        j.provider,
                        j.input_json,
                        j.input_hash,
                        j.filename,
                        j.cost_usd,
                    )
                )
                continue
            old_hash, state, task_id, code, take, files, earlier = old
            if again.any and await self._queued_again(
                conn, j, (state, code, old_hash == j.input_hash, take, files, earlier), now,
                result, again,
            ):  # fmt: skip
                continue
            if old_hash == j.input_hash:
                same.append((j.id, j.idx, j.filename, j.cost_usd))
            elif task_id is None and state in (S.QUEUED.value, S.FAILED.value):
                # Never paid for under the old input: the new input replaces it (and a
                # failed one is queued again: an input the API rejected gets its chance).
                replaced.append(
                    (
                        j.idx,
                        j.model,
                        j.provider,
                        take_json(j, int(take)),
                        j.input_hash,
                        j.filename,
                        j.cost_usd,
                        now,
                        self._c,
                        j.id,
                    )
                )
            else:
                # Paid (or possibly paid) under the old input: keep following that task.
                kept.append((j.idx, j.filename, j.input_hash, self._c, j.id))
                result.changed_after_submit.append(j.id)
                if state in (S.FAILED.value, S.DONE.value, S.EXPIRED.value):
                    result.ended[j.id] = state
        result.added += len(inserts)
        result.unchanged += len(same)
        result.updated += len(replaced)
        # Set-based: one statement per chunk whatever its size, so a runner joining a
        # campaign whose file matches the journal costs a handful of statements, and
        # the guard of _UPDATE_SAME writes (and locks) only the rows that differ.
        if inserts:
            await conn.execute(
                _INSERT_NEW, (self._c, now, *(list(c) for c in zip(*inserts, strict=True)))
            )
        if same:
            await conn.execute(_UPDATE_SAME, (*(list(c) for c in zip(*same, strict=True)), self._c))
        cur = conn.cursor()
        if replaced:
            await cur.executemany(
                "UPDATE jobs SET idx=%s, model=%s, provider=%s, input_json=%s, input_hash=%s, "
                "filename=%s, cost_usd=%s, in_file=true, changed_input_hash=NULL, "
                "fail_code=NULL, fail_msg=NULL, updated_at=%s, "
                "state=CASE WHEN state='failed' THEN 'queued' ELSE state END "
                "WHERE campaign=%s AND id=%s",
                replaced,
            )
        if kept:
            await cur.executemany(
                "UPDATE jobs SET idx=%s, filename=%s, in_file=true, changed_input_hash=%s "
                "WHERE campaign=%s AND id=%s",
                kept,
            )

    async def _queued_again(
        self,
        conn: PgConn,
        j: NewJob,
        known: tuple[Any, ...],
        now: float,
        result: SyncResult,
        again: Again,
    ) -> bool:
        """An ended job ``again`` picks, queued again with the file's input (a new take for
        a done one), as :meth:`~..reconcile.Reconcile._queued_again`; True if it was.
        ``known``: its (state, fail code, input unchanged, take, files, earlier files)."""
        state, code, unchanged, take, files, earlier = known
        if state == S.FAILED.value:
            verdict = again.failed_again(j.id, j.model, code, unchanged)
            if verdict == "refused":
                result.refused_unchanged[j.id] = code or ""
            if verdict != "retry":
                return False
        elif state not in (S.DONE.value, S.EXPIRED.value) or not again.picks(state, j.id, j.model):
            return False
        elif state == S.DONE.value and again.rejected:
            return False  # a PostgreSQL journal holds no review decisions: none is rejected
        kept = json_list(earlier)
        take = int(take)
        if state == S.DONE.value:
            # A new take: the earlier take's files stay on disk, held by the job.
            take, kept = take + 1, (*kept, *json_list(files))
        await conn.execute(
            _QUEUED_AGAIN.encode(),
            (j.idx, j.model, j.provider, take_json(j, take), j.input_hash, j.filename,
             j.cost_usd, take, json.dumps(list(kept)), self._c, j.id),
        )  # fmt: skip
        await self._transition(conn, j.id, S.QUEUED, now)
        result.again[state] = result.again.get(state, 0) + 1
        return True

    async def read_done(self, consume: Callable[[Iterator[DoneFiles]], T]) -> T:
        async def page(conn: PgConn, after: tuple[int, int, str]) -> list[tuple[Any, ...]]:
            return await self._all(
                conn,
                "SELECT (NOT in_file)::int, idx, id, files, bytes, sha256 FROM jobs "
                "WHERE campaign=%s AND state='done' AND ((NOT in_file)::int, idx, id) > "
                "(%s, %s, %s) ORDER BY (NOT in_file)::int, idx, id LIMIT %s",
                (self._c, *after, PAGE),
            )

        def rows(
            fetch: Callable[[tuple[int, int, str]], list[tuple[Any, ...]]],
        ) -> Iterator[DoneFiles]:
            after = (-1, -1, "")
            while batch := fetch(after):
                for _dropped, _idx, job_id, files, size, sha256 in batch:
                    yield DoneFiles(job_id, json_list(files), size, json_list(sha256))
                after = (batch[-1][0], batch[-1][1], batch[-1][2])

        return await self._off_loop(page, rows, consume)

    async def strays(self) -> dict[str, list[dict[str, Any]]]:
        """Stray tasks by job (several runners): a runner's task id that came back after
        its row was adopted, paid and kept, with its end and result URLs once followed."""

        async def op(conn: PgConn) -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {}
            for key, value in await self._all(
                conn,
                "SELECT key, value FROM meta WHERE campaign=%s AND key LIKE %s ORDER BY key",
                (self._c, STRAY + "%"),
            ):
                info = json.loads(value)
                found.setdefault(str(info["job"]), []).append(
                    {
                        "task_id": str(key)[len(STRAY) :],
                        "state": info.get("state", "pending"),
                        "result_urls": list(info.get("result_urls") or ()),
                        "fail_code": info.get("fail_code"),
                    }
                )
            return found

        return await self._j.read(op)

    async def read_reviewed(
        self, consume: Callable[[Iterable[JobRow], Mapping[str, Decision]], T]
    ) -> T:
        # The review page's decisions live in a SQLite journal (review --serve reads and
        # writes one): a PostgreSQL journal holds none yet.
        return await self.read_rows(lambda rows: consume(rows, {}))

    async def _off_loop(
        self,
        page: Callable[[PgConn, Any], Awaitable[list[tuple[Any, ...]]]],
        rows: Callable[[Callable[[Any], list[tuple[Any, ...]]]], Iterator[Any]],
        consume: Callable[[Iterator[Any]], T],
    ) -> T:
        """``consume(rows(fetch))`` in a worker thread; each ``fetch(after)`` is one
        ``page`` read run on the event loop, in the executor's order."""
        loop = asyncio.get_running_loop()

        async def read(after: Any) -> list[tuple[Any, ...]]:
            return await self._j.read(lambda conn: page(conn, after))

        def fetch(after: Any) -> list[tuple[Any, ...]]:
            return asyncio.run_coroutine_threadsafe(read(after), loop).result()

        return await asyncio.to_thread(lambda: consume(rows(fetch)))

    async def refetch(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        now = self._clock.wall()

        async def op(conn: PgConn) -> None:
            for job_id in job_ids:
                await self._transition(conn, job_id, S.SUCCEEDED, now, bytes=None, sha256=[])

        await self._write(op)

    async def totals(self) -> Totals:
        async def op(conn: PgConn) -> dict[str, float]:
            row = await self._one(
                conn,
                "SELECT count(*), coalesce(sum(possibly_duplicated::int), 0) FROM jobs "
                "WHERE campaign=%s",
                (self._c,),
            )
            # Every task ever journaled was paid for (task_history), as in SQLite.
            paid = await self._one(
                conn,
                "SELECT coalesce(sum(coalesce(j.cost_usd, 0)), 0), "
                "count(DISTINCT CASE WHEN j.cost_usd IS NULL THEN j.id END) "
                "FROM task_history h JOIN jobs j ON j.campaign = h.campaign AND j.id = h.job_id "
                "WHERE h.campaign=%s",
                (self._c,),
            )
            assert row is not None and paid is not None
            return {
                "jobs": float(row[0]),
                "possibly_duplicated": float(row[1]),
                "spent_known_usd": float(paid[0]),
                "spent_unknown_jobs": float(paid[1]),
            }

        return Totals(await self._j.read(op))

    async def learned_completions(self) -> dict[str, list[float]]:
        async def op(conn: PgConn) -> dict[str, list[float]]:
            out: dict[str, list[float]] = {}
            keys = [
                r[0]
                for r in await self._all(conn, "SELECT DISTINCT clock_key FROM completions", ())
            ]
            for key in keys:
                rows = await self._all(
                    conn,
                    "SELECT seconds, n FROM completions WHERE clock_key=%s "
                    "ORDER BY at DESC, n DESC LIMIT %s",
                    (key, KEEP_COMPLETIONS),
                )
                out[key] = [float(r[0]) for r in reversed(rows)]
                if len(rows) == KEEP_COMPLETIONS:
                    await conn.execute(
                        "DELETE FROM completions WHERE clock_key=%s AND n < %s",
                        (key, min(int(r[1]) for r in rows)),
                    )
            return out

        return await self._write(op, durable=False)

    async def in_flight(self) -> list[JobRow]:
        if self._lease is not None:
            # Its own (adopted from dead runners included) and those nobody owns; never
            # a live runner's.
            return await self._leased(self._lease.claim_paid([S.SUBMITTED.value]))

        async def op(conn: PgConn) -> list[JobRow]:
            rows = await self._all(
                conn,
                f"SELECT {SELECT} FROM jobs WHERE campaign=%s AND state=%s "
                "ORDER BY in_file DESC, idx",
                (self._c, S.SUBMITTED.value),
            )
            return [JobRow.from_sql(r) for r in rows]

        return await self._j.read(op)

    async def queued_cost(self) -> tuple[float, int, int]:
        async def op(conn: PgConn) -> tuple[float, int, int]:
            row = await self._one(
                conn,
                "SELECT coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL), "
                "count(*) FROM jobs WHERE campaign=%s AND state=%s AND in_file",
                (self._c, S.QUEUED.value),
            )
            assert row is not None
            return float(row[0]), int(row[1]), int(row[2])

        return await self._j.read(op)

    async def keep_run(self, record: RunRecord) -> None:
        text = record.to_json()
        await self._set_meta(LAST_RUN, text, durable=False)
        if record.did_work:
            await self._set_meta(LAST_WORK_RUN, text, durable=False)

    async def last_runs(self) -> LastRuns:
        return LastRuns(
            RunRecord.from_json(await self._get_meta(LAST_RUN)),
            RunRecord.from_json(await self._get_meta(LAST_WORK_RUN)),
        )

    async def queued_cut_off(self) -> int:
        async def op(conn: PgConn) -> int:
            row = await self._one(
                conn,
                "SELECT count(*) FROM jobs WHERE campaign=%s AND state='queued' "
                "AND possibly_duplicated AND (in_file OR task_id IS NOT NULL)",
                (self._c,),
            )
            return 0 if row is None else int(row[0])

        return await self._j.read(op)

    async def counts(self) -> dict[str, int]:
        async def op(conn: PgConn) -> dict[str, int]:
            rows = await self._all(
                conn,
                "SELECT state, count(*) FROM jobs WHERE campaign=%s "
                "AND (in_file OR task_id IS NOT NULL) GROUP BY state",
                (self._c,),
            )
            return {str(s): int(n) for s, n in rows}

        return await self._j.read(op)

    async def counts_by_model(self) -> dict[str, dict[str, int]]:
        async def op(conn: PgConn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for model, state, n in await self._all(
                conn,
                "SELECT model, state, count(*) FROM jobs WHERE campaign=%s "
                "AND (in_file OR task_id IS NOT NULL) GROUP BY model, state",
                (self._c,),
            ):
                out.setdefault(str(model), {})[str(state)] = int(n)
            return out

        return await self._j.read(op)

    # -- kept values (meta) -------------------------------------------------
    def _get_meta(self, key: str) -> asyncio.Future[str | None]:
        async def op(conn: PgConn) -> str | None:
            row = await self._one(
                conn, "SELECT value FROM meta WHERE campaign=%s AND key=%s", (self._c, key)
            )
            return None if row is None else str(row[0])

        return self._j.read(op)

    def _set_meta(
        self, key: str, value: str | None, *, durable: bool = True
    ) -> asyncio.Future[None]:
        async def op(conn: PgConn) -> None:
            await self._put_meta(conn, key, value)

        return self._write(op, durable=durable)

    async def _put_meta(self, conn: PgConn, key: str, value: str | None) -> None:
        """``key`` set to ``value`` (None: removed), in the caller's transaction."""
        if value is None:
            await conn.execute("DELETE FROM meta WHERE campaign=%s AND key=%s", (self._c, key))
            return
        await conn.execute(
            "INSERT INTO meta (campaign, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (campaign, key) DO UPDATE SET value = EXCLUDED.value",
            (self._c, key, value),
        )

    async def _kept(self, key: str, new: str) -> str:
        """The value kept under ``key``, ``new`` made it if none: one for every runner,
        however many ask at once (the first insert wins, the others read it)."""

        async def op(conn: PgConn) -> str:
            await conn.execute(
                "INSERT INTO meta (campaign, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (campaign, key) DO NOTHING",
                (self._c, key, new),
            )
            row = await self._one(
                conn, "SELECT value FROM meta WHERE campaign=%s AND key=%s", (self._c, key)
            )
            return new if row is None else str(row[0])

        return await self._write(op)

    async def callback_token(self, new: str) -> str:
        return await self._kept("callback_token", new)

    async def output(self) -> str | None:
        return await self._get_meta("output")

    async def keep_file_stamp(self, stamp: str) -> None:
        await self._set_meta(FILE_STAMP, stamp)

    async def keep_output(self, where: str) -> None:
        await self._kept("output", where)

    async def identity(self) -> str:
        return await self._kept("journal_id", uuid.uuid4().hex)

    async def known_task_ids(self, task_ids: Collection[str]) -> set[str]:
        ids = list(task_ids)

        async def op(conn: PgConn) -> set[str]:
            rows = await self._all(
                conn,
                "SELECT task_id FROM task_history WHERE campaign=%s AND task_id = ANY(%s) "
                "UNION SELECT task_id FROM jobs WHERE campaign=%s AND task_id = ANY(%s)",
                (self._c, ids, self._c, ids),
            )
            return {str(r[0]) for r in rows}

        return await self._j.read(op)

    async def keep_campaign(self, name: str) -> str:
        """The campaign this database's journal is for: the first run's, kept (one
        database, one campaign, as one SQLite file)."""

        async def op(conn: PgConn) -> str:
            row = await self._one(
                conn, "SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1", ()
            )
            if row is not None:
                return str(row[0])
            await conn.execute(
                "INSERT INTO campaigns (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (name,)
            )
            row = await self._one(
                conn, "SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1", ()
            )
            return name if row is None else str(row[0])

        return await self._write(op)

    async def learned_rpm(self, account: str) -> float | None:
        """The account's row (shared by its runners and campaigns) once it has one;
        before, what this campaign kept."""

        async def op(conn: PgConn) -> tuple[bool, float | None]:
            row = await self._one(conn, "SELECT learned_rpm FROM accounts WHERE id=%s", (account,))
            if row is None:
                return False, None
            return True, None if row[0] is None else float(row[0])

        shared, rpm = await self._j.read(op)
        if shared:
            return rpm
        value = await self._get_meta(f"learned_rpm:{account}")
        try:
            return None if value is None else float(value)
        except ValueError:
            return None

    def remember_rpm(self, account: str, rpm: float | None) -> asyncio.Future[None]:
        key, value = f"learned_rpm:{account}", None if rpm is None else f"{rpm:.1f}"

        async def op(conn: PgConn) -> None:
            await conn.execute(
                "UPDATE accounts SET learned_rpm=%s WHERE id=%s",
                (None if rpm is None else round(rpm, 1), account),
            )
            await self._put_meta(conn, key, value)

        return self._write(op, durable=False)

    @property
    def campaign_id(self) -> str:
        """The campaign's row (``campaigns.id``): what a runner registers under."""
        return self._c

    # -- reads during the run -----------------------------------------------
    async def _paged(self, where: str, args: Sequence[Any], page: int) -> AsyncIterator[JobRow]:
        after_idx, after_id = -1, ""
        while True:
            sql = (
                f"SELECT {SELECT} FROM jobs WHERE campaign=%s AND {where} "
                "AND (idx > %s OR (idx = %s AND id > %s)) ORDER BY idx, id LIMIT %s"
            )
            args_now = (self._c, *args, after_idx, after_idx, after_id, page)

            async def op(
                conn: PgConn, sql: str = sql, a: tuple[Any, ...] = args_now
            ) -> list[JobRow]:
                return [JobRow.from_sql(r) for r in await self._all(conn, sql, a)]

            rows = await self._j.read(op)
            if not rows:
                return
            for row in rows:
                after_idx, after_id = row.idx, row.id
                yield row

    def rows(self, state: JobState, *, page: int, file_only: bool) -> AsyncIterator[JobRow]:
        if self._lease is not None and state is S.QUEUED and file_only:
            return self._claimed(self._lease, None, min(page, CLAIM))
        if self._lease is not None and state in (S.SUBMITTED, S.SUCCEEDED):
            return self._paid(self._lease, state)
        where = "state=%s" + (" AND in_file" if file_only else "")
        return self._paged(where, (state.value,), page)

    async def _paid(self, lease: RunnerLease, state: JobState) -> AsyncIterator[JobRow]:
        """A runner's rows in ``state``, with those nobody owns made its own."""
        for row in await self._leased(lease.claim_paid([state.value])):
            yield row

    async def _leased(self, call: Awaitable[T]) -> T:
        """A call on the runner's own session; the database failing it is told as the
        journal's failure (one line, no password), as the executor's are."""
        try:
            return await call
        except psycopg.Error as exc:
            raise self._j.failure(exc) from None

    async def _claimed(
        self, lease: RunnerLease, kind: Kind | None, batch: int
    ) -> AsyncGenerator[JobRow, None]:
        """Free queued file rows claimed ``batch`` at a time as they are asked for, until
        none is free; those claimed and never asked for are given back."""
        drives = None
        if kind is not None:
            drives = (kind.model, _json(kind.duration), _json(kind.resolution))
        left: list[JobRow] = []
        try:
            while True:
                try:
                    left = await lease.claim(batch, drives)
                except psycopg.Error:
                    # The database is away: nothing claimed now; the caller asks again
                    # later (runners.Runner.claims), meanwhile submits pause.
                    return
                if not left:
                    return
                while left:
                    yield left.pop(0)
        finally:
            if left:
                # Not given back now (the database is away): leaving, or adoption,
                # frees them.
                with contextlib.suppress(psycopg.Error):
                    await lease.release([r.id for r in left])

    async def queued_by_kind(
        self, order: Callable[[list[Kind]], Iterable[Kind]], *, page: int
    ) -> AsyncIterator[JobRow]:
        async def kinds_op(conn: PgConn) -> list[Kind]:
            rows = await self._all(
                conn,
                "SELECT model, kind_duration, kind_resolution FROM jobs WHERE campaign=%s "
                "AND state=%s AND in_file GROUP BY model, kind_duration, kind_resolution "
                "ORDER BY min(idx)",
                (self._c, S.QUEUED.value),
            )
            return [Kind(str(m), d, r) for m, d, r in rows]

        for kind in order(await self._j.read(kinds_op)):
            if self._lease is not None:
                # Closed with this generator: its unasked claims given back now.
                async with contextlib.aclosing(
                    self._claimed(self._lease, kind, min(page, CLAIM))
                ) as claimed:
                    async for row in claimed:
                        yield row
                continue
            where = (
                "state=%s AND in_file AND model=%s AND kind_duration IS NOT DISTINCT FROM %s "
                "AND kind_resolution IS NOT DISTINCT FROM %s"
            )
            args = (S.QUEUED.value, kind.model, _json(kind.duration), _json(kind.resolution))
            async for row in self._paged(where, args, page):
                yield row

    async def queued_brief(self) -> list[tuple[str, str, float | None, Kind]]:
        async def op(conn: PgConn) -> list[tuple[str, str, float | None, Kind]]:
            kinds: dict[tuple[Any, ...], Kind] = {}
            out: list[tuple[str, str, float | None, Kind]] = []
            for job_id, model, cost, duration, resolution in await self._all(
                conn,
                "SELECT id, model, cost_usd, kind_duration, kind_resolution FROM jobs "
                "WHERE campaign=%s AND state=%s AND in_file ORDER BY idx, id",
                (self._c, S.QUEUED.value),
            ):
                key = (model, _key(duration), _key(resolution))
                kind = kinds.get(key)
                if kind is None:
                    kind = kinds[key] = Kind(str(model), duration, resolution)
                out.append((str(job_id), str(model), cost, kind))
            return out

        return await self._j.read(op)

    async def queued_runs(self) -> list[tuple[Kind, int]]:
        async def op(conn: PgConn) -> list[tuple[Kind, int]]:
            runs: list[tuple[Kind, int]] = []
            last: tuple[Any, ...] | None = None
            for drives in await self._all(
                conn,
                "SELECT model, kind_duration, kind_resolution FROM jobs WHERE campaign=%s "
                "AND state=%s AND in_file ORDER BY idx, id",
                (self._c, S.QUEUED.value),
            ):
                if drives == last:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    continue
                last = drives
                model, duration, resolution = drives
                runs.append((Kind(str(model), duration, resolution), 1))
            return runs

        return await self._j.read(op)

    def by_task(self, task_id: str) -> asyncio.Future[JobRow | None]:
        async def op(conn: PgConn) -> JobRow | None:
            return _row(
                await self._one(
                    conn,
                    f"SELECT {SELECT} FROM jobs WHERE campaign=%s AND task_id=%s LIMIT 1",
                    (self._c, task_id),
                )
            )

        return self._j.read(op)

    async def _output_rows(self, conn: PgConn, order: str = "") -> list[OutputRow]:
        rows = [output_row(*r) for r in await self._all(conn, _OUTPUT_ROWS + order, (self._c,))]
        # Names other runners reserved for results they land (outputs.SharedNames): held,
        # as the files they become.
        return rows + await reserved_rows(conn, self._c)

    def file_owners(self) -> asyncio.Future[dict[str, tuple[str, ...]]]:
        async def op(conn: PgConn) -> dict[str, tuple[str, ...]]:
            # In file order: the heap's order moves with updates (an index on the name
            # makes them non-HOT), and SQLite lists a name's holders in the order they came.
            return name_owners(await self._output_rows(conn, " ORDER BY idx, id"))

        return self._j.read(op)

    def refuse_clashes(
        self, exists: Callable[[str], bool] | None, shown: Callable[[str], str]
    ) -> asyncio.Future[list[Clash]]:
        now = self._clock.wall()

        async def op(conn: PgConn) -> list[Clash]:
            # clash.output_clashes, on the rows of Journal.output_rows.
            rows = await self._output_rows(conn, " ORDER BY idx, id")
            queued = [(r[0], r[1]) for r in rows if r[4] == S.QUEUED.value and r[3]]
            # Off the loop: ``exists`` looks at the disk once per queued job.
            found = await asyncio.to_thread(find_clashes, rows, queued, exists)
            refused: list[Clash] = []
            for c in found:
                try:
                    await self._transition(
                        conn,
                        c.job_id,
                        S.FAILED,
                        now,
                        fail_code=OUTPUT_EXISTS,
                        fail_msg=c.message(shown(c.name)),
                    )
                except JournalError:
                    if self._lease is None:
                        raise
                    continue  # another runner took it meanwhile: its name is its own
                refused.append(c)
            return refused

        return self._write(op)

    # -- the submitter's writes ---------------------------------------------
    def mark_submitting(self, job_id: str, attempts: int) -> asyncio.Future[None]:
        if self._lease is not None:
            self._marked[job_id] = attempts
            return asyncio.ensure_future(self._lease.mark_submitting(job_id, attempts, None))
        return self._change(job_id, S.SUBMITTING, attempts=attempts)

    def record_task_id(
        self,
        job_id: str,
        task_id: str,
        request_type: str,
        possibly_duplicated: bool,
        key_fp: str | None = None,
    ) -> asyncio.Future[None]:
        lease = self._lease
        if lease is not None:
            self.changes += 1
            attempts = self._marked.pop(job_id, 0)

            async def record() -> None:
                # False: the row was adopted while this runner was cut off; the id is in
                # task_history, the job flagged, and this runner is fenced for good.
                await self._leased(
                    lease.record_task_id(
                        job_id,
                        task_id,
                        request_type,
                        attempts,
                        key_id=self._accounts.get(key_fp),
                        key_fp=key_fp,
                        possibly_duplicated=possibly_duplicated,
                    )
                )

            return asyncio.ensure_future(record())
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
        now = self._clock.wall()
        self.changes += 1

        async def op(conn: PgConn) -> bool:
            # unrecorded.adopt_task, step for step.
            row = await self._get(conn, job_id)
            if row is None:
                raise AdoptRefused(f"job {job_id!r} is not in the journal")
            if row.task_id == task_id:
                return False
            if row.task_id is not None:
                raise AdoptRefused(
                    f"job {job_id!r} already has task {row.task_id} ({row.state}); "
                    f"task {task_id} was not adopted"
                )
            if row.state is S.FAILED:
                await self._transition(
                    conn, job_id, S.QUEUED, now, owner="any", fail_code=None, fail_msg=None
                )
            if row.state is not S.SUBMITTING:
                await self._transition(conn, job_id, S.SUBMITTING, now, owner="any")
            await self._transition(
                conn,
                job_id,
                S.SUBMITTED,
                now,
                owner="any",
                task_id=task_id,
                submitted_at=now,
                request_type=request_type,
                fail_code=None,
                fail_msg=None,
            )
            # Whichever runner claims it follows it (the one that owned the row may
            # have let it go).
            await conn.execute(
                "UPDATE jobs SET owner=NULL WHERE campaign=%s AND id=%s", (self._c, job_id)
            )
            return True

        return self._write(op)

    def hand_back(self, job_id: str, possibly_duplicated: bool) -> asyncio.Future[None]:
        lease = self._lease
        if lease is not None:
            self._marked.pop(job_id, None)

            async def back() -> None:
                # Not written (the database is away, or the row was adopted): a marked
                # row stays `submitting`, this runner's, and whoever adopts it requeues
                # it flagged; an unmarked one is freed when this runner leaves.
                with contextlib.suppress(psycopg.Error):
                    await lease.hand_back(job_id, possibly_duplicated)

            return asyncio.ensure_future(back())
        now = self._clock.wall()

        async def op(conn: PgConn) -> None:
            row = await self._one(
                conn, "SELECT state FROM jobs WHERE campaign=%s AND id=%s", (self._c, job_id)
            )
            if row is not None and row[0] == S.QUEUED.value:
                return
            await self._transition(
                conn, job_id, S.QUEUED, now, possibly_duplicated=possibly_duplicated
            )

        return self._write(op)

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
        now = self._clock.wall()
        self.changes += 1
        change: Change = {
            "result_urls": list(result_urls),
            "completed_at": completed_at,
            "expires_at": expires_at,
            "cost_time_ms": cost_time_ms,
            "arrived_via": via,
        }
        lease = self._lease
        wrote: dict[str, str] = {}

        async def op(conn: PgConn) -> None:
            try:
                task = await self._transition(
                    conn, job_id, S.SUCCEEDED, now, owner="mine", **change
                )
            except JournalError:
                if lease is None or await self._mine(conn, job_id, lease):
                    raise
                return  # another runner's now (see _change): its owner journals it
            if task is not None:
                wrote["task"] = task
            await conn.execute(
                "INSERT INTO completions (clock_key, seconds, at) VALUES (%s, %s, %s)",
                (clock_key, seconds, now),
            )

        replay = self._replay(job_id, S.SUCCEEDED, now, change, wrote)
        return self._write(op, durable=False, replay=replay)

    # -- the end ------------------------------------------------------------
    async def read_rows(self, consume: Callable[[Iterable[JobRow]], T]) -> T:
        async def page(conn: PgConn, after: tuple[int, int, str]) -> list[tuple[Any, ...]]:
            return await self._all(
                conn,
                f"SELECT (NOT in_file)::int, {SELECT} FROM jobs WHERE campaign=%s "
                "AND ((NOT in_file)::int, idx, id) > (%s, %s, %s) "
                "ORDER BY (NOT in_file)::int, idx, id LIMIT %s",
                (self._c, *after, PAGE),
            )

        def rows(
            fetch: Callable[[tuple[int, int, str]], list[tuple[Any, ...]]],
        ) -> Iterator[JobRow]:
            after = (-1, -1, "")
            while batch := fetch(after):
                for values in batch:
                    yield JobRow.from_sql(values[1:])
                last = batch[-1]
                after = (last[0], last[2], last[1])

        return await self._off_loop(page, rows, consume)


def _key(value: Any) -> str:
    """A kind's value as a key (a jsonb column reads back as lists and dicts)."""
    return json.dumps(value, sort_keys=True)


def _json(value: Any) -> Jsonb | None:
    """A kind's value as its generated jsonb column holds it (None: no value)."""
    return None if value is None else Jsonb(value)
