"""A campaign moved between SQLite and PostgreSQL (journal/pg/transfer.py), against a real
cluster (tests/pg.py): nothing lost either way, the SQLite file never written, refusals
before anything is written."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apixo_batch.errors import JournalError, JournalUnreadable
from apixo_batch.journal import JobState, Journal, NewJob
from apixo_batch.journal.pg.transfer import export_campaign, holds_campaign, import_campaign

S = JobState


def _journal(path: Path) -> None:
    """A SQLite journal mid-flight: one job done, one running, one cut off in submit,
    one queued; a retried task in history; learned values and a kept run."""
    j = Journal(path, lock=False)
    jobs = [
        NewJob(f"j{i}", i, "kling-2-6", "auto", "{}", f"h{i}", f"j{i}.mp4", 0.5) for i in range(4)
    ]
    j.sync(jobs, 1.0)
    for job_id, task in (("j0", "t0"), ("j1", "t1")):
        j.transition(job_id, S.SUBMITTING, 2.0, attempts=1)
        j.transition(job_id, S.SUBMITTED, 3.0, task_id=task, request_type="async")
    j._db.execute("INSERT INTO task_history VALUES ('t-old', 'j0', 'h0', 1.5)")
    j.transition("j0", S.SUCCEEDED, 4.0, result_urls=["https://r/0"], expires_at=99.0)
    j.transition("j0", S.DONE, 5.0, files=["j0.mp4"], bytes=12, sha256=["ab"])
    j.transition("j2", S.SUBMITTING, 6.0, attempts=1)
    j.set_meta("campaign", "camp")
    j.set_meta("learned_rpm:acct", "123.0")
    j.set_meta("last_run", '{"ended_at": 7.0}')
    j._db.execute("INSERT INTO completions VALUES ('k', 42.0, 4.0)")
    j.close()


def _digest(path: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.parent.iterdir()
        if p.name.startswith(path.name) and not p.name.endswith("-shm")
    }


def _dump(path: Path) -> dict[str, Any]:
    j = Journal(path, lock=False)
    try:
        return {
            "jobs": sorted(j._db.execute("SELECT * FROM jobs").fetchall()),
            "history": sorted(j._db.execute("SELECT * FROM task_history").fetchall()),
            "completions": sorted(j._db.execute("SELECT * FROM completions").fetchall()),
            "meta": sorted(
                r for r in j._db.execute("SELECT key, value FROM meta") if r[0] != "schema"
            ),
        }
    finally:
        j.close()


async def test_import_then_export_gives_back_the_same_journal(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "old.sqlite"
    _journal(source)
    before = _digest(source)
    assert not await holds_campaign(pg_url)
    done = await import_campaign(source, pg_url)
    assert (done.campaign, done.jobs, done.tasks) == ("camp", 4, 3)
    assert _digest(source) == before  # only read
    assert await holds_campaign(pg_url)
    back = tmp_path / "back.sqlite"
    assert await export_campaign(pg_url, back)
    assert _dump(back) == _dump(source)
    with psycopg.connect(pg_url) as conn:
        states = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
    assert states == {"j0": "done", "j1": "submitted", "j2": "submitting", "j3": "queued"}


async def test_a_database_that_holds_a_campaign_is_refused(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "old.sqlite"
    _journal(source)
    await import_campaign(source, pg_url)
    with pytest.raises(JournalError, match="already holds campaign 'camp'"):
        await import_campaign(source, pg_url)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None and row[0] == 4  # nothing added


async def test_a_journal_a_run_holds_is_refused(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "old.sqlite"
    _journal(source)
    fd = os.open(tmp_path / "old.sqlite.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(JournalError, match="another apixo-batch run is using"):
            await import_campaign(source, pg_url)
    finally:
        os.close(fd)
    assert not await holds_campaign(pg_url)


async def test_not_a_journal_is_refused_and_writes_nothing(tmp_path: Path, pg_url: str) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"no database here " * 200)
    with pytest.raises(JournalUnreadable):
        await import_campaign(junk, pg_url)
    with psycopg.connect(pg_url) as conn:
        made = conn.execute("SELECT to_regclass('campaigns')").fetchone()
    assert made is not None and made[0] is None


async def test_an_empty_database_exports_nothing(tmp_path: Path, pg_url: str) -> None:
    assert not await export_campaign(pg_url, tmp_path / "copy.sqlite")
    assert not (tmp_path / "copy.sqlite").exists()
    with psycopg.connect(pg_url) as conn:
        made = conn.execute("SELECT to_regclass('apixo_schema')").fetchone()
    assert made is not None and made[0] is None  # a read creates no table
