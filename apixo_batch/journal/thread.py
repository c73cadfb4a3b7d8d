"""The journal seen from the event loop: one thread owns the SQLite connection.

:class:`AsyncJournal` is the one the run uses; :class:`InlineJournal` runs the
same operations on the loop's own thread, at once, for tests that drive the
stages on a fake clock (a real thread's answers would arrive at no fixed turn).

Both run a read where the journal refuses writes (:meth:`~.Connection.reading`):
a read that tries to write fails with :class:`JournalError`. Whatever writes is
a ``write``, committed with the durability it asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, Unpack

from ..errors import JournalError
from .rows import Change
from .states import JobState
from .store import Journal

__all__ = ["AsyncJournal", "InlineJournal", "JournalExecutor"]

T = TypeVar("T")


class JournalExecutor(Protocol):
    """Runs operations on a :class:`Journal`: what the :class:`~.ledger.Ledger` stands on."""

    sync: Journal

    def read(self, fn: Callable[[Journal], T]) -> asyncio.Future[T]:
        """``fn`` run where the journal refuses writes."""
        ...

    def write(
        self, op: Callable[[Journal], T], *, durable: bool = True, alone: bool = False
    ) -> asyncio.Future[T]:
        """``op`` applied and committed. ``alone``: in a transaction of its own, run
        exactly once (an op that consumes an iterator); others may share one and, if
        one of them fails, run again."""
        ...

    async def close(self) -> None: ...


def _read(journal: Journal, fn: Callable[[Journal], Any]) -> tuple[bool, Any]:
    """(True, what ``fn`` returned) or (False, what it raised), run as a read."""
    try:
        with journal.reading():
            return True, fn(journal)
    except Exception as exc:
        # Handed to a future, never raised here: no SQLite error is chained to it.
        return False, journal.write_refused(exc)


class InlineJournal:
    """Every operation runs when called, on the caller's thread (tests, small tools).

    A write is its own transaction (``execute_batch`` of one op), as on the thread."""

    def __init__(self, journal: Journal) -> None:
        self.sync = journal

    def read(self, fn: Callable[[Journal], T]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        ok, value = _read(self.sync, fn)
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
        return fut

    def write(
        self, op: Callable[[Journal], T], *, durable: bool = True, alone: bool = False
    ) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            [result] = self.sync.execute_batch([op], durable=durable)
        except Exception as exc:
            result = exc
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
        return fut

    async def close(self) -> None:
        self.sync.close()


_READ, _WRITE, _WRITE_ALONE, _CLOSE = 0, 1, 2, 3
# (kind, op, the caller's future, durable: may not wait for company); the close sentinel
# carries neither op nor future.
_Item = tuple[int, Callable[[Journal], Any] | None, asyncio.Future[Any] | None, bool]
# (future, succeeded, result or exception): what one delivery hands back to the loop.
_Outcome = tuple[asyncio.Future[Any], bool, Any]


class AsyncJournal:
    """The journal seen from the event loop: one thread owns the connection.

    ``read``, ``write`` and ``transition`` take their operation *when called* and
    return a future; the operations of one event-loop turn are handed to the thread
    together as the turn ends (one wake-up of the thread per turn, not per operation).
    The journal thread takes every operation handed over since its last pass (up to
    about ``max_drain``), runs them in arrival order, each run of consecutive
    writes as one transaction (one commit: group commit) and each read between them
    (so a read queued after a write sees it), then hands all the results to the
    event loop in one callback.

    ``commit_delay`` (seconds, real time): a pass made only of writes whose loss
    costs nothing (``durable=False``) waits that long before it takes what is
    queued, so the writes of the next few turns join its transaction: far fewer
    commits and wake-ups of both threads for them. Nothing else ever waits for
    company: a durable write (a task id, a submit mark), a read (someone waiting
    to go on) or the close is committed at once, and one handed over during a
    wait ends it. The wait is in real time, outside the injected clock: it is a
    batching window of the thread, not a wait of the run's logic.

    Cancelling a caller does not cancel its operation: once ``write`` has returned,
    the op runs and commits even if the awaiting task is cancelled (its future then
    simply gets no result). The engine relies on this: a task id the API answered
    reaches the journal even when the run is interrupted, and ``close`` runs every
    operation queued before it.

    An op that raises fails its own caller only (a savepoint per op); a failing
    COMMIT fails every op of that transaction. Should the thread itself die (a bug),
    pending and later callers get a :class:`JournalError` instead of waiting forever.
    """

    def __init__(
        self, journal: Journal, *, max_drain: int = 1000, commit_delay: float = 0.0
    ) -> None:
        self.sync = journal
        self._max_drain = max_drain
        self._commit_delay = commit_delay
        # a read, a durable write or the close is queued: stop waiting
        self._hurry = threading.Event()
        self._queue: queue.SimpleQueue[list[_Item]] = queue.SimpleQueue()
        # Orders enqueues against closing and dying: nothing is queued after the close
        # sentinel, nor after the thread's last look at the queue when it dies.
        self._gate = threading.Lock()
        self._closing = False
        self._finished = False
        self._died: BaseException | None = None
        self._close_waiters: list[asyncio.Future[None]] = []
        # Operations of the current loop turn: handed over together when the turn ends,
        # so the thread wakes (and commits) once per turn, not once per operation.
        self._turn: list[_Item] = []
        self._turn_hurries = False  # the turn holds what may not wait: its hand-over hurries
        self._thread = threading.Thread(target=self._serve, name="apixo-journal", daemon=True)
        self._thread.start()

    # -- the event loop's side ----------------------------------------------
    def read(self, fn: Callable[[Journal], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the journal thread, after every operation queued before it."""
        return self._submit(_READ, fn, True)

    def write(
        self, op: Callable[[Journal], T], *, durable: bool = True, alone: bool = False
    ) -> asyncio.Future[T]:
        """Apply ``op`` and commit; writes queued together share one transaction (unless
        ``alone``: see :meth:`JournalExecutor.write`).

        Queued at once (not at the first await); it runs and commits even if the caller
        is cancelled. ``durable=False``: see :mod:`.connection`."""
        return self._submit(_WRITE_ALONE if alone else _WRITE, op, durable)

    def transition(
        self,
        job_id: str,
        new: JobState,
        now: float,
        *,
        durable: bool = True,
        **change: Unpack[Change],
    ) -> asyncio.Future[None]:
        """:meth:`Journal.transition` as a write (queued at once, like :meth:`write`)."""
        return self._submit(_WRITE, lambda j: j.transition(job_id, new, now, **change), durable)

    async def close(self) -> None:
        """Run everything queued so far, close the journal (freeing its lock), stop the
        thread. Later reads and writes raise :class:`JournalError`; closing again is a
        no-op (or raises, like everything else, if the thread died)."""
        loop = asyncio.get_running_loop()
        with self._gate:
            finished = self._finished
            if not finished:
                done: asyncio.Future[None] = loop.create_future()
                self._close_waiters.append(done)
                if not self._closing:
                    self._closing = True
                    self._hand_over_turn()
                    self._queue.put([(_CLOSE, None, None, True)])
                    self._hurry.set()
        if finished:
            if self._died is not None:
                raise self._unusable()
            return
        await done
        # The thread posted its last results and is returning: a join takes microseconds.
        self._thread.join(timeout=1.0)

    def _submit(
        self, kind: int, op: Callable[[Journal], Any], durable: bool
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._gate:
            if self._closing or self._died is not None:
                raise self._unusable()
            if not self._turn:
                loop.call_soon(self._end_of_turn)
            self._turn.append((kind, op, fut, durable))
            if durable:  # reads are queued durable: they never wait either
                self._turn_hurries = True
        return fut

    def _end_of_turn(self) -> None:
        with self._gate:
            self._hand_over_turn()

    def _hand_over_turn(self) -> None:
        # Under the gate. One queue item per turn; the thread unpacks it in order.
        if not self._turn:
            return
        turn, self._turn = self._turn, []
        if self._died is None:
            self._queue.put(turn)
            if self._turn_hurries:
                self._turn_hurries = False
                self._hurry.set()  # after the put: see _serve
            return
        # The thread died during this turn: nobody will read the queue again.
        error = self._unusable()
        for _, _, fut, _ in turn:
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def _unusable(self) -> JournalError:
        if self._died is None:
            return JournalError(f"the journal {self.sync.path} is closed")
        error = JournalError(
            f"the journal thread stopped unexpectedly ({self._died!r}); "
            "the run cannot record anything more"
        )
        error.__cause__ = self._died
        return error

    # -- the journal thread ---------------------------------------------------
    def _serve(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                batch = self._queue.get()
                # Cleared before the queue is looked at again: what may not wait, handed
                # over from now on, either is in the drain or ends the wait (it is set
                # after the put).
                self._hurry.clear()
                backlog = self._drain(batch)
                if self._commit_delay and not backlog and not any(item[3] for item in batch):
                    self._hurry.wait(self._commit_delay)
                    self._drain(batch)
                if self._process(batch):
                    return
                batch = []
        except BaseException as exc:  # a bug: fail everyone rather than hang them
            self._die(exc, batch)

    def _drain(self, batch: list[_Item]) -> bool:
        """Add what is queued (up to about ``max_drain``); True if there was anything."""
        found = False
        while len(batch) < self._max_drain:
            try:
                batch.extend(self._queue.get_nowait())
            except queue.Empty:
                break
            found = True
        return found

    def _process(self, batch: list[_Item]) -> bool:
        """Run one drained batch in order; True once the close sentinel was handled."""
        out: list[_Outcome] = []
        writes: list[_Item] = []
        closing = False
        for item in batch:
            kind, op, fut, _ = item
            if kind == _WRITE:
                writes.append(item)
                continue
            if writes:
                self._commit(writes, out)
                writes = []
            if kind == _CLOSE:
                closing = True
                break
            if kind == _WRITE_ALONE:
                self._commit([item], out)  # a batch of one op never runs it twice
                continue
            assert op is not None and fut is not None
            out.append((fut, *_read(self.sync, op)))
        if writes:
            self._commit(writes, out)
        if closing:
            error: Exception | None = None
            try:
                self.sync.close()
            except Exception as exc:
                error = exc
            with self._gate:
                self._finished = True
                waiters, self._close_waiters = self._close_waiters, []
            out.extend((w, error is None, error) for w in waiters)
        self._post(out)
        return closing

    def _commit(self, writes: list[_Item], out: list[_Outcome]) -> None:
        ops: list[Callable[[Journal], Any]] = []
        durable = False
        for _, op, _, item_durable in writes:
            assert op is not None
            ops.append(op)
            durable = durable or item_durable
        try:
            results = self.sync.execute_batch(ops, durable=durable)
        except Exception as exc:  # BEGIN or COMMIT failed: the whole transaction did
            results = [exc] * len(ops)
        for (_, _, fut, _), result in zip(writes, results, strict=True):
            assert fut is not None
            out.append((fut, not isinstance(result, BaseException), result))

    def _die(self, exc: BaseException, batch: list[_Item]) -> None:
        with contextlib.suppress(Exception):
            self.sync._rollback()
        with contextlib.suppress(Exception):
            self.sync.close()  # frees the lock: a new run can take over
        with self._gate:
            self._died = exc
            self._finished = True
            waiters, self._close_waiters = self._close_waiters, []
        # Nothing more can be queued now: fail what is.
        while True:
            try:
                batch.extend(self._queue.get_nowait())
            except queue.Empty:
                break
        futures = [fut for _, _, fut, _ in batch if fut is not None]
        self._post([(f, False, self._unusable()) for f in (*futures, *waiters)])

    @staticmethod
    def _post(out: list[_Outcome]) -> None:
        """Hand the outcomes to their loop(s): one callback per loop for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in out:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, outcomes in by_loop.items():
            # A closed loop has nobody left to wait; the ops are committed regardless.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, outcomes)


def _deliver(outcomes: list[_Outcome]) -> None:
    """On the event loop: resolve each future, skipping those already done (cancelled)."""
    for fut, ok, value in outcomes:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            if isinstance(value, StopIteration):  # a future refuses StopIteration
                error = RuntimeError(f"journal operation raised {value!r}")
                error.__cause__ = value
                value = error
            fut.set_exception(value)
