"""The journal's schema versions: earlier journals migrate on open, newer ones are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from apixo_batch.errors import JournalError
from apixo_batch.journal import JobState, Journal
from apixo_batch.journal.schema import MIGRATIONS, SCHEMA_VERSION, migrate

S = JobState
NOW = 1_767_965_610.0

# The tables as the versions before user_version wrote them, by hand: the first one made
# the task index UNIQUE, later ones did not (and added jobs_order_idx).
_OLD_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, idx INTEGER NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
    input_json TEXT NOT NULL, input_hash TEXT NOT NULL, filename TEXT NOT NULL,
    cost_usd REAL, in_file INTEGER NOT NULL DEFAULT 1, state TEXT NOT NULL, task_id TEXT,
    request_type TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    possibly_duplicated INTEGER NOT NULL DEFAULT 0, changed_input_hash TEXT,
    submitted_at REAL, completed_at REAL, result_urls TEXT, expires_at REAL, files TEXT,
    bytes INTEGER, sha256 TEXT, fail_code TEXT, fail_msg TEXT, cost_time_ms INTEGER,
    arrived_via TEXT, updated_at REAL NOT NULL
);
CREATE INDEX jobs_state_idx ON jobs (state, idx);
CREATE {unique} INDEX jobs_task_idx ON jobs (task_id) WHERE task_id IS NOT NULL;
CREATE TABLE task_history (
    task_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, input_hash TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
CREATE TABLE completions (clock_key TEXT NOT NULL, seconds REAL NOT NULL, at REAL NOT NULL);
CREATE INDEX completions_key_idx ON completions (clock_key, at);
INSERT INTO meta VALUES ('schema', '1'), ('callback_token', 'tok');
INSERT INTO jobs (id, idx, model, provider, input_json, input_hash, filename, cost_usd,
    state, task_id, submitted_at, result_urls, updated_at)
VALUES ('job-0', 0, 'veo3-fast', 'google', '{{"prompt": "a cat"}}', 'h0', 'job-0.mp4', 0.5,
        'succeeded', 't-0', 1.0, '["https://cdn/a.mp4"]', 2.0),
       ('job-1', 1, 'veo3-fast', 'google', '{{"prompt": "a dog"}}', 'h1', 'job-1.mp4', 0.5,
        'queued', NULL, NULL, NULL, 2.0);
INSERT INTO task_history VALUES ('t-0', 'job-0', 'h0', 1.0);
INSERT INTO completions VALUES ('veo3-fast:8s', 61.5, 3.0);
"""


def _old_journal(path: Path, *, unique: bool) -> None:
    db = sqlite3.connect(path)
    try:
        db.executescript(_OLD_TABLES.format(unique="UNIQUE" if unique else ""))
        db.commit()
    finally:
        db.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("unique", [True, False], ids=["first layout", "later layout"])
def test_a_journal_from_before_schema_versions_migrates_and_keeps_its_rows(
    tmp_path: Path, unique: bool
) -> None:
    """A journal with no user_version opens at the newest version with every row, meta
    value, paid task and completion time it held; its task index is no longer UNIQUE
    (a task id answered twice is journaled for both jobs)."""
    path = tmp_path / "state.db"
    _old_journal(path, unique=unique)
    j = Journal(path)
    try:
        row = j.get("job-0")
        assert row is not None
        assert (row.state, row.task_id, row.result_urls) == (
            S.SUCCEEDED,
            "t-0",
            ("https://cdn/a.mp4",),
        )
        assert [r.id for r in j.iter_all()] == ["job-0", "job-1"]
        assert j.get_meta("callback_token") == "tok"
        assert j.totals()["spent_known_usd"] == 0.5
        assert j.recent_completions("veo3-fast:8s") == [61.5]
        assert j.get_meta("schema") == str(SCHEMA_VERSION)
        j.transition("job-1", S.SUBMITTING, NOW)
        j.transition("job-1", S.SUBMITTED, NOW, task_id="t-0")
        assert j.get("job-1") is not None
        indexes = {r[0] for r in j._db.execute("SELECT name FROM sqlite_master")}
        assert "jobs_order_idx" in indexes
    finally:
        j.close()
    assert _user_version(path) == SCHEMA_VERSION


def test_a_new_journal_is_at_the_newest_version(tmp_path: Path) -> None:
    """A journal made now says its version; opening it again writes nothing."""
    path = tmp_path / "state.db"
    Journal(path).close()
    assert _user_version(path) == SCHEMA_VERSION
    statements: list[str] = []
    db = sqlite3.connect(path, isolation_level=None)
    db.set_trace_callback(statements.append)
    try:
        migrate(db, path)
    finally:
        db.close()
    assert statements == ["PRAGMA user_version"]


def test_a_journal_of_a_newer_version_is_refused_in_one_line(tmp_path: Path) -> None:
    """A journal a newer apixo-batch wrote is refused, naming the path and both versions,
    before anything is written to it; the lock is freed."""
    path = tmp_path / "state.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    for _ in range(2):  # the second open finds the lock free: the same refusal
        with pytest.raises(JournalError) as err:
            Journal(path)
        message = str(err.value)
        assert "\n" not in message
        assert str(path) in message
        assert f"schema version {SCHEMA_VERSION + 1}" in message
        assert f"knows up to {SCHEMA_VERSION}" in message
    assert _user_version(path) == SCHEMA_VERSION + 1


def test_migration_steps_apply_in_order_in_one_transaction(tmp_path: Path) -> None:
    """Every step past the journal's version runs, in order; the version is the last's."""
    path = tmp_path / "state.db"
    Journal(path).close()
    later = (
        *MIGRATIONS,
        ("ALTER TABLE jobs ADD COLUMN note TEXT",),
        ("UPDATE jobs SET note = 'n'", "CREATE TABLE later (x TEXT)"),
    )
    db = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        migrate(db, path, later)
        assert not db.in_transaction
        assert "note" in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
        schema = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        assert schema == (str(SCHEMA_VERSION + 2),)
    finally:
        db.close()
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 1
    assert statements.index("ALTER TABLE jobs ADD COLUMN note TEXT") < statements.index(
        "CREATE TABLE later (x TEXT)"
    )
    assert "CREATE TABLE IF NOT EXISTS meta" not in " ".join(statements)  # step 1 was done
    assert _user_version(path) == SCHEMA_VERSION + 2


def test_a_failing_step_leaves_the_journal_as_it_was(tmp_path: Path) -> None:
    """One transaction: a step that fails undoes the steps before it and the version."""
    path = tmp_path / "state.db"
    Journal(path).close()
    broken = (*MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",), ("NOT SQL",))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(db, path, broken)
        assert not db.in_transaction
        assert "note" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    finally:
        db.close()
    assert _user_version(path) == SCHEMA_VERSION
