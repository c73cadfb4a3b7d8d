"""The journal's SQLite connection: the lock, transactions, durability, batches of writes.

Durability. Every commit is durable by default (``synchronous=FULL``: the WAL
is fsynced before COMMIT returns). A write may say ``durable=False``; a
transaction made only of such writes commits with ``synchronous=NORMAL``,
which in WAL mode survives a kill -9 or a crash of the process (the commit is
in the WAL file, in the OS's page cache) and may lose only the last commits
on a power loss or an OS crash, never corrupt the database. Any durable write
in a transaction makes that commit FULL. The run uses ``durable=False`` only
where a lost commit costs nothing paid: the ``succeeded`` transition with its
completion sample (after a power loss the job is back to ``submitted`` and its
task is polled again) and ``done`` (back to ``succeeded``: the result is
downloaded again while its URL lives). ``submitting`` and the task id
(``submitted``) stay durable: losing them would forget, or pay twice for, a
submitted task.

Reads cannot write: :meth:`Connection.reading` refuses writes for its span
(``PRAGMA query_only``), and the journal's executors run every read in it. What
writes, reconcile and learned values included, goes through a transaction
(:meth:`Connection.transaction`, :meth:`Connection.execute_batch`), which says
how durable it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from ..errors import JournalError, JournalUnreadable
from .schema import migrate

__all__ = ["Connection"]


class Connection:
    """One SQLite connection, used from one thread (not thread-safe)."""

    def __init__(self, path: str | Path, *, lock: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        if lock:
            self._acquire_lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._synchronous_full = True  # what the connection is set to now
            self._db.execute("PRAGMA busy_timeout=10000")
            migrate(self._db, self.path)
        except sqlite3.Error as exc:
            self._abandon()
            raise JournalUnreadable(
                f"the journal {self.path} cannot be opened: {exc} (not an apixo-batch "
                "journal, or damaged); restore it, or move it aside to start the campaign "
                "over (jobs it knew as paid would then be submitted again)"
            ) from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()
        self._release_lock()

    def _acquire_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"another apixo-batch run is using the journal {self.path} "
                "(wait for it to finish, or stop it; a killed run frees the lock itself)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        self._db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on leaving (``durable``: see the module docstring).

        Inside another one (a write of :meth:`execute_batch`), a savepoint of it: the
        outer transaction commits, with its own durability."""
        if self._db.in_transaction:
            with self._savepoint():
                yield self._db
            return
        self._use_synchronous(full=durable)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._rollback()
            raise
        self._commit()

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT nested")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled it all back (disk full)
                self._db.execute("ROLLBACK TO nested")
                self._db.execute("RELEASE nested")
            raise
        self._db.execute("RELEASE nested")

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A span in which the journal refuses writes (SQLite's ``query_only``): what runs
        in it is a read. A write raises ``sqlite3.OperationalError`` (SQLITE_READONLY),
        which :meth:`write_refused` tells apart."""
        self._db.execute("PRAGMA query_only=ON")
        try:
            yield
        finally:
            self._db.execute("PRAGMA query_only=OFF")

    def write_refused(self, exc: Exception) -> Exception:
        """What a read that raised ``exc`` in :meth:`reading` fails with: a write it tried
        is a bug, told as such (whatever writes goes through a transaction, which says how
        durable it is), not a read-only disk."""
        if isinstance(exc, sqlite3.OperationalError) and (
            exc.sqlite_errorcode == sqlite3.SQLITE_READONLY
        ):
            return JournalError(f"a read of the journal {self.path} tried to write: {exc}")
        return exc

    def _commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full, I/O error) may leave the transaction open:
            # close it, or every later BEGIN would fail too.
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite rolls some errors (I/O, disk full) back itself: nothing left to undo then.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _use_synchronous(self, *, full: bool) -> None:
        """FULL (fsync every commit) or NORMAL; outside a transaction, only on a change."""
        if full != self._synchronous_full:
            self._db.execute("PRAGMA synchronous=FULL" if full else "PRAGMA synchronous=NORMAL")
            self._synchronous_full = full

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.set_meta_in_tx(key, value)

    def delete_meta_in_tx(self, key: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key=?", (key,))

    def set_meta_in_tx(self, key: str, value: str) -> None:
        """Set a meta value inside a transaction the caller holds (AsyncJournal.write)."""
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def execute_batch(
        self, ops: Sequence[Callable[[Self], Any]], *, durable: bool = True
    ) -> list[Any]:
        """Run several write operations in one transaction (one commit, one fsync).

        Returns each op's result, or the exception it raised, in order: a failing op is
        rolled back alone. ``durable=False`` commits with ``synchronous=NORMAL`` (see
        the module docstring). A failing COMMIT raises (nothing of the batch is committed).

        The batch first runs without savepoints (each costs two statements per op, and
        the thread gives up the GIL around every statement); only if an op raises is it
        rolled back and run again with a savepoint per op. An op may therefore run twice:
        it must act on the journal alone."""
        self._use_synchronous(full=durable)
        self._db.execute("BEGIN IMMEDIATE")
        results: list[Any] = []
        try:
            for op in ops:
                results.append(op(self))
        except Exception as exc:
            self._rollback()
            if len(ops) == 1:
                return [exc]  # the transaction was its savepoint
            return self._execute_each(ops, durable=durable)
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return results

    def _execute_each(self, ops: Sequence[Callable[[Self], Any]], *, durable: bool) -> list[Any]:
        results: list[Any] = []
        with self.transaction(durable=durable):
            for op in ops:
                # A savepoint per op: one failing write must not undo another's task id.
                self._db.execute("SAVEPOINT op")
                try:
                    results.append(op(self))
                except Exception as exc:
                    if not self._db.in_transaction:
                        # SQLite rolled the whole transaction back (the disk is full): no
                        # savepoint is left, and no op of the batch stands.
                        raise
                    self._db.execute("ROLLBACK TO op")
                    results.append(exc)
                self._db.execute("RELEASE op")
        return results
