"""A campaign moved between a SQLite journal and a PostgreSQL one, whole.

:func:`import_campaign` (``apixo-batch journal import OLD.sqlite --state
postgresql://…``) copies a SQLite journal into an empty database: every job row
as it stands (task ids, states, attempts, flags, result URLs, file names), every
task id ever journaled (``task_history``), the learned completions and the kept
values (learned rates, the runs kept for the review page, the callback token, the
journal's identity, the output). A campaign copied mid-flight is resumed by the
next run on PostgreSQL as it would have been on SQLite: its ``submitted`` rows
are followed, never sent again. The SQLite file is read from a copy taken with
SQLite's backup (its write-ahead log included) and never written.

:func:`export_campaign` is the other way, into a new file: the read-only
commands (``status``, ``plan``, ``review``, ``verify``) read a database's
campaign through the same code as a file's, so that both say the same.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from ...errors import JournalError, JournalUnreadable
from ..rows import COLUMNS
from ..store import Journal
from .executor import database_failed
from .schema import has_table, migrate, schema_version
from .url import shown

__all__ = ["Imported", "export_campaign", "holds_campaign", "import_campaign"]

_JOBS = tuple(c.name for c in COLUMNS)
_FLAGS = frozenset({"in_file", "possibly_duplicated"})
# SQLite's own bookkeeping, not the campaign's (the campaign's name has its own row)
_NOT_COPIED = frozenset({"schema", "campaign"})


class Imported:
    """What :func:`import_campaign` moved."""

    __slots__ = ("campaign", "jobs", "kept", "tasks")

    def __init__(self, campaign: str, jobs: int, tasks: int, kept: int) -> None:
        self.campaign = campaign
        self.jobs = jobs
        self.tasks = tasks
        self.kept = kept


def _copy_of(source: Path, into: Path) -> Path:
    """A consistent copy of the journal at ``source`` (its WAL read, the file untouched)."""
    if not source.is_file():
        raise JournalError(f"no journal at {source}")
    copy = into / "journal.sqlite"
    # No write-ahead log beside it (the last run closed it): the file alone is the journal,
    # read as immutable so that SQLite creates no log or index file beside it. (No run
    # holds it: that was refused before.)
    wal = source.with_name(source.name + "-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?{mode}", uri=True)
        try:
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise JournalUnreadable(
            f"the journal {source} cannot be read: {exc} (not an apixo-batch journal, or "
            "damaged); nothing was imported"
        ) from None
    return copy


def _held(source: Path) -> bool:
    """True if a run holds the journal at ``source`` (its lock file is locked)."""
    import fcntl
    import os

    lock = source.with_name(source.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def import_campaign(source: Path, url: str) -> Imported:
    """Copy the campaign of the SQLite journal at ``source`` into the empty database at
    ``url`` in one transaction. Refused (:class:`JournalError`, one line, nothing
    written) if a run holds the file, the file names no campaign, or the database
    already holds a campaign."""
    where = shown(url)
    if _held(source):
        raise JournalError(
            f"another apixo-batch run is using the journal {source}: stop it (a killed run "
            "frees it) and import again; nothing was imported"
        )
    with tempfile.TemporaryDirectory(prefix="apixo-import-") as tmp:
        journal = Journal(_copy_of(source, Path(tmp)), lock=False)  # the copy, migrated
        try:
            campaign = journal.get_meta("campaign")
            if not campaign:
                raise JournalError(
                    f"the journal {source} names no campaign (no run of this version has "
                    "used it): run it once, then import it; nothing was imported"
                )
            db = journal._db
            jobs = db.execute(f"SELECT {', '.join(_JOBS)} FROM jobs").fetchall()
            history = db.execute(
                "SELECT task_id, job_id, input_hash, submitted_at FROM task_history"
            ).fetchall()
            completions = db.execute("SELECT clock_key, seconds, at FROM completions").fetchall()
            meta = [
                (k, v) for k, v in db.execute("SELECT key, value FROM meta") if k not in _NOT_COPIED
            ]
        finally:
            journal.close()
    flags = [i for i, name in enumerate(_JOBS) if name in _FLAGS]
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise database_failed(url, exc, "cannot be reached") from None
    try:
        await migrate(conn, where)
        async with conn.transaction():
            # Two imports at once: the second waits here, then finds the first's campaign.
            await conn.execute("LOCK TABLE campaigns IN EXCLUSIVE MODE")
            cur = await conn.execute("SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1")
            held = await cur.fetchone()
            if held is not None:
                raise JournalError(
                    f"the database {where} already holds campaign '{held[0]}': import into "
                    f"an empty database (campaign '{campaign}' was not imported)"
                )
            await conn.execute("INSERT INTO campaigns (id) VALUES (%s)", (campaign,))
            async with conn.cursor() as c:
                async with c.copy(f"COPY jobs (campaign, {', '.join(_JOBS)}) FROM STDIN") as copy:
                    for row in jobs:
                        values: list[Any] = list(row)
                        for i in flags:
                            values[i] = bool(values[i])
                        await copy.write_row((campaign, *values))
                async with c.copy(
                    "COPY task_history (task_id, campaign, job_id, input_hash, submitted_at) "
                    "FROM STDIN"
                ) as copy:
                    for task_id, job_id, input_hash, at in history:
                        await copy.write_row((task_id, campaign, job_id, input_hash, at))
                async with c.copy("COPY completions (clock_key, seconds, at) FROM STDIN") as copy:
                    for completion in completions:
                        await copy.write_row(completion)
                await c.executemany(
                    "INSERT INTO meta (campaign, key, value) VALUES (%s, %s, %s)",
                    [(campaign, k, v) for k, v in meta],
                )
    except psycopg.Error as exc:
        raise database_failed(url, exc, "refused the import") from None
    finally:
        await conn.close()
    return Imported(campaign, len(jobs), len(history), len(meta))


async def export_campaign(url: str, dest: Path) -> bool:
    """Write the database's campaign into a new SQLite journal at ``dest``; False (and
    nothing written) when the database holds no campaign yet. Nothing is written to the
    database: one that has no tables yet is read as empty."""
    where = shown(url)
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise database_failed(url, exc, "cannot be reached") from None
    try:
        if await schema_version(conn, where) == 0:
            return False
        # One snapshot of every table, as a run may be writing meanwhile.
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1")
            first = await cur.fetchone()
            if first is None:
                return False
            campaign = str(first[0])
            # A database of an older version lacks the newer columns until a run brings it
            # up to date (a read does not): the copy gets their defaults.
            cur = await conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'jobs'"
            )
            named = {str(r[0]) for r in await cur.fetchall()}
            columns = [c for c in _JOBS if c in named]
            cur = await conn.execute(
                f"SELECT {', '.join(columns)} FROM jobs WHERE campaign=%s", (campaign,)
            )
            jobs = await cur.fetchall()
            cur = await conn.execute(
                "SELECT task_id, job_id, input_hash, submitted_at FROM task_history "
                "WHERE campaign=%s",
                (campaign,),
            )
            history = await cur.fetchall()
            cur = await conn.execute("SELECT clock_key, seconds, at FROM completions")
            completions = await cur.fetchall()
            cur = await conn.execute("SELECT key, value FROM meta WHERE campaign=%s", (campaign,))
            meta = await cur.fetchall()
    except psycopg.Error as exc:
        raise database_failed(url, exc, "cannot be read") from None
    finally:
        await conn.close()
    flags = [i for i, name in enumerate(columns) if name in _FLAGS]
    journal = Journal(dest, lock=False)
    try:
        with journal.transaction(durable=False) as db:
            marks = ", ".join("?" for _ in columns)
            rows = []
            for row in jobs:
                values = list(row)
                for i in flags:
                    values[i] = int(values[i])
                rows.append(values)
            db.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({marks})", rows)
            db.executemany(
                "INSERT INTO task_history (task_id, job_id, input_hash, submitted_at) "
                "VALUES (?, ?, ?, ?)",
                history,
            )
            db.executemany(
                "INSERT INTO completions (clock_key, seconds, at) VALUES (?, ?, ?)", completions
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [*meta, ("campaign", campaign)],
            )
    finally:
        journal.close()
    return True


async def holds_campaign(url: str) -> bool:
    """True unless the database is known to hold no campaign yet (no tables, or none in
    them): a first run reads the balance before it creates anything. Nothing is written;
    a database that cannot be reached is told by the run's own opening of it (True)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error:
        return True
    try:
        if not await has_table(conn, "campaigns"):
            return False
        cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM campaigns)")
        found = await cur.fetchone()
        return found is None or bool(found[0])
    except psycopg.Error:
        return True
    finally:
        await conn.close()
