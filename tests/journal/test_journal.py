"""Journal (SQLite WAL, lock, sync, transitions, reads) and AsyncJournal (group commit)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apixo_batch.errors import JournalError
from apixo_batch.journal import (
    TRANSITIONS,
    AsyncJournal,
    Change,
    JobRow,
    JobState,
    Journal,
    NewJob,
    SyncResult,
)
from apixo_batch.journal.rows import CHANGES, COLUMNS, SELECT
from apixo_batch.journal.schema import SCHEMA_VERSION
from apixo_batch.journal.states import LEGAL_FROM_SQL
from apixo_batch.planning.kind import Kind

S = JobState
NOW = 1_767_965_610.0
T = TypeVar("T")


# -- helpers ------------------------------------------------------------------


def _job(
    n: int,
    *,
    idx: int | None = None,
    prompt: str | None = None,
    cost: float | None = 0.5,
    model: str = "veo3-fast",
) -> NewJob:
    inp = {"prompt": prompt if prompt is not None else f"a cat, take {n}", "duration": 8}
    text = json.dumps(inp, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n if idx is None else idx,
        model=model,
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n}.mp4",
        cost_usd=cost,
    )


@pytest.fixture
def open_journal(tmp_path: Path) -> Iterator[Callable[..., Journal]]:
    """Open journals under tmp_path; every one still open is closed after the test."""
    opened: list[Journal] = []

    def open_(name: str = "state.db", **kwargs: Any) -> Journal:
        j = Journal(tmp_path / name, **kwargs)
        opened.append(j)
        return j

    yield open_
    for j in opened:
        j.close()


@pytest.fixture
def journal(open_journal: Callable[..., Journal]) -> Journal:
    return open_journal()


def _submit(j: Journal, job_id: str, task_id: str, now: float = NOW) -> None:
    j.transition(job_id, S.SUBMITTING, now)
    j.transition(job_id, S.SUBMITTED, now, task_id=task_id, submitted_at=now)


def _raw(j: Journal, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return list(j._db.execute(sql, args).fetchall())


# -- schema and lock ----------------------------------------------------------


def test_schema_is_created(journal: Journal) -> None:
    """A new journal has its tables, WAL mode and the schema version in meta."""
    tables = {r[0] for r in _raw(journal, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "jobs", "task_history", "completions"} <= tables
    assert _raw(journal, "PRAGMA journal_mode")[0][0] == "wal"
    assert journal.get_meta("schema") == str(SCHEMA_VERSION)
    assert journal.path.exists()


def test_opening_twice_keeps_the_data_and_schema(open_journal: Callable[..., Journal]) -> None:
    """Reopening an existing journal neither fails nor resets anything."""
    j = open_journal()
    j.sync([_job(1)], NOW)
    j.set_meta("campaign", "abc")
    j.close()
    j2 = open_journal()
    assert j2.get_meta("schema") == str(SCHEMA_VERSION)
    assert j2.get_meta("campaign") == "abc"
    assert j2.get("job-1") is not None


def test_meta_get_and_set(journal: Journal) -> None:
    """set_meta stores and replaces; get_meta returns None for unknown keys."""
    assert journal.get_meta("nope") is None
    journal.set_meta("k", "v1")
    journal.set_meta("k", "v2")
    assert journal.get_meta("k") == "v2"


def test_second_journal_on_same_path_is_refused(open_journal: Callable[..., Journal]) -> None:
    """While one run holds the journal, a second open raises a clear JournalError."""
    first = open_journal()
    with pytest.raises(JournalError, match="another apixo-batch run is using the journal"):
        open_journal()
    first.close()
    second = open_journal()
    assert second.get_meta("schema") == str(SCHEMA_VERSION)


def test_lock_file_names_the_holder(open_journal: Callable[..., Journal], tmp_path: Path) -> None:
    """The lock file next to the journal holds the pid of the run using it."""
    open_journal()
    lock = tmp_path / "state.db.lock"
    assert lock.read_text().strip() == str(os.getpid())


def test_journal_without_lock_does_not_block(open_journal: Callable[..., Journal]) -> None:
    """lock=False (read-only tools) opens beside a locked journal."""
    open_journal()
    reader = open_journal(lock=False)
    assert reader.get_meta("schema") == str(SCHEMA_VERSION)


def test_close_is_safe_to_repeat(tmp_path: Path) -> None:
    """Closing twice does not raise."""
    j = Journal(tmp_path / "state.db")
    j.close()
    j.close()


# -- sync ---------------------------------------------------------------------


def test_sync_adds_new_jobs_as_queued(journal: Journal) -> None:
    """Jobs new to the journal are inserted queued, in file order, with their fields."""
    result = journal.sync([_job(i) for i in range(3)], NOW)
    assert (result.added, result.unchanged, result.updated) == (3, 0, 0)
    assert result.changed_after_submit == []
    assert result.dropped_from_file == 0
    row = journal.get("job-1")
    assert row is not None
    assert (row.state, row.idx, row.model, row.provider) == (S.QUEUED, 1, "veo3-fast", "google")
    assert (row.filename, row.cost_usd, row.in_file, row.task_id) == ("job-1.mp4", 0.5, True, None)
    assert row.input == {"prompt": "a cat, take 1", "duration": 8}
    assert (row.attempts, row.possibly_duplicated, row.result_urls) == (0, False, ())
    assert journal.get("missing") is None


def test_file_owners_are_what_jobs_landed_or_may_still_land(journal: Journal) -> None:
    """A job holds the files it landed and, while in the file or its task may still bring
    a result, its output name; a job dropped from the file before it was submitted, or
    whose task failed, holds nothing; case is ignored."""
    journal.sync([_job(i) for i in range(5)], NOW)
    _submit(journal, "job-1", "t-1")
    _submit(journal, "job-2", "t-2")
    journal.transition("job-2", S.SUCCEEDED, NOW, result_urls=["u1", "u2"])
    journal.transition("job-2", S.DONE, NOW, files=["Job-2.mp4", "job-2-2.mp4"])
    _submit(journal, "job-4", "t-4")
    journal.transition("job-4", S.FAILED, NOW, fail_code="X", fail_msg="no")
    # job-1 (paid, still running), job-2 (landed), job-3 (never submitted) and job-4
    # (failed) leave the file.
    journal.sync([_job(0), _job(5)], NOW)
    journal._db.execute("UPDATE jobs SET filename='job-2-2.mp4' WHERE id='job-5'")
    assert journal.file_owners() == {
        "job-0.mp4": ("job-0",),
        "job-1.mp4": ("job-1",),
        "job-2.mp4": ("job-2",),
        "job-2-2.mp4": ("job-2", "job-5"),
    }


def test_a_finished_job_holds_what_it_landed_not_the_name_a_new_template_gives_it(
    journal: Journal,
) -> None:
    """Done and expired jobs write nothing more: after the output template changed they
    hold the files they landed, not their new names; a failed job in the file may be
    retried (--retry-failed) and keeps its name."""
    journal.sync([_job(i) for i in range(3)], NOW)
    for i in range(3):
        _submit(journal, f"job-{i}", f"t-{i}")
    for i in range(2):
        journal.transition(f"job-{i}", S.SUCCEEDED, NOW, result_urls=["u1"])
    journal.transition("job-0", S.DONE, NOW, files=["job-0.mp4"])
    journal.transition("job-1", S.EXPIRED, NOW, fail_code="RESULT_EXPIRED", fail_msg="gone")
    journal.transition("job-2", S.FAILED, NOW, fail_code="X", fail_msg="no")
    journal._db.execute("UPDATE jobs SET filename='clip-' || idx || '.mp4'")
    assert journal.file_owners() == {"job-0.mp4": ("job-0",), "clip-2.mp4": ("job-2",)}


def test_a_succeeded_job_holds_the_results_it_landed_so_far(journal: Journal) -> None:
    """A download that failed after a first result landed leaves the job succeeded with
    that file journaled: it holds it, in the file or not; not the names yet to land."""
    journal.sync([_job(0)], NOW)
    _submit(journal, "job-0", "t-0")
    journal.transition("job-0", S.SUCCEEDED, NOW, result_urls=["u1", "u2", "u3"])
    journal.transition("job-0", S.SUCCEEDED, NOW, files=["job-0.mp4", "job-0-2.mp4"])
    journal.sync([], NOW)
    assert journal.file_owners() == {"job-0.mp4": ("job-0",), "job-0-2.mp4": ("job-0",)}


def test_sync_again_is_idempotent(journal: Journal) -> None:
    """Syncing the same file twice changes nothing and reports every job unchanged."""
    jobs = [_job(i) for i in range(5)]
    journal.sync(jobs, NOW)
    before = [journal.get(j.id) for j in jobs]
    result = journal.sync(jobs, NOW + 100)
    assert (result.added, result.unchanged, result.updated, result.dropped_from_file) == (
        0,
        5,
        0,
        0,
    )
    assert result.changed_after_submit == []
    assert [journal.get(j.id) for j in jobs] == before


def test_sync_in_small_batches_matches_one_batch(open_journal: Callable[..., Journal]) -> None:
    """The batch size only bounds memory: the result is the same."""
    jobs = [_job(i) for i in range(25)]
    a, b = open_journal("a.db"), open_journal("b.db")
    ra, rb = a.sync(jobs, NOW), b.sync(jobs, NOW, batch=4)
    assert ra == rb
    assert [r.id for r in a.iter_all()] == [r.id for r in b.iter_all()]


def test_sync_replaces_input_of_a_queued_job(journal: Journal) -> None:
    """Input changed before any submit: the new input (and its cost) is used."""
    journal.sync([_job(1), _job(2)], NOW)
    new = _job(1, prompt="a dog", cost=0.9)
    result = journal.sync([new, _job(2)], NOW + 5)
    assert (result.updated, result.unchanged, result.added) == (1, 1, 0)
    row = journal.get("job-1")
    assert row is not None
    assert row.input["prompt"] == "a dog"
    assert (row.input_hash, row.cost_usd, row.changed_input_hash) == (new.input_hash, 0.9, None)
    assert row.state is S.QUEUED


def test_sync_keeps_submitted_input_and_reports_the_change(journal: Journal) -> None:
    """Input changed after a task id exists: the old input stays and the job is reported."""
    old = _job(1)
    journal.sync([old, _job(2)], NOW)
    _submit(journal, "job-1", "t-1")
    new = _job(1, prompt="a dog")
    result = journal.sync([new, _job(2)], NOW + 5)
    assert result.changed_after_submit == ["job-1"]
    assert result.updated == 0
    row = journal.get("job-1")
    assert row is not None
    assert row.input_hash == old.input_hash
    assert row.input["prompt"] == "a cat, take 1"
    assert row.changed_input_hash == new.input_hash
    assert (row.task_id, row.state) == ("t-1", S.SUBMITTED)
    # Changing the file back clears the flag.
    result = journal.sync([old, _job(2)], NOW + 9)
    assert result.changed_after_submit == []
    assert result.unchanged == 2
    row = journal.get("job-1")
    assert row is not None
    assert row.changed_input_hash is None


def test_sync_treats_a_submitting_job_as_possibly_paid(journal: Journal) -> None:
    """A job caught mid-submit may be paid: a changed input is reported, not applied."""
    journal.sync([_job(1)], NOW)
    journal.transition("job-1", S.SUBMITTING, NOW)
    result = journal.sync([_job(1, prompt="other")], NOW + 1)
    assert result.changed_after_submit == ["job-1"]
    row = journal.get("job-1")
    assert row is not None
    assert row.input["prompt"] == "a cat, take 1"


def test_sync_moves_jobs_to_their_new_position(journal: Journal) -> None:
    """A reordered file updates idx (and filename) without counting as a change."""
    journal.sync([_job(1, idx=0), _job(2, idx=1)], NOW)
    result = journal.sync([_job(2, idx=0), _job(1, idx=1)], NOW)
    assert result.unchanged == 2
    assert [r.id for r in journal.iter_all()] == ["job-2", "job-1"]


def test_sync_marks_removed_jobs_and_counts_them(journal: Journal) -> None:
    """Jobs no longer in the file get in_file=0 and are counted; coming back restores them."""
    journal.sync([_job(i) for i in range(4)], NOW)
    result = journal.sync([_job(0), _job(2)], NOW + 1)
    assert result.dropped_from_file == 2
    assert [r.in_file for r in (journal.get(f"job-{i}") for i in range(4)) if r] == [
        True,
        False,
        True,
        False,
    ]
    result = journal.sync([_job(0), _job(1), _job(2)], NOW + 2)
    assert result.dropped_from_file == 1
    row = journal.get("job-1")
    assert row is not None
    assert row.in_file


# -- transitions --------------------------------------------------------------


def test_transition_table_is_what_the_docs_draw() -> None:
    """queued → submitting → submitted → succeeded → done, side exits as documented."""
    assert TRANSITIONS[S.QUEUED] == {S.SUBMITTING, S.FAILED}
    assert TRANSITIONS[S.SUBMITTING] == {S.SUBMITTED, S.QUEUED, S.FAILED}
    assert TRANSITIONS[S.SUBMITTED] == {S.SUBMITTED, S.SUCCEEDED, S.FAILED}
    assert TRANSITIONS[S.SUCCEEDED] == {S.SUCCEEDED, S.DONE, S.EXPIRED}
    assert TRANSITIONS[S.FAILED] == {S.QUEUED}
    # done goes back to be fetched again (its files gone or damaged on disk), or queued
    # for a new take by --reroll; expired only by --retry-expired
    assert TRANSITIONS[S.DONE] == {S.SUCCEEDED, S.QUEUED}
    assert TRANSITIONS[S.EXPIRED] == {S.QUEUED}
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], S.DONE),
        ([], S.SUBMITTED),
        ([], S.SUCCEEDED),
        ([S.SUBMITTING], S.SUCCEEDED),
        ([S.SUBMITTING, S.SUBMITTED], S.QUEUED),
        ([S.SUBMITTING, S.SUBMITTED], S.DONE),
        ([S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED], S.FAILED),
        ([S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.EXPIRED], S.SUCCEEDED),
        ([S.SUBMITTING, S.FAILED], S.SUBMITTING),
    ],
)
def test_transition_refuses_illegal_changes(
    journal: Journal, path: list[JobState], bad: JobState
) -> None:
    """Anything not in TRANSITIONS raises JournalError and leaves the row as it was."""
    journal.sync([_job(1)], NOW)
    for state in path:
        fields = {"task_id": "t-1"} if state is S.SUBMITTED else {}
        journal.transition("job-1", state, NOW, **fields)
    before = journal.get("job-1")
    with pytest.raises(JournalError, match="illegal state change"):
        journal.transition("job-1", bad, NOW + 1, fail_msg="nope")
    assert journal.get("job-1") == before


def test_transition_walks_the_happy_path(journal: Journal) -> None:
    """queued → submitting → submitted → succeeded → done, each storing its fields."""
    journal.sync([_job(1)], NOW)
    journal.transition("job-1", S.SUBMITTING, NOW, attempts=1)
    journal.transition("job-1", S.SUBMITTED, NOW + 1, task_id="t-1", submitted_at=NOW + 1)
    journal.transition("job-1", S.SUBMITTED, NOW + 5, arrived_via="poll")  # self-loop: an update
    journal.transition(
        "job-1",
        S.SUCCEEDED,
        NOW + 60,
        result_urls=("https://cdn/a.mp4", "https://cdn/b.mp4"),
        completed_at=NOW + 60,
        cost_time_ms=58_000,
        expires_at=NOW + 86_400,
    )
    journal.transition(
        "job-1",
        S.DONE,
        NOW + 70,
        files=["out/job-1.mp4", "out/job-1_2.mp4"],
        bytes=123_456,
        sha256=["aa", "bb"],
    )
    row = journal.get("job-1")
    assert row is not None
    assert row.state is S.DONE
    assert (row.task_id, row.attempts, row.arrived_via) == ("t-1", 1, "poll")
    assert row.result_urls == ("https://cdn/a.mp4", "https://cdn/b.mp4")
    assert row.files == ("out/job-1.mp4", "out/job-1_2.mp4")
    assert row.sha256 == ("aa", "bb")
    assert (row.bytes, row.cost_time_ms, row.completed_at) == (123_456, 58_000, NOW + 60)
    assert journal.by_task("t-1") == row
    assert journal.by_task("t-unknown") is None
    stored = _raw(journal, "SELECT result_urls, files FROM jobs WHERE id='job-1'")[0]
    assert json.loads(stored[0]) == ["https://cdn/a.mp4", "https://cdn/b.mp4"]
    assert json.loads(stored[1]) == ["out/job-1.mp4", "out/job-1_2.mp4"]


def test_transition_side_exits(journal: Journal) -> None:
    """submitting → failed (input rejected), submitted → failed, succeeded → expired are legal."""
    journal.sync([_job(1), _job(2), _job(3)], NOW)
    journal.transition("job-1", S.SUBMITTING, NOW)
    journal.transition("job-1", S.FAILED, NOW, fail_code="400", fail_msg="bad prompt")
    _submit(journal, "job-2", "t-2")
    journal.transition("job-2", S.FAILED, NOW, fail_code="task_failed")
    _submit(journal, "job-3", "t-3")
    journal.transition("job-3", S.SUCCEEDED, NOW, result_urls=["u"])
    journal.transition("job-3", S.EXPIRED, NOW)
    states = {r.id: r.state for r in journal.iter_all()}
    assert states == {"job-1": S.FAILED, "job-2": S.FAILED, "job-3": S.EXPIRED}
    row = journal.get("job-1")
    assert row is not None
    assert (row.fail_code, row.fail_msg) == ("400", "bad prompt")


def test_transition_of_unknown_job_or_column_raises(journal: Journal) -> None:
    """An unknown job id or an unknown (or protected) column is refused."""
    journal.sync([_job(1)], NOW)
    with pytest.raises(JournalError, match="not in the journal"):
        journal.transition("ghost", S.SUBMITTING, NOW)
    with pytest.raises(JournalError, match="unknown journal column"):
        journal.transition("job-1", S.SUBMITTING, NOW, colour="red")
    with pytest.raises(JournalError, match="unknown journal column"):
        journal.transition("job-1", S.SUBMITTING, NOW, id="job-9")
    row = journal.get("job-1")
    assert row is not None
    assert row.state is S.QUEUED


def test_task_history_records_each_submit(journal: Journal) -> None:
    """submitting → submitted with a task id adds one task_history row (with the input hash)."""
    job = _job(1)
    journal.sync([job], NOW)
    _submit(journal, "job-1", "t-1", NOW + 3)
    journal.transition("job-1", S.SUBMITTED, NOW + 9, task_id="t-1")  # self-loop: no new row
    assert _raw(journal, "SELECT task_id, job_id, input_hash, submitted_at FROM task_history") == [
        ("t-1", "job-1", job.input_hash, NOW + 3)
    ]
    journal.transition("job-1", S.FAILED, NOW + 10)
    journal.requeue_failed(NOW + 11)
    _submit(journal, "job-1", "t-2", NOW + 12)
    assert [r[0] for r in _raw(journal, "SELECT task_id FROM task_history ORDER BY task_id")] == [
        "t-1",
        "t-2",
    ]


_PAIRS = [(old, new) for old in JobState for new in JobState]
_LEGAL = [(old, new) for old, new in _PAIRS if new in TRANSITIONS[old]]


def _put_in_state(j: Journal, job_id: str, state: JobState) -> None:
    j._db.execute("UPDATE jobs SET state=? WHERE id=?", (state.value, job_id))


@pytest.mark.parametrize(("old", "new"), _PAIRS, ids=[f"{o}->{n}" for o, n in _PAIRS])
def test_transition_every_state_pair(journal: Journal, old: JobState, new: JobState) -> None:
    """Every pair of states: legal ones apply with their fields, the rest are refused with
    the same message as ever and leave the row untouched."""
    journal.sync([_job(1)], NOW)
    _put_in_state(journal, "job-1", old)
    before = journal.get("job-1")
    if new in TRANSITIONS[old]:
        journal.transition("job-1", new, NOW + 1, fail_msg="m", attempts=3)
        row = journal.get("job-1")
        assert row is not None
        assert (row.state, row.fail_msg, row.attempts) == (new, "m", 3)
        assert _raw(journal, "SELECT updated_at FROM jobs WHERE id='job-1'") == [(NOW + 1,)]
    else:
        with pytest.raises(JournalError) as err:
            journal.transition("job-1", new, NOW + 1, fail_msg="m", task_id="t-x")
        assert str(err.value) == f"job 'job-1': illegal state change {old} -> {new}"
        assert journal.get("job-1") == before
    assert _raw(journal, "SELECT count(*) FROM task_history") == [(0,)]


@pytest.mark.parametrize(("old", "new"), _LEGAL, ids=[f"{o}->{n}" for o, n in _LEGAL])
def test_task_history_only_for_submitting_to_submitted(
    journal: Journal, old: JobState, new: JobState
) -> None:
    """A task id given on any legal transition lands in task_history only when the job
    goes from submitting to submitted."""
    job = _job(1)
    journal.sync([job], NOW)
    _put_in_state(journal, "job-1", old)
    journal.transition("job-1", new, NOW + 2, task_id="t-1")
    row = journal.get("job-1")
    assert row is not None
    assert (row.state, row.task_id) == (new, "t-1")
    history = _raw(journal, "SELECT task_id, job_id, input_hash, submitted_at FROM task_history")
    if (old, new) == (S.SUBMITTING, S.SUBMITTED):
        assert history == [("t-1", "job-1", job.input_hash, NOW + 2)]
    else:
        assert history == []


def test_transition_errors_keep_their_precedence(journal: Journal) -> None:
    """Unknown job first, then an illegal change, then an unknown column (as before)."""
    journal.sync([_job(1)], NOW)
    with pytest.raises(JournalError, match="'ghost' is not in the journal"):
        journal.transition("ghost", S.SUBMITTING, NOW, colour="red")
    with pytest.raises(JournalError, match="illegal state change queued -> done"):
        journal.transition("job-1", S.DONE, NOW, colour="red")
    with pytest.raises(JournalError, match="unknown journal column 'colour'"):
        journal.transition("job-1", S.SUBMITTING, NOW, colour="red")
    with pytest.raises(JournalError, match="unknown journal column 'state'"):
        journal.transition("job-1", S.SUBMITTING, NOW, state="done")


def test_transition_uses_one_statement_per_op(journal: Journal) -> None:
    """A transition is one UPDATE; a task id adds one INSERT ... SELECT; no SELECT first."""
    journal.sync([_job(1)], NOW)
    seen: list[str] = []
    journal._db.set_trace_callback(seen.append)
    try:
        journal.transition("job-1", S.SUBMITTING, NOW)
        journal.transition("job-1", S.SUBMITTED, NOW, task_id="t-1")
        journal.transition("job-1", S.SUCCEEDED, NOW, result_urls=["u"])
    finally:
        journal._db.set_trace_callback(None)
    assert [q.split()[0] for q in seen] == ["UPDATE", "UPDATE", "INSERT", "UPDATE"]


# -- recovery -----------------------------------------------------------------


def test_recover_interrupted_submits(journal: Journal) -> None:
    """Jobs left submitting go back to queued, flagged possibly duplicated; others untouched."""
    journal.sync([_job(i) for i in range(4)], NOW)
    journal.transition("job-0", S.SUBMITTING, NOW)
    journal.transition("job-1", S.SUBMITTING, NOW)
    _submit(journal, "job-2", "t-2")
    assert journal.recover_interrupted_submits(NOW + 1) == 2
    rows = {r.id: r for r in journal.iter_all()}
    assert [(rows[f"job-{i}"].state, rows[f"job-{i}"].possibly_duplicated) for i in range(4)] == [
        (S.QUEUED, True),
        (S.QUEUED, True),
        (S.SUBMITTED, False),
        (S.QUEUED, False),
    ]
    assert journal.recover_interrupted_submits(NOW + 2) == 0
    assert journal.totals()["possibly_duplicated"] == 2


def test_jobs_failed_only_for_an_unanswered_submit_are_queued_again(journal: Journal) -> None:
    """SUBMIT_ERROR with no task id (an earlier version gave up on transient trouble):
    queued again, doubt kept; a job failed for a reason of its own stays failed."""
    journal.sync([_job(i) for i in range(3)], NOW)
    for job_id, code, dup in (("job-0", "SUBMIT_ERROR", 1), ("job-1", "INPUT_REJECTED", 0)):
        journal.transition(job_id, S.SUBMITTING, NOW)
        journal.transition(job_id, S.FAILED, NOW, fail_code=code, possibly_duplicated=dup)
    assert journal.requeue_unanswered_submits(NOW + 1) == 1
    rows = {r.id: r for r in journal.iter_all()}
    assert (rows["job-0"].state, rows["job-0"].fail_code) == (S.QUEUED, None)
    assert rows["job-0"].possibly_duplicated
    assert (rows["job-1"].state, rows["job-1"].fail_code) == (S.FAILED, "INPUT_REJECTED")


def test_requeue_failed(journal: Journal) -> None:
    """--retry-failed: failed jobs in the file become queued again, task and failure cleared."""
    journal.sync([_job(i) for i in range(3)], NOW)
    for i in range(3):
        _submit(journal, f"job-{i}", f"t-{i}")
    journal.transition("job-0", S.FAILED, NOW, fail_code="x", fail_msg="boom")
    journal.transition("job-2", S.FAILED, NOW, fail_code="y", fail_msg="bang")
    journal.sync([_job(0), _job(1)], NOW)  # job-2 left the file: it stays failed
    assert journal.requeue_failed(NOW + 1) == 1
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.task_id, row.fail_code, row.fail_msg) == (S.QUEUED, None, None, None)
    other = journal.get("job-2")
    assert other is not None
    assert (other.state, other.task_id) == (S.FAILED, "t-2")
    assert journal.by_task("t-0") is None
    assert journal.requeue_failed(NOW + 2) == 0


def _forbid(monkeypatch: pytest.MonkeyPatch, old: JobState, new: JobState) -> None:
    """Take ``old`` -> ``new`` out of the table, and out of the SQL derived from it."""
    monkeypatch.setitem(TRANSITIONS, old, TRANSITIONS[old] - {new})
    legal = ", ".join(f"'{s.value}'" for s in JobState if new in TRANSITIONS[s])
    monkeypatch.setitem(LEGAL_FROM_SQL, new, legal)


def _failed(j: Journal, job_id: str, code: str) -> None:
    j.transition(job_id, S.SUBMITTING, NOW)
    j.transition(job_id, S.FAILED, NOW, fail_code=code)


_BULK = {
    "recover_interrupted_submits": (
        S.SUBMITTING,
        lambda j: j.transition("job-0", S.SUBMITTING, NOW),
    ),
    "requeue_unanswered_submits": (S.FAILED, lambda j: _failed(j, "job-0", "SUBMIT_ERROR")),
    "requeue_failed": (S.FAILED, lambda j: _failed(j, "job-0", "INPUT_REJECTED")),
}


@pytest.mark.parametrize("method", list(_BULK))
def test_bulk_requeues_follow_the_transition_table(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A bulk requeue moves rows only as TRANSITIONS allows: with the change taken out of
    the table it is refused and leaves every row as it was."""
    old, put = _BULK[method]
    journal.sync([_job(0), _job(1)], NOW)
    put(journal)
    before = list(journal.iter_all())
    _forbid(monkeypatch, old, S.QUEUED)
    with pytest.raises(JournalError, match=f"illegal state change {old} -> queued"):
        getattr(journal, method)(NOW + 1)
    assert list(journal.iter_all()) == before
    monkeypatch.undo()
    assert getattr(journal, method)(NOW + 1) == 1


