"""The journal: one SQLite row per job, the single source of truth across runs.

Every state change lands here first. The task id of a submit is committed
(WAL, ``synchronous=FULL``) before the engine does anything else with it, so a
kill -9, a reboot or a CI cancel never forgets a paid task.

States (stored as text)::

    queued ─▶ submitting ─▶ submitted ─▶ succeeded ─▶ done
                 │  │            │            └──────▶ expired
                 │  └─▶ queued   └──▶ failed ─(--retry-failed)─▶ queued
                 └─────▶ failed (input rejected)

``submitting`` marks the only window where a crash leaves doubt (request sent,
answer not journaled): on restart those jobs go back to ``queued`` flagged
*possibly duplicated*. Transitions live in :data:`TRANSITIONS`; the journal
refuses anything else.

The connection is used from one worker thread; the engine talks to it through
:class:`AsyncJournal`, which batches concurrent writes into one transaction
(group commit) so 150 submits a second cost a handful of fsyncs, not 150.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import JournalError

__all__ = ["TRANSITIONS", "AsyncJournal", "JobRow", "JobState", "Journal", "SyncResult"]

T = TypeVar("T")

SCHEMA_VERSION = 1


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.SUBMITTING}),
    S.SUBMITTING: frozenset({S.SUBMITTED, S.QUEUED, S.FAILED}),
    S.SUBMITTED: frozenset({S.SUBMITTED, S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset({S.SUCCEEDED, S.DONE, S.EXPIRED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.DONE: frozenset(),
    S.EXPIRED: frozenset(),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    input_json TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    filename TEXT NOT NULL,
    cost_usd REAL,
    in_file INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    task_id TEXT,
    request_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    possibly_duplicated INTEGER NOT NULL DEFAULT 0,
    changed_input_hash TEXT,
    submitted_at REAL,
    completed_at REAL,
    result_urls TEXT,
    expires_at REAL,
    files TEXT,
    bytes INTEGER,
    sha256 TEXT,
    fail_code TEXT,
    fail_msg TEXT,
    cost_time_ms INTEGER,
    arrived_via TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state, idx);
CREATE INDEX IF NOT EXISTS jobs_order_idx ON jobs (in_file, idx, id);
-- Not UNIQUE on purpose: should the API ever hand out a task id twice, both paid
-- tasks must still be journaled (a constraint error would lose the second one).
CREATE INDEX IF NOT EXISTS jobs_task_idx ON jobs (task_id) WHERE task_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_history (
    task_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS completions (
    clock_key TEXT NOT NULL,
    seconds REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS completions_key_idx ON completions (clock_key, at);
"""

_COLUMNS = (
    "id idx model provider input_json input_hash filename cost_usd in_file state task_id "
    "request_type attempts possibly_duplicated changed_input_hash submitted_at completed_at "
    "result_urls expires_at files bytes sha256 fail_code fail_msg cost_time_ms arrived_via"
).split()


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the journal knows it."""

    id: str
    idx: int
    model: str
    provider: str
    input_json: str
    input_hash: str
    filename: str
    cost_usd: float | None
    in_file: bool
    state: JobState
    task_id: str | None
    request_type: str | None
    attempts: int
    possibly_duplicated: bool
    changed_input_hash: str | None
    submitted_at: float | None
    completed_at: float | None
    result_urls: tuple[str, ...]
    expires_at: float | None
    files: tuple[str, ...]
    bytes: int | None
    sha256: tuple[str, ...]
    fail_code: str | None
    fail_msg: str | None
    cost_time_ms: int | None
    arrived_via: str | None

    @property
    def input(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.input_json)
        return value

    @classmethod
    def from_sql(cls, row: Sequence[Any]) -> JobRow:
        """A row selected with the columns in ``_COLUMNS`` order (hot: 100k per manifest)."""
        (
            id_, idx, model, provider, input_json, input_hash, filename, cost_usd, in_file,
            state, task_id, request_type, attempts, dup, changed, submitted_at, completed_at,
            result_urls, expires_at, files, bytes_, sha256, fail_code, fail_msg, cost_time_ms,
            arrived_via,
        ) = row  # fmt: skip
        return cls(
            id_, idx, model, provider, input_json, input_hash, filename, cost_usd,
            bool(in_file), _STATES[state], task_id, request_type, attempts, bool(dup), changed,
            submitted_at, completed_at, _json_list(result_urls), expires_at, _json_list(files),
            bytes_, _json_list(sha256), fail_code, fail_msg, cost_time_ms, arrived_via,
        )  # fmt: skip


_STATES = {s.value: s for s in JobState}


def _json_list(text: str | None) -> tuple[str, ...]:
    # Most rows hold no list yet: skip the JSON parser for them.
    if not text or text == "[]":
        return ()
    return tuple(json.loads(text))


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the job file says about one job (the journal's input for a sync)."""

    id: str
    idx: int
    model: str
    provider: str
    input_json: str
    input_hash: str
    filename: str
    cost_usd: float | None


