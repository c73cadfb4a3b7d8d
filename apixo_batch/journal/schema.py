"""The journal's schema versions and the steps between them, keyed by ``PRAGMA user_version``.

``MIGRATIONS[n]`` brings a journal of version ``n`` to ``n + 1``. Opening a journal
applies every step past its version, in order, in one transaction: a journal is at
one version or the next, never between. A journal written by a newer version is
refused before anything is written to it: this version cannot know what it holds.

Version 0 is a new file, or a journal of a version that kept no ``user_version``:
those hold the tables of version 1, except that the first of them made the task
index UNIQUE (one task id answered twice would have lost a paid task).

To change the schema, append a step. Step 1 builds the jobs table from
:data:`~.rows.COLUMNS`: a column added by a later step (``ALTER TABLE jobs ADD
COLUMN``) must be left out of step 1, or a new journal would get it twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..errors import JournalUnreadable
from .rows import added_columns, jobs_table

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        jobs_table(),
        "CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state, idx)",
        "CREATE INDEX IF NOT EXISTS jobs_order_idx ON jobs (in_file, idx, id)",
        # Not UNIQUE on purpose: should the API ever hand out a task id twice, both paid
        # tasks must still be journaled (a constraint error would lose the second one).
        "DROP INDEX IF EXISTS jobs_task_idx",
        "CREATE INDEX jobs_task_idx ON jobs (task_id) WHERE task_id IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS task_history (task_id TEXT PRIMARY KEY, "
        "job_id TEXT NOT NULL, input_hash TEXT NOT NULL, submitted_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS completions (clock_key TEXT NOT NULL, "
        "seconds REAL NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS completions_key_idx ON completions (clock_key, at)",
    ),
    # 2: takes (``run --reroll``): the take a job is on, and the files of earlier takes.
    added_columns(2),
    # 3: key pools: the fingerprint of the key that created each task (only it reads it).
    added_columns(3),
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(
    db: sqlite3.Connection, path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS
) -> None:
    """Bring the journal at ``path`` (``db``, in autocommit mode) to the newest version.

    Raises :class:`JournalUnreadable` naming both versions for a journal of a newer one."""
    newest = len(migrations)
    if _version(db, path, newest) == newest:
        return  # nothing to write: a reader beside a running run takes no lock
    db.execute("BEGIN IMMEDIATE")
    try:
        # Under the write lock: another process may have brought it up meanwhile.
        for step in migrations[_version(db, path, newest) :]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version={newest}")
        # For people who read the meta table (what versions before user_version wrote).
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (str(newest),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _version(db: sqlite3.Connection, path: Path, newest: int) -> int:
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > newest:
        raise JournalUnreadable(
            f"the journal {path} was written by a newer apixo-batch (schema version {found}; "
            f"this one knows up to {newest}): upgrade apixo-batch to go on with it"
        )
    return found