def test_an_illegal_bulk_change_is_refused(journal: Journal) -> None:
    """move_all refuses a change the table does not hold, before touching any row."""
    journal.sync([_job(0)], NOW)
    _submit(journal, "job-0", "t-0")
    journal.transition("job-0", S.SUCCEEDED, NOW, result_urls=["u"])
    journal.transition("job-0", S.DONE, NOW, files=["job-0.mp4"])
    before = journal.get("job-0")
    with pytest.raises(JournalError, match="illegal state change done -> failed"):
        journal.move_all(S.DONE, S.FAILED, NOW + 1, task_id=None)
    assert journal.get("job-0") == before


def test_sync_requeues_a_fixed_failed_input_through_the_table(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected input, fixed in the file, goes back to the queue as the table allows
    (failed -> queued); without that change in the table the sync refuses."""
    journal.sync([_job(0)], NOW)
    _failed(journal, "job-0", "INPUT_REJECTED")
    _forbid(monkeypatch, S.FAILED, S.QUEUED)
    with pytest.raises(JournalError, match="illegal state change failed -> queued"):
        journal.sync([_job(0, prompt="a better cat")], NOW + 1)
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.input["prompt"]) == (S.FAILED, "a cat, take 0")
    monkeypatch.undo()
    assert journal.sync([_job(0, prompt="a better cat")], NOW + 1).updated == 1
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.fail_code, row.input["prompt"]) == (S.QUEUED, None, "a better cat")


# -- reads --------------------------------------------------------------------


def test_page_walks_file_order(journal: Journal) -> None:
    """page() returns jobs in the given states in idx order, after a cursor, at most limit."""
    journal.sync([_job(i) for i in range(10)], NOW)
    _submit(journal, "job-3", "t-3")
    journal.sync([_job(i) for i in range(10) if i != 7], NOW)  # job-7 leaves the file
    seen: list[str] = []
    after = -1
    while page := journal.page([S.QUEUED], after, 3):
        assert len(page) <= 3
        seen += [r.id for r in page]
        after = page[-1].idx
    assert seen == [f"job-{i}" for i in (0, 1, 2, 4, 5, 6, 8, 9)]
    assert [r.id for r in journal.page([S.SUBMITTED, S.QUEUED], 2, 2)] == ["job-3", "job-4"]
    assert journal.page([S.DONE], -1, 100) == []


def test_in_states_lists_file_jobs_first(journal: Journal) -> None:
    """in_states returns every job in those states: file jobs by idx, then removed ones."""
    journal.sync([_job(i) for i in range(4)], NOW)
    for i in range(4):
        _submit(journal, f"job-{i}", f"t-{i}")
    journal.sync([_job(1), _job(3)], NOW)
    assert [r.id for r in journal.in_states([S.SUBMITTED])] == ["job-1", "job-3", "job-0", "job-2"]
    assert journal.in_states([S.DONE]) == []


def test_iter_all_yields_file_order_then_removed_jobs(journal: Journal) -> None:
    """iter_all: jobs in the file by idx, then jobs no longer in it, across small batches."""
    journal.sync([_job(i, idx=9 - i) for i in range(10)], NOW)  # file order reversed
    journal.sync([_job(i, idx=9 - i) for i in range(10) if i % 3], NOW)
    ids = [r.id for r in journal.iter_all(batch=2)]
    in_file = [f"job-{i}" for i in range(9, -1, -1) if i % 3]
    removed = [f"job-{i}" for i in (9, 6, 3, 0)]
    assert ids == in_file + removed
    assert [r.id for r in journal.iter_all()] == ids


def test_iter_all_keeps_removed_jobs_that_share_an_idx(journal: Journal) -> None:
    """Removed jobs from different versions of the file may share an idx; none is skipped."""
    journal.sync([_job(1, idx=0), _job(2, idx=1)], NOW)
    journal.sync([_job(3, idx=0)], NOW)  # job-1 (idx 0) and job-2 (idx 1) removed
    journal.sync([_job(4, idx=0)], NOW)  # job-3 (idx 0) removed too
    ids = [r.id for r in journal.iter_all(batch=1)]
    assert sorted(ids) == ["job-1", "job-2", "job-3", "job-4"]


def test_counts_by_state(journal: Journal) -> None:
    """counts() covers file jobs plus removed jobs that hold a (paid) task."""
    journal.sync([_job(i) for i in range(6)], NOW)
    _submit(journal, "job-0", "t-0")
    _submit(journal, "job-1", "t-1")
    journal.transition("job-1", S.SUCCEEDED, NOW, result_urls=["u"])
    journal.transition("job-2", S.SUBMITTING, NOW)
    journal.sync([_job(i) for i in range(1, 5)], NOW)  # job-0 (paid) and job-5 (queued) leave
    assert journal.counts() == {"submitted": 1, "succeeded": 1, "submitting": 1, "queued": 2}


def test_totals_and_queued_cost(journal: Journal) -> None:
    """totals() sums paid costs and unknown prices; queued_cost() what is left to submit."""
    journal.sync(
        [_job(0, cost=1.0), _job(1, cost=None), _job(2, cost=2.5), _job(3, cost=None)],
        NOW,
    )
    _submit(journal, "job-0", "t-0")
    _submit(journal, "job-1", "t-1")
    journal.transition("job-2", S.SUBMITTING, NOW)
    journal.recover_interrupted_submits(NOW)
    assert journal.totals() == {
        "jobs": 4.0,
        "possibly_duplicated": 1.0,
        "spent_known_usd": 1.0,
        "spent_unknown_jobs": 1.0,
    }
    assert journal.queued_cost() == (2.5, 1, 2)
    journal.sync([_job(0, cost=1.0), _job(1, cost=None), _job(2, cost=2.5)], NOW)
    assert journal.queued_cost() == (2.5, 0, 1)  # job-3 left the file


def test_empty_journal_reads(journal: Journal) -> None:
    """A journal with no jobs answers every read with zeros and empties."""
    assert journal.counts() == {}
    assert journal.totals() == {
        "jobs": 0.0,
        "possibly_duplicated": 0.0,
        "spent_known_usd": 0.0,
        "spent_unknown_jobs": 0.0,
    }
    assert journal.queued_cost() == (0.0, 0, 0)
    assert list(journal.iter_all()) == []
    assert journal.page([S.QUEUED], -1, 10) == []


def test_completions_are_recorded_newest_first(journal: Journal) -> None:
    """recent_completions returns a clock key's durations, newest first, up to limit."""
    for i in range(5):
        journal.record_completion("veo3:8s", 50.0 + i, NOW + i)
    journal.record_completion("other", 9.0, NOW)
    assert journal.recent_completions("veo3:8s") == [54.0, 53.0, 52.0, 51.0, 50.0]
    assert journal.recent_completions("veo3:8s", limit=2) == [54.0, 53.0]
    assert journal.recent_completions("none") == []


def test_the_schema_select_and_row_are_built_from_one_column_table(journal: Journal) -> None:
    """The jobs table has the columns JobRow declares (then updated_at), with their SQL
    types; the SELECT list reads them in order; a Change sets only columns."""
    info = _raw(journal, "PRAGMA table_info(jobs)")
    # The columns later schema steps add come after updated_at (ALTER TABLE appends).
    ordered = sorted(COLUMNS, key=lambda c: c.since)
    assert [(r[1], r[2]) for r in info] == [(c.name, c.decl.split()[0]) for c in ordered]
    assert [c.name for c in COLUMNS] == [*JobRow.__dataclass_fields__, "updated_at"]
    assert [c.name for c in COLUMNS if c.since == 2] == ["take", "earlier_files"]
    assert [c.name for c in COLUMNS if c.since == 3] == ["key_fp"]
    assert SELECT.split(", ") == list(JobRow.__dataclass_fields__)
    assert set(CHANGES) == Change.__optional_keys__
    assert not {"id", "state", "updated_at"} & set(CHANGES)


def test_jobrow_from_sql_parses_json_columns() -> None:
    """JobRow.from_sql turns JSON text into tuples and 0/1 into booleans."""
    values: dict[str, Any] = {
        "id": "j",
        "idx": 0,
        "model": "m",
        "provider": "p",
        "input_json": '{"prompt": "x"}',
        "input_hash": "h",
        "filename": "f.mp4",
        "cost_usd": None,
        "in_file": 1,
        "state": "succeeded",
        "task_id": "t",
        "request_type": None,
        "attempts": 2,
        "possibly_duplicated": 0,
        "changed_input_hash": None,
        "submitted_at": 1.0,
        "completed_at": 2.0,
        "result_urls": '["a", "b"]',
        "expires_at": None,
        "files": None,
        "bytes": None,
        "sha256": None,
        "fail_code": None,
        "fail_msg": None,
        "cost_time_ms": None,
        "arrived_via": "callback",
        "take": 2,
        "earlier_files": '["f.mp4"]',
    }
    row = JobRow.from_sql(list(values.values()))
    assert row.state is S.SUCCEEDED
    assert (row.take, row.earlier_files, row.out_name) == (2, ("f.mp4",), "f-take2.mp4")
    assert (row.in_file, row.possibly_duplicated) == (True, False)
    assert (row.result_urls, row.files, row.sha256) == (("a", "b"), (), ())
    assert row.input == {"prompt": "x"}


# -- durability ---------------------------------------------------------------


def test_data_survives_close_and_reopen(open_journal: Callable[..., Journal]) -> None:
    """Everything committed is read back by a fresh connection after close."""
    j = open_journal()
    j.sync([_job(i) for i in range(3)], NOW)
    _submit(j, "job-0", "t-0")
    j.transition("job-0", S.SUCCEEDED, NOW, result_urls=["u1"])
    j.record_completion("k", 42.0, NOW)
    before = list(j.iter_all())
    j.close()
    j2 = open_journal()
    assert list(j2.iter_all()) == before
    assert j2.recent_completions("k") == [42.0]
    assert j2.by_task("t-0") is not None


def test_committed_writes_are_visible_to_another_connection(journal: Journal) -> None:
    """Every write is committed when the call returns: a separate reader already sees it."""
    journal.sync([_job(1)], NOW)
    journal.execute_batch([lambda j: _submit(j, "job-1", "t-1")])
    reader = sqlite3.connect(journal.path)
    try:
        row = reader.execute("SELECT state, task_id FROM jobs WHERE id='job-1'").fetchone()
    finally:
        reader.close()
    assert row == ("submitted", "t-1")


# -- execute_batch and AsyncJournal -------------------------------------------


def test_execute_batch_runs_ops_in_one_transaction(journal: Journal) -> None:
    """execute_batch returns each op's result; a JournalError becomes that op's result only."""
    journal.sync([_job(1), _job(2)], NOW)
    results = journal.execute_batch(
        [
            lambda j: j.transition("job-1", S.SUBMITTING, NOW),
            lambda j: j.transition("job-2", S.DONE, NOW),
            lambda j: j.get_meta("schema"),
        ]
    )
    assert results[0] is None
    assert isinstance(results[1], JournalError)
    assert results[2] == str(SCHEMA_VERSION)
    first = journal.get("job-1")
    assert first is not None
    assert first.state is S.SUBMITTING


@pytest.fixture
async def async_journal(journal: Journal) -> AsyncIterator[AsyncJournal]:
    """The journal behind its worker thread; closed (thread and connection) after the test."""
    aj = AsyncJournal(journal)
    yield aj
    await aj.close()


def _caller(pending: Awaitable[T]) -> asyncio.Task[T]:
    """A task awaiting a journal call, as an engine coroutine would."""

    async def wait() -> T:
        return await pending

    return asyncio.create_task(wait())


class _BatchSpy:
    """Counts Journal.execute_batch calls and the ops in each."""

    def __init__(self, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = journal.execute_batch

        def spy(ops: Any, *, durable: bool = True) -> list[Any]:
            self.sizes.append(len(ops))
            return real(ops, durable=durable)

        monkeypatch.setattr(journal, "execute_batch", spy)


async def test_async_concurrent_writes_share_transactions(
    journal: Journal, async_journal: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 concurrent write() calls all apply, in far fewer transactions than writes."""
    journal.sync([_job(i) for i in range(200)], NOW)
    spy = _BatchSpy(journal, monkeypatch)

    async def submit(i: int) -> str:
        await async_journal.transition(f"job-{i}", S.SUBMITTING, NOW)
        return await async_journal.write(lambda j: (j.get(f"job-{i}") or _missing()).state.value)

    results = await asyncio.gather(*(submit(i) for i in range(200)))
    assert results == ["submitting"] * 200
    assert sum(spy.sizes) == 400
    assert len(spy.sizes) < 50  # 400 writes, a handful of commits
    assert journal.counts() == {"submitting": 200}


def _missing() -> JobRow:
    raise AssertionError("job missing")


async def test_async_write_returns_the_op_result(async_journal: AsyncJournal) -> None:
    """write() hands back what the op returned; read() runs on the same worker."""
    assert await async_journal.write(lambda j: j.get_meta("schema")) == str(SCHEMA_VERSION)
    assert await async_journal.read(lambda j: j.totals()["jobs"]) == 0.0


async def test_async_failing_op_fails_only_its_caller(
    journal: Journal, async_journal: AsyncJournal
) -> None:
    """An illegal transition raises JournalError for its writer; the others commit."""
    journal.sync([_job(i) for i in range(5)], NOW)
    results = await asyncio.gather(
        *(
            async_journal.transition(f"job-{i}", S.DONE if i == 2 else S.SUBMITTING, NOW)
            for i in range(5)
        ),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "NoneType",
        "NoneType",
        "JournalError",
        "NoneType",
        "NoneType",
    ]
    states = {r.id: r.state for r in journal.iter_all()}
    assert states == {
        "job-0": S.SUBMITTING,
        "job-1": S.SUBMITTING,
        "job-2": S.QUEUED,
        "job-3": S.SUBMITTING,
        "job-4": S.SUBMITTING,
    }


async def _blocked_leader(
    async_journal: AsyncJournal, gate: threading.Event
) -> tuple[asyncio.Task[None], threading.Event]:
    """Start a write whose op blocks the worker thread until ``gate`` is set."""
    entered = threading.Event()

    def slow(j: Journal) -> None:
        entered.set()
        gate.wait(timeout=30)
        j.record_completion("leader", 1.0, NOW)

    task = _caller(async_journal.write(slow))
    await asyncio.to_thread(entered.wait, 30)
    return task, entered


async def test_async_cancelled_leader_does_not_strand_followers(
    journal: Journal, async_journal: AsyncJournal
) -> None:
    """Cancelling the writer whose batch is committing still lets it and everyone else finish."""
    journal.sync([_job(i) for i in range(6)], NOW)
    gate = threading.Event()
    leader, _ = await _blocked_leader(async_journal, gate)
    followers = [_caller(async_journal.transition(f"job-{i}", S.SUBMITTING, NOW)) for i in range(6)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*followers, return_exceptions=True)
    assert results == [None] * 6
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert journal.recent_completions("leader") == [1.0]  # shielded: its commit went through
    assert journal.counts() == {"submitting": 6}


async def test_async_cancelled_follower_does_not_strand_the_others(
    journal: Journal, async_journal: AsyncJournal
) -> None:
    """A writer cancelled while queued behind a commit does not block the rest of its batch."""
    journal.sync([_job(i) for i in range(4)], NOW)
    gate = threading.Event()
    leader, _ = await _blocked_leader(async_journal, gate)
    writers = [_caller(async_journal.transition(f"job-{i}", S.SUBMITTING, NOW)) for i in range(4)]
    await asyncio.sleep(0)
    writers[0].cancel()  # would have led the next batch
    writers[2].cancel()
    await asyncio.sleep(0)
    gate.set()
    await leader
    results = await asyncio.gather(*writers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[2], asyncio.CancelledError)
    assert (results[1], results[3]) == (None, None)
    for i in (1, 3):
        row = journal.get(f"job-{i}")
        assert row is not None
        assert row.state is S.SUBMITTING
    # The journal keeps working for later writers.
    await async_journal.transition("job-1", S.SUBMITTED, NOW, task_id="t-1")


async def test_async_integrity_error_fails_only_its_caller(
    journal: Journal, async_journal: AsyncJournal
) -> None:
    """A write that breaks a constraint fails alone; its batch-mates' task ids are committed."""
    journal.sync([_job(i) for i in range(3)], NOW)
    for i in range(3):
        journal.transition(f"job-{i}", S.SUBMITTING, NOW)
    journal.transition("job-0", S.SUBMITTED, NOW, task_id="t-dup")
    gate = threading.Event()
    leader, _ = await _blocked_leader(async_journal, gate)
    good = _caller(async_journal.transition("job-1", S.SUBMITTED, NOW, task_id="t-1"))
    # NOT NULL broken on purpose: an sqlite3.IntegrityError from inside the batch.
    dup = _caller(async_journal.transition("job-2", S.SUBMITTED, NOW, task_id="t-2", attempts=None))
    await asyncio.sleep(0)
    gate.set()
    await leader
    results = await asyncio.gather(good, dup, return_exceptions=True)
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert results[0] is None
    row = journal.get("job-1")
    assert row is not None
    assert row.task_id == "t-1"


async def test_async_close_closes_the_journal(tmp_path: Path) -> None:
    """AsyncJournal.close closes the connection and frees the lock for the next run."""
    aj = AsyncJournal(Journal(tmp_path / "state.db"))
    await aj.write(lambda j: j.record_completion("k", 3.0, NOW))
    await aj.close()
    again = Journal(tmp_path / "state.db")
    try:
        assert again.recent_completions("k") == [3.0]
    finally:
        again.close()


def test_sync_result_defaults() -> None:
    """A bare SyncResult counts nothing."""
    r = SyncResult()
    assert (r.added, r.unchanged, r.updated, r.dropped_from_file) == (0, 0, 0, 0)
    assert r.changed_after_submit is None


def test_plan_rows_carry_the_file_name_and_the_inputs_price_and_clock_read(
    open_journal: Callable[..., Journal],
) -> None:
    """`plan` groups the jobs left to submit from these alone: mode, duration, resolution
    and sound (a JSON boolean, read back as one), and the output name for its clash check."""
    j = open_journal()
    inp = {"mode": "text-to-video", "duration": 5, "sound": True, "prompt": "p"}
    text = json.dumps(inp, sort_keys=True)
    job = NewJob("a", 0, "kling-2-6", "auto", text, "h", "a.mp4", 0.6)
    j.sync([job, _job(1)], NOW)
    rows = list(j.plan_rows())
    assert rows[0][7:] == (
        Kind("kling-2-6", 5, None),
        "a.mp4",
        {"duration": 5, "mode": "text-to-video", "sound": True},
        1,  # the take: a reroll's next one lands at its own name
    )
    assert rows[1][8:] == ("job-1.mp4", {"duration": 8}, 1)


def test_known_task_ids_are_the_jobs_tasks_now_and_before(journal: Journal) -> None:
    """What the owner check asks of a journal: which of a manifest's task ids are its own,
    a job's current task or an earlier one (--retry-failed clears the task id, not its
    history)."""
    journal.sync([_job(i) for i in range(3)], NOW)
    _submit(journal, "job-0", "task-a")
    _submit(journal, "job-1", "task-b")
    journal.transition("job-1", S.FAILED, NOW, fail_code="X")
    journal.transition("job-1", S.QUEUED, NOW, task_id=None)
    row = journal.get("job-1")
    assert row is not None and row.task_id is None
    many = [f"task-x{i}" for i in range(1000)]  # past one query's worth of ids
    assert journal.known_task_ids(["task-a", "task-b", "task-c", *many]) == {"task-a", "task-b"}
    assert journal.known_task_ids([]) == set()