@dataclass
class SyncResult:
    added: int = 0
    unchanged: int = 0
    updated: int = 0  # input changed before any submit: the new input is used
    changed_after_submit: list[str] | None = None  # ids whose paid task follows the old input
    dropped_from_file: int = 0


class Journal:
    """Synchronous journal on one SQLite connection. Not thread-safe: one thread uses it."""

    def __init__(self, path: str | Path, *, lock: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        if lock:
            self._acquire_lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )

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
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.set_meta_in_tx(key, value)

    def set_meta_in_tx(self, key: str, value: str) -> None:
        """Set a meta value inside a transaction the caller holds (AsyncJournal.write)."""
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- sync with the job file -----------------------------------------------
    def sync(self, jobs: Iterable[NewJob], now: float, batch: int = 2000) -> SyncResult:
        """Bring the journal in line with the job file, in batches (bounded memory)."""
        result = SyncResult(changed_after_submit=[])
        with self.transaction() as db:
            db.execute("UPDATE jobs SET in_file=0")
        chunk: list[NewJob] = []
        for job in jobs:
            chunk.append(job)
            if len(chunk) >= batch:
                self._sync_chunk(chunk, now, result)
                chunk = []
        if chunk:
            self._sync_chunk(chunk, now, result)
        row = self._db.execute("SELECT count(*) FROM jobs WHERE in_file=0").fetchone()
        result.dropped_from_file = int(row[0])
        return result

    def _sync_chunk(self, chunk: list[NewJob], now: float, result: SyncResult) -> None:
        ids = [j.id for j in chunk]
        known: dict[str, tuple[str, str, str | None]] = {}
        with self.transaction() as db:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for jid, h, state, task in db.execute(
                    f"SELECT id, input_hash, state, task_id FROM jobs WHERE id IN ({marks})", part
                ):
                    known[jid] = (h, state, task)
            for j in chunk:
                old = known.get(j.id)
                if old is None:
                    db.execute(
                        "INSERT INTO jobs(id, idx, model, provider, input_json, input_hash, "
                        "filename, cost_usd, in_file, state, updated_at) "
                        "VALUES (?,?,?,?,?,?,?,?,1,?,?)",
                        (
                            j.id,
                            j.idx,
                            j.model,
                            j.provider,
                            j.input_json,
                            j.input_hash,
                            j.filename,
                            j.cost_usd,
                            S.QUEUED.value,
                            now,
                        ),
                    )
                    result.added += 1
                    continue
                old_hash, state, task_id = old
                if old_hash == j.input_hash:
                    db.execute(
                        "UPDATE jobs SET idx=?, filename=?, cost_usd=?, in_file=1, "
                        "changed_input_hash=NULL WHERE id=?",
                        (j.idx, j.filename, j.cost_usd, j.id),
                    )
                    result.unchanged += 1
                elif task_id is None and state in (S.QUEUED.value, S.FAILED.value):
                    # Never paid for under the old input: the new input simply replaces it
                    # (and an input the API rejected gets its chance once it is fixed).
                    db.execute(
                        "UPDATE jobs SET idx=?, model=?, provider=?, input_json=?, input_hash=?, "
                        "filename=?, cost_usd=?, in_file=1, changed_input_hash=NULL, "
                        "state='queued', fail_code=NULL, fail_msg=NULL, "
                        "updated_at=? WHERE id=?",
                        (
                            j.idx,
                            j.model,
                            j.provider,
                            j.input_json,
                            j.input_hash,
                            j.filename,
                            j.cost_usd,
                            now,
                            j.id,
                        ),
                    )
                    result.updated += 1
                else:
                    # Paid (or possibly paid) under the old input: keep following that task,
                    # and say so; resubmitting silently would pay twice.
                    db.execute(
                        "UPDATE jobs SET idx=?, filename=?, in_file=1, changed_input_hash=? "
                        "WHERE id=?",
                        (j.idx, j.filename, j.input_hash, j.id),
                    )
                    assert result.changed_after_submit is not None
                    result.changed_after_submit.append(j.id)

    def recover_interrupted_submits(self, now: float) -> int:
        """Jobs left ``submitting`` by a crash: back to ``queued``, flagged possibly duplicated."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, possibly_duplicated=1, updated_at=? WHERE state=?",
                (S.QUEUED.value, now, S.SUBMITTING.value),
            )
            return cur.rowcount

    def requeue_failed(self, now: float) -> int:
        """``--retry-failed``: failed jobs become submittable again (it costs money again)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, task_id=NULL, fail_code=NULL, fail_msg=NULL, "
                "updated_at=? WHERE state=? AND in_file=1",
                (S.QUEUED.value, now, S.FAILED.value),
            )
            return cur.rowcount

    # -- reads ----------------------------------------------------------------
    def get(self, job_id: str) -> JobRow | None:
        row = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        return None if row is None else JobRow.from_sql(row)

    def by_task(self, task_id: str) -> JobRow | None:
        row = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE task_id=?", (task_id,)
        ).fetchone()
        return None if row is None else JobRow.from_sql(row)

    def page(
        self,
        states: Sequence[JobState],
        after_idx: int,
        limit: int,
        *,
        after_id: str | None = None,
        file_only: bool = True,
    ) -> list[JobRow]:
        """Up to ``limit`` jobs in the given states, in file order, after (``after_idx``,
        ``after_id``). ``file_only=False`` includes jobs no longer in the job file (paid
        work is followed whatever the file says now)."""
        marks = ",".join("?" * len(states))
        scope = "AND in_file=1 " if file_only else ""
        # Without after_id: strictly after the idx. With it: after (idx, id), so that
        # removed jobs sharing an idx with a file job are not skipped.
        tie = "" if after_id is None else "OR (idx = ? AND id > ?)"
        tie_args: tuple[Any, ...] = () if after_id is None else (after_idx, after_id)
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({marks}) "
            f"AND (idx > ? {tie}) {scope}ORDER BY idx, id LIMIT ?",
            (*[s.value for s in states], after_idx, *tie_args, limit),
        ).fetchall()
        return [JobRow.from_sql(r) for r in rows]

    def in_states(self, states: Sequence[JobState]) -> list[JobRow]:
        """Every job in these states, file jobs first (bounded by what is in flight)."""
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({marks}) "
            "ORDER BY in_file DESC, idx",
            tuple(s.value for s in states),
        ).fetchall()
        return [JobRow.from_sql(r) for r in rows]

    def iter_all(self, batch: int = 2000) -> Iterator[JobRow]:
        """Every job, file jobs in file order first, then jobs no longer in the file."""
        for in_file in (1, 0):
            # Page on (idx, id): jobs dropped from different versions of the file may
            # share an idx, and a tie on a page boundary must not be skipped.
            last_idx, last_id = -1, ""
            while True:
                rows = self._db.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE in_file=? AND "
                    "(idx > ? OR (idx = ? AND id > ?)) ORDER BY idx, id LIMIT ?",
                    (in_file, last_idx, last_idx, last_id, batch),
                ).fetchall()
                if not rows:
                    break
                for r in rows:
                    yield JobRow.from_sql(r)
                last_idx, last_id = int(rows[-1][1]), str(rows[-1][0])

    def counts(self) -> dict[str, int]:
        return {
            str(state): int(n)
            for state, n in self._db.execute(
                "SELECT state, count(*) FROM jobs WHERE in_file=1 OR task_id IS NOT NULL "
                "GROUP BY state"
            )
        }

    def counts_by_model(self) -> dict[str, dict[str, int]]:
        """Jobs per model and state (for progress rows)."""
        out: dict[str, dict[str, int]] = {}
        for model, state, n in self._db.execute(
            "SELECT model, state, count(*) FROM jobs WHERE in_file=1 OR task_id IS NOT NULL "
            "GROUP BY model, state"
        ):
            out.setdefault(str(model), {})[str(state)] = int(n)
        return out

    def totals(self) -> dict[str, float]:
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(possibly_duplicated), 0) FROM jobs"
        ).fetchone()
        # Every task ever journaled was paid for, also the first task of a job that
        # --retry-failed sent again (its task_id is cleared; its history row stays).
        paid = self._db.execute(
            "SELECT coalesce(sum(coalesce(j.cost_usd, 0)), 0), "
            "count(DISTINCT CASE WHEN j.cost_usd IS NULL THEN j.id END) "
            "FROM task_history h JOIN jobs j ON j.id = h.job_id"
        ).fetchone()
        return {
            "jobs": float(row[0]),
            "possibly_duplicated": float(row[1]),
            "spent_known_usd": float(paid[0]),
            "spent_unknown_jobs": float(paid[1]),
        }

    def queued_cost(self) -> tuple[float, int, int]:
        """(known estimated USD, jobs of unknown price, jobs) of what is left to submit."""
        row = self._db.execute(
            "SELECT coalesce(sum(cost_usd), 0), "
            "coalesce(sum(CASE WHEN cost_usd IS NULL THEN 1 END), 0), count(*) "
            "FROM jobs WHERE state=? AND in_file=1",
            (S.QUEUED.value,),
        ).fetchone()
        return float(row[0]), int(row[1]), int(row[2])

    # -- writes ---------------------------------------------------------------
    def transition(self, job_id: str, new: JobState, now: float, **fields: Any) -> None:
        """Move one job to ``new``, setting ``fields``; refuse an illegal change."""
        row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JournalError(f"job {job_id!r} is not in the journal")
        old = JobState(row[0])
        if new not in TRANSITIONS[old]:
            raise JournalError(f"job {job_id!r}: illegal state change {old} -> {new}")
        sets = ["state=?", "updated_at=?"]
        values: list[Any] = [new.value, now]
        for key, value in fields.items():
            if key not in _COLUMNS or key in ("id", "state"):
                raise JournalError(f"unknown journal column {key!r}")
            if isinstance(value, tuple | list):
                value = json.dumps(list(value))
            sets.append(f"{key}=?")
            values.append(value)
        values.append(job_id)
        self._db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", values)
        if new is S.SUBMITTED and "task_id" in fields and old is S.SUBMITTING:
            r = self._db.execute("SELECT input_hash FROM jobs WHERE id=?", (job_id,)).fetchone()
            self._db.execute(
                "INSERT OR IGNORE INTO task_history(task_id, job_id, input_hash, submitted_at) "
                "VALUES (?,?,?,?)",
                (fields["task_id"], job_id, r[0], now),
            )

    def record_completion(self, clock_key: str, seconds: float, now: float) -> None:
        self._db.execute(
            "INSERT INTO completions(clock_key, seconds, at) VALUES (?,?,?)",
            (clock_key, seconds, now),
        )

    def recent_completions(self, clock_key: str, limit: int = 500) -> list[float]:
        rows = self._db.execute(
            "SELECT seconds FROM completions WHERE clock_key=? ORDER BY at DESC LIMIT ?",
            (clock_key, limit),
        ).fetchall()
        return [float(r[0]) for r in rows]

    def learned_completions(self, keep: int = 500) -> dict[str, list[float]]:
        """The latest completion times per clock key (oldest first); older ones are pruned."""
        out: dict[str, list[float]] = {}
        keys = [r[0] for r in self._db.execute("SELECT DISTINCT clock_key FROM completions")]
        with self.transaction() as db:
            for key in keys:
                rows = db.execute(
                    "SELECT seconds, at FROM completions WHERE clock_key=? "
                    "ORDER BY at DESC, rowid DESC LIMIT ?",
                    (key, keep),
                ).fetchall()
                out[key] = [float(r[0]) for r in reversed(rows)]
                if len(rows) == keep:
                    db.execute(
                        "DELETE FROM completions WHERE clock_key=? AND rowid NOT IN "
                        "(SELECT rowid FROM completions WHERE clock_key=? "
                        "ORDER BY at DESC, rowid DESC LIMIT ?)",
                        (key, key, keep),
                    )
        return out

    def execute_batch(self, ops: Sequence[Callable[[Journal], Any]]) -> list[Any]:
        """Run several write operations in one transaction (one commit, one fsync)."""
        results: list[Any] = []
        with self.transaction():
            for op in ops:
                # A savepoint per op: one failing write must not undo another's task id.
                self._db.execute("SAVEPOINT op")
                try:
                    results.append(op(self))
                except Exception as exc:
                    self._db.execute("ROLLBACK TO op")
                    results.append(exc)
                self._db.execute("RELEASE op")
        return results


