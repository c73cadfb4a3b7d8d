"""The journal's tables in PostgreSQL, and the steps between their versions.

One database holds one journal, as one SQLite file does, and the tables are
already keyed for the several runners of issue 33 (``docs/postgresql.md``): the
jobs carry their campaign and an ``owner`` (a ``runners`` row), task history
carries the runner and the account (``key_id``) that created the task, and the
account's shared limits have their rows (``accounts``, ``slot_grants``,
``account_rate``). One runner uses the campaign, job, history, meta and
completion tables; the others are there so that the next steps need no
migration of the jobs.

Times the run stamps are epoch seconds of the injected clock (``double
precision``, as SQLite's REAL), so unit tests keep their fake clock; the times
runners must agree on (leases) are the database's (``timestamptz``).

``MIGRATIONS[n]`` brings version ``n`` to ``n + 1``, all in one transaction under
an advisory lock (two runners starting at once migrate once). A database of a
newer version is refused before anything is written to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from ...errors import JournalUnreadable
from ..rows import COLUMNS

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "has_table", "migrate", "schema_version"]

# SQLite's declarations, as PostgreSQL spells them: REAL is a double there, and the
# two flags are booleans. Lists stay JSON text, read by the same JobRow converters.
_TYPES = {
    "REAL": "double precision",
    "INTEGER NOT NULL DEFAULT 1": "boolean NOT NULL DEFAULT true",
    "INTEGER NOT NULL DEFAULT 0": "integer NOT NULL DEFAULT 0",
    "REAL NOT NULL": "double precision NOT NULL",
}
_FLAGS = frozenset({"in_file", "possibly_duplicated"})


def _column(name: str, decl: str) -> str:
    if name == "id":
        # Byte order, as SQLite compares: the same file order on any database's locale.
        return 'id text COLLATE "C" NOT NULL'
    if name == "bytes":  # a result past 2 GiB
        return "bytes bigint"
    if name == "take":  # a number, whatever the flags' declaration it shares
        return "take integer NOT NULL DEFAULT 1"
    if name in _FLAGS:
        default = "true" if name == "in_file" else "false"
        return f"{name} boolean NOT NULL DEFAULT {default}"
    return f"{name} {_TYPES.get(decl, decl.replace('REAL', 'double precision'))}"


def _jobs_table() -> str:
    # Step 1's columns: later steps add theirs (:func:`_added_columns`).
    columns = ", ".join(_column(c.name, c.decl) for c in COLUMNS if c.since == 1)
    return (
        'CREATE TABLE jobs (campaign text COLLATE "C" NOT NULL REFERENCES campaigns, '
        f"{columns}, "
        # The kind of a job (planning.kind.Kind) without a JSON parse per row and query;
        # a JSON null is no value, as SQLite's json_extract reads it.
        "kind_duration jsonb GENERATED ALWAYS AS "
        "(NULLIF(input_json::jsonb -> 'duration', 'null'::jsonb)) STORED, "
        "kind_resolution jsonb GENERATED ALWAYS AS "
        "(NULLIF(input_json::jsonb -> 'resolution', 'null'::jsonb)) STORED, "
        # runners.id of the runner that holds the row; NULL: nobody claimed it
        "owner bigint, key_id text, "
        "CHECK (state IN ('queued','submitting','submitted','succeeded','done','failed',"
        "'expired')), PRIMARY KEY (campaign, id))"
    )


def _added_columns(step: int) -> tuple[str, ...]:
    """The ``ALTER TABLE`` statements of the job columns SQLite's schema step ``step``
    adds (:func:`~..rows.added_columns`), as PostgreSQL spells them."""
    return tuple(
        f"ALTER TABLE jobs ADD COLUMN {_column(c.name, c.decl)}" for c in COLUMNS if c.since == step
    )


MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        'CREATE TABLE campaigns (id text COLLATE "C" PRIMARY KEY, '
        "output text, callback_token text, "
        "created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        'CREATE TABLE meta (campaign text COLLATE "C" NOT NULL, '
        "key text NOT NULL, value text NOT NULL, "
        "PRIMARY KEY (campaign, key))",
        _jobs_table(),
        "CREATE INDEX jobs_state_idx ON jobs (campaign, state, idx)",
        "CREATE INDEX jobs_order_idx ON jobs (campaign, in_file, idx, id)",
        # Not UNIQUE on purpose, as in SQLite: a task id answered twice keeps both jobs.
        "CREATE INDEX jobs_task_idx ON jobs (task_id) WHERE task_id IS NOT NULL",
        "CREATE INDEX jobs_owned ON jobs (owner) "
        "WHERE state IN ('queued','submitting','submitted','succeeded')",
        "CREATE TABLE task_history (task_id text PRIMARY KEY, campaign text NOT NULL, "
        "job_id text NOT NULL, input_hash text NOT NULL, submitted_at double precision "
        "NOT NULL, runner bigint, key_id text)",
        "CREATE INDEX task_history_job_idx ON task_history (campaign, job_id)",
        # Shared by every campaign of the database on purpose: each starts with the
        # clocks the others learned.
        "CREATE TABLE completions (n bigserial PRIMARY KEY, clock_key text NOT NULL, "
        "seconds double precision NOT NULL, at double precision NOT NULL)",
        "CREATE INDEX completions_key_idx ON completions (clock_key, at)",
        # The next steps (several runners, shared limits): a runner's lease, the
        # account's slot pool and request budget. Unused by one runner.
        "CREATE TABLE runners (id bigserial PRIMARY KEY, campaign text NOT NULL "
        "REFERENCES campaigns, host text NOT NULL, pid integer NOT NULL, "
        "version text NOT NULL, accounts text[] NOT NULL DEFAULT '{}', "
        "started_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        "lease_until timestamptz NOT NULL, adopted_by bigint, "
        "stopped boolean NOT NULL DEFAULT false)",
        "CREATE TABLE accounts (id text PRIMARY KEY, slots_limit integer NOT NULL, "
        "granted integer NOT NULL DEFAULT 0 CHECK (granted >= 0 AND granted <= slots_limit), "
        "last_n integer NOT NULL DEFAULT 0, learned_rpm double precision)",
        "CREATE TABLE slot_grants (runner bigint REFERENCES runners, "
        "account text REFERENCES accounts, held integer NOT NULL DEFAULT 0, "
        "PRIMARY KEY (runner, account))",
        "CREATE UNLOGGED TABLE account_rate (account text PRIMARY KEY, "
        "tat timestamptz NOT NULL, interval_s float8 NOT NULL, top_interval_s float8 NOT NULL, "
        "tau_s float8 NOT NULL, granted bigint NOT NULL DEFAULT 0, "
        "episode_end bigint NOT NULL DEFAULT 0, ceiling_interval_s float8, "
        "ceiling_at timestamptz, next_probe timestamptz, "
        "last_n integer NOT NULL DEFAULT 0, last_wait float8 NOT NULL DEFAULT 0)",
    ),
    # 2: takes (``run --reroll``): the take a job is on, and the files of earlier takes.
    _added_columns(2),
    # 3: key pools: the fingerprint of the key that created each task (only it reads it).
    _added_columns(3),
    # 4: several runners: where a runner's pid means its process (host, boot, pid
    # namespace), so a runner on the same node whose process is gone is adopted at once.
    ("ALTER TABLE runners ADD COLUMN node text",),
    # 5: outputs across runners (journal/pg/outputs.py): the file names reserved by
    # each job, so that a runner sees the names another one lands before it submits
    # or lands; and the multipart uploads each runner has open, so that a start-up
    # sweep aborts only a dead runner's.
    (
        'CREATE TABLE file_names (campaign text COLLATE "C" NOT NULL, '
        'name_cf text COLLATE "C" NOT NULL, job_id text COLLATE "C" NOT NULL, '
        "PRIMARY KEY (campaign, name_cf))",
        "CREATE TABLE uploads (upload_id text PRIMARY KEY, campaign text NOT NULL, "
        "s3_key text NOT NULL, runner bigint, "
        "started_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        # A job's own name, found without a scan when a runner checks a name it lands.
        "CREATE INDEX jobs_filename_idx ON jobs (campaign, lower(filename))",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
#: pg_advisory_xact_lock key of a migration (any fixed number: "apixo" in ASCII)
_MIGRATION_LOCK = 0x617069786F


async def migrate(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    where: str,
    migrations: Sequence[Sequence[str]] = MIGRATIONS,
) -> None:
    """Bring the database (``conn``, autocommit) to the newest version; a newer one is
    :class:`JournalUnreadable`, naming both versions."""
    newest = len(migrations)
    if await schema_version(conn, where, newest) == newest:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS apixo_schema (version integer NOT NULL)")
        found = await schema_version(conn, where, newest)
        for step in migrations[found:]:
            for statement in step:
                await conn.execute(statement.encode())
        await conn.execute("DELETE FROM apixo_schema")
        await conn.execute("INSERT INTO apixo_schema (version) VALUES (%s)", (newest,))


async def has_table(conn: psycopg.AsyncConnection[tuple[object, ...]], name: str) -> bool:
    """Whether the database has table ``name`` yet (a run makes them; a read does not)."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    row = await cur.fetchone()
    return row is not None and bool(row[0])


async def schema_version(
    conn: psycopg.AsyncConnection[tuple[object, ...]], where: str, newest: int = SCHEMA_VERSION
) -> int:
    """The database's schema version (0: no journal yet); one newer than ``newest`` is
    :class:`JournalUnreadable`, naming both versions."""
    if not await has_table(conn, "apixo_schema"):
        return 0
    cur = await conn.execute("SELECT max(version) FROM apixo_schema")
    got = await cur.fetchone()
    found = 0 if got is None or got[0] is None else int(str(got[0]))
    if found > newest:
        raise JournalUnreadable(
            f"the journal {where} was written by a newer apixo-batch (schema version {found}; "
            f"this one knows up to {newest}): upgrade apixo-batch to go on with it"
        )
    return found
