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

The connection is used from one thread; the engine talks to it through
:class:`AsyncJournal`, whose own thread takes every operation queued since its
last pass and commits the consecutive writes among them as one transaction
(group commit), then hands all the results back to the event loop at once.

Durability. Every commit is durable by default (``synchronous=FULL``: the WAL
is fsynced before COMMIT returns). A write may say ``durable=False``; a
transaction made only of such writes commits with ``synchronous=NORMAL``,
which in WAL mode survives a kill -9 or a crash of the process (the commit is
in the WAL file, in the OS's page cache) and may lose only the last commits
on a power loss or an OS crash, never corrupt the database. Any durable write
in a transaction makes that commit FULL. The engine uses ``durable=False``
only where a lost commit costs nothing paid: the ``succeeded`` transition with
its completion sample (after a power loss the job is back to ``submitted`` and
its task is polled again) and ``done`` (back to ``succeeded``: the result is
downloaded again while its URL lives). ``submitting`` and the task id
(``submitted``) stay durable: losing them would forget, or pay twice for, a
submitted task.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import JournalError

__all__ = [
    "TRANSITIONS",
    "AsyncJournal",
    "JobRow",
    "JobState",
    "Journal",
    "SyncResult",
    "hold_name",
    "result_filename",
]

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

# The reverse of TRANSITIONS, as SQL: the states from which each state may be entered
# (one UPDATE ... WHERE state IN (...) checks and applies a transition at once).
_LEGAL_FROM_SQL: dict[JobState, str] = {
    new: ", ".join(f"'{old.value}'" for old in JobState if new in TRANSITIONS[old])
    for new in JobState
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


def result_filename(filename: str, n: int) -> str:
    """The file of a job's result number ``n`` (from 0): ``x.mp4``, ``x-2.mp4``, ``x-3.mp4``."""
    if n == 0:
        return filename
    stem, dot, suffix = filename.rpartition(".")
    return f"{stem}-{n + 1}.{suffix}" if dot and stem else f"{filename}-{n + 1}"


def hold_name(owners: dict[str, tuple[str, ...]], name: str, job_id: str) -> None:
    """Record in ``owners`` (see :meth:`Journal.file_owners`) that ``job_id`` holds ``name``."""
    key = name.casefold()
    have = owners.get(key, ())
    if job_id not in have:
        owners[key] = (*have, job_id)


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
        self._synchronous_full = True  # what the connection is set to now
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
            self._rollback()
            raise
        self._commit()

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

    def file_owners(self) -> dict[str, tuple[str, ...]]:
        """{casefolded file name: the jobs it belongs to} for every name a job holds.

        A job holds the files journaled as landed, under whatever template named
        them, and its output name while it may still write there: its paid task may
        still bring a result (submitted or succeeded), gone from the file or not, or
        it is in the job file and not finished (done and expired jobs write nothing
        more: after a template change, their new name is free). A name held by two
        jobs lists both.
        """
        may_land = (JobState.SUBMITTED.value, JobState.SUCCEEDED.value)
        finished = (JobState.DONE.value, JobState.EXPIRED.value)
        owners: dict[str, tuple[str, ...]] = {}
        for job_id, filename, files, in_file, state in self._db.execute(
            "SELECT id, filename, files, in_file, state FROM jobs"
        ):
            if state in may_land or (in_file and state not in finished):
                hold_name(owners, filename, job_id)
            for name in _json_list(files):
                hold_name(owners, name, job_id)
        return owners

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
        """Move one job to ``new``, setting ``fields``; refuse an illegal change.

        One UPDATE restricted to the states ``new`` may be entered from (plus, for the
        task id of a submit, its ``task_history`` row); the current state is read only
        to explain a refusal."""
        sets = ["state=?", "updated_at=?"]
        values: list[Any] = [new.value, now]
        bad_column: str | None = None
        for key, value in fields.items():
            if key not in _COLUMNS or key in ("id", "state"):
                bad_column = key
                break
            if isinstance(value, tuple | list):
                value = json.dumps(list(value))
            sets.append(f"{key}=?")
            values.append(value)
        if bad_column is not None:
            self._check_transition(job_id, new)  # the same error precedence as ever
            raise JournalError(f"unknown journal column {bad_column!r}")
        values.append(job_id)
        assignments = ", ".join(sets)
        if new is S.SUBMITTED and "task_id" in fields:
            # The first answer of a submit: the paid task also goes to task_history.
            cur = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id=? AND state='submitting'", values
            )
            if cur.rowcount:
                self._db.execute(
                    "INSERT OR IGNORE INTO task_history(task_id, job_id, input_hash, "
                    "submitted_at) SELECT ?, id, input_hash, ? FROM jobs WHERE id=?",
                    (fields["task_id"], now, job_id),
                )
                return
        cur = self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id=? AND state IN ({_LEGAL_FROM_SQL[new]})",
            values,
        )
        if cur.rowcount == 0:
            self._check_transition(job_id, new)
            raise JournalError(f"job {job_id!r}: the change to {new} did not apply")

    def _check_transition(self, job_id: str, new: JobState) -> None:
        """Raise the JournalError that refuses moving ``job_id`` to ``new``, if any."""
        row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JournalError(f"job {job_id!r} is not in the journal")
        old = JobState(row[0])
        if new not in TRANSITIONS[old]:
            raise JournalError(f"job {job_id!r}: illegal state change {old} -> {new}")

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

    def execute_batch(
        self, ops: Sequence[Callable[[Journal], Any]], *, durable: bool = True
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
            return self._execute_each(ops)
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return results

    def _execute_each(self, ops: Sequence[Callable[[Journal], Any]]) -> list[Any]:
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


_READ, _WRITE, _CLOSE = 0, 1, 2
# (kind, op, the caller's future, durable); the close sentinel carries neither op nor future.
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

    ``commit_delay`` (seconds, real time): a pass that starts with writes only waits
    that long before it takes what is queued, so the writes of the next few turns
    join its transaction. Each write then waits up to that much longer, for far
    fewer commits, fsyncs and wake-ups of both threads per write. Only a pass that
    found the queue empty waits; a pass holding a read (someone waiting to go on)
    or the close does not, and a read or the close handed over during the wait
    ends it. The wait is in real time, outside the injected clock: it is a
    batching window of the thread, not a wait of the engine's logic.

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
        self._hurry = threading.Event()  # a read or the close is queued: stop waiting
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
        self._turn_reads = False  # the current turn holds a read: its hand-over hurries
        self._thread = threading.Thread(target=self._serve, name="apixo-journal", daemon=True)
        self._thread.start()

    # -- the event loop's side ----------------------------------------------
    def read(self, fn: Callable[[Journal], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the journal thread, after every operation queued before it."""
        return self._submit(_READ, fn, True)

    def write(self, op: Callable[[Journal], T], *, durable: bool = True) -> asyncio.Future[T]:
        """Apply ``op`` and commit; writes queued together share one transaction.

        Queued at once (not at the first await); it runs and commits even if the caller
        is cancelled. ``durable=False``: see the module docstring."""
        return self._submit(_WRITE, op, durable)

    def transition(
        self, job_id: str, new: JobState, now: float, *, durable: bool = True, **fields: Any
    ) -> asyncio.Future[None]:
        """:meth:`Journal.transition` as a write (queued at once, like :meth:`write`)."""
        return self._submit(_WRITE, lambda j: j.transition(job_id, new, now, **fields), durable)

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
                    self._queue.put([(_CLOSE, None, None, False)])
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
            if kind == _READ:
                self._turn_reads = True
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
            if self._turn_reads:
                self._turn_reads = False
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
                # Cleared before the queue is looked at again: a read or the close handed
                # over from now on either is in the drain or ends the wait (it is set
                # after the put).
                self._hurry.clear()
                backlog = self._drain(batch)
                if self._commit_delay and not backlog and all(item[0] == _WRITE for item in batch):
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
            assert op is not None and fut is not None
            self.sync._use_synchronous(full=True)  # a read that writes stays durable
            try:
                out.append((fut, True, op(self.sync)))
            except Exception as exc:
                out.append((fut, False, exc))
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