class AsyncJournal:
    """The journal seen from the event loop: one worker thread, group-committed writes."""

    def __init__(self, journal: Journal) -> None:
        self.sync = journal
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._pending: list[tuple[Callable[[Journal], Any], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    async def read(self, fn: Callable[[Journal], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.sync)

    async def write(self, op: Callable[[Journal], T]) -> T:
        """Apply ``op`` and commit; concurrent writers share one transaction."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, fut))
        async with self._lock:
            if not fut.done() and self._pending:
                batch, self._pending = self._pending, []
                inner = loop.run_in_executor(
                    self._executor, self.sync.execute_batch, [o for o, _ in batch]
                )
                try:
                    # Shielded: a cancelled leader must not strand the writers it carries.
                    results = await asyncio.shield(inner)
                except asyncio.CancelledError:
                    self._resolve(batch, await _outcome(inner))
                    raise
                except Exception as exc:
                    self._resolve(batch, exc)
                else:
                    self._resolve(batch, results)
        return await fut

    @staticmethod
    def _resolve(
        batch: list[tuple[Callable[[Journal], Any], asyncio.Future[Any]]],
        outcome: list[Any] | BaseException,
    ) -> None:
        for i, (_, f) in enumerate(batch):
            if f.done():
                continue
            res = outcome if isinstance(outcome, BaseException) else outcome[i]
            if isinstance(res, BaseException):
                f.set_exception(res)
            else:
                f.set_result(res)

    async def transition(self, job_id: str, new: JobState, now: float, **fields: Any) -> None:
        await self.write(lambda j: j.transition(job_id, new, now, **fields))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.sync.close)
        self._executor.shutdown(wait=True)


async def _outcome(fut: asyncio.Future[list[Any]]) -> list[Any] | BaseException:
    try:
        return await fut
    except BaseException as exc:  # handed to every waiting writer
        return exc
