"""The journal in PostgreSQL seen from the event loop: one task runs its operations in order.

:class:`PgExecutor` keeps :class:`~..thread.AsyncJournal`'s contract, so that the
ledger's invariants read the same on both backends:

* an operation is queued when ``read``/``write`` is called (not at the first
  await) and runs, and commits, even if its caller is cancelled;
* operations run in the order they were queued, each read after the writes
  queued before it (one connection at a time, one task);
* the writes of one event-loop turn (and any queued while the previous batch
  ran) share one transaction: one commit, one WAL flush (group commit). Should
  one of them fail, the transaction is rolled back and they run again, each in
  a savepoint, so that a failing write cannot undo another's task id;
* a transaction made only of writes whose loss costs nothing (``durable=False``)
  commits with ``synchronous_commit=off`` and may wait ``commit_delay`` for
  company; a durable write, a read or the close never waits;
* a lazy write may come with its **replay**: the same change, applied only to a row
  still behind it. A server crash loses the lazy commits of its last moments while
  this process lives on and believes them (a runner that forgot a task it saw end
  waits for it forever: the row says it is still running). So until a durable
  commit has flushed the WAL past them, their replays are kept (a commit flushes
  all the WAL before it, once it wrote any: the transaction is given an id; one
  is made durable when the oldest lazy one is :data:`LAZY_WINDOW_S` old), and on
  every new connection (a crash ends them all; the pool opens new ones) they run
  first, before the operation it was opened for. Where they find their rows
  already past them they change nothing.

The connection comes from a psycopg-pool pool, which replaces a broken one: a
database that restarts costs the operations of that moment (each fails its
caller with :class:`~apixo_batch.errors.StorageError`), not the run's journal.
With ``ride_out`` (a runner of a shared campaign: its lease and grace) a batch
whose connection failed *before* its commit was asked for (nothing of it can have
committed) is run again on a fresh connection until the database answers or that
time has passed; reads likewise. A failure during the commit is never retried: it
may have landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from ...errors import JournalError, StorageError
from .url import scrub, shown

__all__ = ["DatabaseFailed", "Op", "PgConn", "PgExecutor", "database_failed"]

T = TypeVar("T")
PgConn = psycopg.AsyncConnection[tuple[Any, ...]]
#: one operation on the database: its statements on the connection it is given
Op = Callable[[PgConn], Awaitable[T]]

_READ, _WRITE, _WRITE_ALONE = 0, 1, 2
#: seconds between tries while a connection failure is ridden out
_RIDE_PAUSE_S = 0.25
#: seconds the oldest lazy commit may wait for a durable one to flush it (and drop its
#: replay): one fsync in 5 s at most, the replays of 5 s of lazy writes kept
LAZY_WINDOW_S = 5.0
# (kind, op, the caller's future, durable, its replay should a crash lose it)
_Item = tuple[int, Op[Any], asyncio.Future[Any], bool, Op[Any] | None]

# The pool warns of each failed connection attempt and each connection it discards; with
# no handler configured, logging's last resort prints those to stderr all through an
# outage the run rides out (and says in its own one line if it cannot).
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


class DatabaseFailed(StorageError):
    """PostgreSQL could not be reached, or failed a statement for a reason of its own
    (not a refusal of the journal's): one line naming the database (no password)."""


def database_failed(url: str, exc: psycopg.Error, doing: str = "failed") -> DatabaseFailed:
    """One line for ``exc``, naming the database without its password."""
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    return DatabaseFailed(f"the journal {shown(url)} {doing}: {scrub(detail, url)}")


class PgExecutor:
    """Runs the ledger's operations on a pooled connection, in order (module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[PgConn],
        url: str,
        *,
        commit_delay: float = 0.0,
        max_batch: int = 1000,
        ride_out: float = 0.0,
    ) -> None:
        self._pool = pool
        #: seconds a connection failure before the commit is ridden out (module docstring)
        self.ride_out = ride_out
        #: while this says so (None: always): a runner whose lease is lost stops riding
        self.riding: Callable[[], bool] | None = None
        self._url = url
        self.where = shown(url)
        self._commit_delay = commit_delay
        self._max_batch = max_batch
        self._queue: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        self._turn: list[_Item] = []
        self._turn_hurries = False
        self._hurry = asyncio.Event()
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._serve(), name="apixo-pg")
        #: :data:`LAZY_WINDOW_S` (tests wait longer)
        self.lazy_window_s = LAZY_WINDOW_S
        #: transactions committed, and of them durable (the bench's count)
        self.commits = 0
        self.durable_commits = 0
        # The replays of lazy commits not yet flushed for sure, and when the first came.
        self._unflushed: list[Op[Any]] = []
        self._unflushed_since = 0.0
        #: connections the replays were run on (or none was kept when it opened)
        self._known: weakref.WeakSet[PgConn] = weakref.WeakSet()
        #: lazy writes written again after a server restart (most found already there)
        self.replayed = 0

    # -- the callers' side ----------------------------------------------------
    def read(self, op: Op[T]) -> asyncio.Future[T]:
        return self._submit(_READ, op, True)

    def write(
        self, op: Op[T], *, durable: bool = True, alone: bool = False, replay: Op[Any] | None = None
    ) -> asyncio.Future[T]:
        """``replay`` (a lazy write's): see the module docstring."""
        return self._submit(_WRITE_ALONE if alone else _WRITE, op, durable, replay)

    def _submit(
        self, kind: int, op: Op[Any], durable: bool, replay: Op[Any] | None = None
    ) -> asyncio.Future[Any]:
        if self._closing or self._worker.done():
            raise JournalError(f"the journal {self.where} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._turn:
            loop.call_soon(self._end_of_turn)
        self._turn.append((kind, op, fut, durable, replay))
        if durable:
            self._turn_hurries = True
        return fut

    def _end_of_turn(self) -> None:
        if not self._turn:
            return
        turn, self._turn = self._turn, []
        self._queue.put_nowait(turn)
        if self._turn_hurries:
            self._turn_hurries = False
            self._hurry.set()

    async def close(self) -> None:
        """Run everything queued so far, then close the pool. Later calls raise."""
        if not self._closing:
            self._closing = True
            self._end_of_turn()
            self._queue.put_nowait(None)
            self._hurry.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._worker)
        await self._pool.close()

    # -- the worker -------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            self._hurry.clear()
            batch, closing = self._drain(first)
            if (
                self._commit_delay
                and not closing
                and not any(item[3] for item in batch)
                and self._queue.empty()
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._commit_delay)
                more, closing = self._drain([])
                batch.extend(more)
            await self._process(batch)
            if closing:
                return

    def _drain(self, batch: list[_Item]) -> tuple[list[_Item], bool]:
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if more is None:
                return batch, True
            batch.extend(more)
        return batch, False

    async def _process(self, batch: list[_Item]) -> None:
        writes: list[_Item] = []
        for item in batch:
            kind = item[0]
            if kind == _WRITE:
                writes.append(item)
                continue
            if writes:
                await self._commit(writes)
                writes = []
            if kind == _WRITE_ALONE:
                await self._commit([item])
            else:
                await self._read(item)
        if writes:
            await self._commit(writes)

    async def _read(self, item: _Item) -> None:
        _, op, fut, _, _ = item
        deadline = asyncio.get_running_loop().time() + self.ride_out
        try:
            while True:
                try:
                    async with self._pool.connection() as conn:
                        await self._replay_on_new(conn)
                        result = await op(conn)
                    break
                except psycopg.OperationalError:
                    if not await self._again(deadline):
                        raise
        except psycopg.Error as exc:
            _fail(fut, self._failed(exc))
        except Exception as exc:
            _fail(fut, exc)
        else:
            _settle(fut, result)

    async def _again(self, deadline: float) -> bool:
        """After a connection failure: wait a moment and say whether to try again."""
        if asyncio.get_running_loop().time() >= deadline:
            return False
        if self.riding is not None and not self.riding():
            return False
        await asyncio.sleep(_RIDE_PAUSE_S)
        return True

    async def _commit(self, writes: list[_Item]) -> None:
        durable = any(item[3] for item in writes) or self._flush_due()
        deadline = asyncio.get_running_loop().time() + self.ride_out
        try:
            while True:
                committing: list[bool] = []
                try:
                    async with self._pool.connection() as conn:
                        await self._replay_on_new(conn)
                        flushing = len(self._unflushed) if durable else 0
                        results = await self._transaction(conn, writes, durable, committing)
                    break
                except psycopg.OperationalError:
                    # Before the commit was asked for, nothing of the batch landed.
                    if committing or not await self._again(deadline):
                        raise
        except psycopg.Error as exc:  # BEGIN, COMMIT or the connection failed: all did
            error = self._failed(exc)
            for _, _, fut, _, _ in writes:
                _fail(fut, error)
            return
        if committing:
            # A durable commit that wrote (given an id) flushed the WAL of every commit
            # before it: their replays are done with. (A refused write committed nothing.)
            del self._unflushed[:flushing]
        for (_, _, fut, _, replay), (ok, value) in zip(writes, results, strict=True):
            if ok:
                if replay is not None and not durable:
                    self._keep_replay(replay)
                _settle(fut, value)
            else:
                _fail(fut, value)

    # -- lazy commits a crash may lose ------------------------------------------
    def _flush_due(self) -> bool:
        return bool(self._unflushed) and (
            asyncio.get_running_loop().time() - self._unflushed_since >= self.lazy_window_s
        )

    def _keep_replay(self, replay: Op[Any]) -> None:
        if not self._unflushed:
            self._unflushed_since = asyncio.get_running_loop().time()
        self._unflushed.append(replay)

    async def _replay_on_new(self, conn: PgConn) -> None:
        """On a connection not seen before (the server may have crashed since the last
        one: its connections all ended), the lazy writes not known flushed are written
        again first, in their order, each only where its row is still behind, in one
        durable transaction. One that fails for a passing reason (a lock or statement
        timeout, a deadlock) is kept for the next time."""
        if conn in self._known:
            return
        if self._unflushed:
            replays = list(self._unflushed)
            failed: list[Op[Any]] = []
            async with conn.transaction():
                await conn.execute("SELECT txid_current()")  # the commit flushes the WAL
                for replay in replays:
                    try:
                        async with conn.transaction():
                            await replay(conn)
                    except psycopg.Error as exc:
                        if isinstance(exc, psycopg.OperationalError) and conn.closed:
                            raise
                        failed.append(replay)
            self._unflushed[: len(replays)] = failed
            self.replayed += len(replays) - len(failed)
        self._known.add(conn)

    async def _transaction(
        self, conn: PgConn, writes: list[_Item], durable: bool, committing: list[bool]
    ) -> list[tuple[bool, Any]]:
        """The batch in one transaction (each alone, in savepoints, should one fail);
        ``committing`` gains an item once a commit was asked for."""
        results: list[tuple[bool, Any]] = []
        failed = False
        async with conn.transaction() as tx:
            await self._durability(conn, durable)
            for _, op, _, _, _ in writes:
                try:
                    results.append((True, await op(conn)))
                except Exception as exc:
                    if isinstance(exc, psycopg.OperationalError) and conn.closed:
                        raise
                    failed = True
                    results.append((False, exc))
                    break
            if failed:
                # Without savepoints, one failing op aborted the whole transaction: run
                # them again, each alone (a savepoint), as SQLite's execute_batch does.
                raise psycopg.Rollback(tx)
            committing.append(True)
        if not failed:
            self._count(durable)
            return results
        if len(writes) == 1:
            return [self._refusal(results[0])]
        results = []
        async with conn.transaction():
            await self._durability(conn, durable)
            for _, op, _, _, _ in writes:
                try:
                    async with conn.transaction():
                        results.append((True, await op(conn)))
                except Exception as exc:
                    if isinstance(exc, psycopg.OperationalError) and conn.closed:
                        raise
                    results.append(self._refusal((False, exc)))
            committing.append(True)
        self._count(durable)
        return results

    def _refusal(self, outcome: tuple[bool, Any]) -> tuple[bool, Any]:
        ok, value = outcome
        if not ok and isinstance(value, psycopg.Error):
            return False, self._failed(value)
        return outcome

    async def _durability(self, conn: PgConn, durable: bool) -> None:
        if not durable:
            # Lost in a server crash at most like an aborted transaction: written again
            # by its replay (module docstring), or the next run polls the task, or
            # fetches the file, again (see journal/ledger.py).
            await conn.execute("SET LOCAL synchronous_commit = off")
        elif self._unflushed:
            # A commit that wrote nothing has no id and flushes nothing: give it one, so
            # that it flushes the lazy commits before it and their replays can go.
            await conn.execute("SELECT txid_current()")

    def _count(self, durable: bool) -> None:
        self.commits += 1
        if durable:
            self.durable_commits += 1

    def _failed(self, exc: psycopg.Error) -> StorageError:
        return database_failed(self._url, exc)

    def failure(self, exc: psycopg.Error) -> StorageError:
        """``exc`` as the journal's failure: one line naming the database, no password."""
        return self._failed(exc)


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
