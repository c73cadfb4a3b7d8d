"""The review page's decisions in the journal: keep, reject, undo, a note, who and when;
the cursor a live page polls; counts; a journal of the step before gains the table."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from apixo_batch.errors import JournalError
from apixo_batch.journal import Journal, NewJob
from apixo_batch.journal.schema import SCHEMA_VERSION

NOW = 1_800_000_000.0


def _journal(path: Path, n: int = 3) -> Journal:
    journal = Journal(path, lock=False)
    inp = json.dumps({"mode": "text-to-video", "duration": 5, "prompt": "p"})
    journal.sync(
        [NewJob(f"j{i}", i, "kling-2-6", "auto", inp, f"h{i}", f"j{i}.mp4", 0.3) for i in range(n)],
        NOW,
    )
    return journal


def test_decisions_are_kept_with_note_reviewer_and_time_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    journal = _journal(tmp_path / "j.sqlite")
    kept = journal.decide("j0", "keep", note="  the light!  ", reviewer="ana", at=NOW + 1)
    journal.decide("j1", "reject", note="", reviewer=None, at=NOW + 2)
    assert (kept.decision, kept.note, kept.reviewer, kept.at, kept.take) == (
        "keep",
        "the light!",
        "ana",
        NOW + 1,
        1,
    )
    journal.close()
    again = Journal(tmp_path / "j.sqlite", lock=False)
    found = again.decisions()
    assert {k: (d.decision, d.note) for k, d in found.items()} == {
        "j0": ("keep", "the light!"),
        "j1": ("reject", None),
    }
    assert again.decision_counts() == {"keep": 1, "reject": 1}
    again.close()


def test_an_undo_is_a_decision_the_cursor_brings_and_counts_forget(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.sqlite")
    first = journal.decide("j0", "keep", note=None, reviewer=None, at=NOW)
    journal.decide("j0", None, note=None, reviewer=None, at=NOW + 1)
    journal.decide("j2", "reject", note="blurry", reviewer=None, at=NOW + 2)
    since = journal.decisions_since(first.seq)
    assert [(d.job_id, d.decision) for d in since] == [("j0", None), ("j2", "reject")]
    assert [d.seq for d in since] == sorted(d.seq for d in since) and since[0].seq > first.seq
    assert journal.decisions_since(since[-1].seq) == []
    assert journal.decision_counts() == {"reject": 1}
    journal.close()


def test_a_decision_on_an_unknown_job_or_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.sqlite")
    with pytest.raises(JournalError, match="'nope' is not in the journal"):
        journal.decide("nope", "keep", note=None, reviewer=None, at=NOW)
    with pytest.raises(JournalError, match="keep or reject"):
        journal.decide("j0", "maybe", note=None, reviewer=None, at=NOW)
    assert journal.decisions() == {}
    journal.close()


def test_changed_since_reads_the_jobs_stamped_after_a_cursor(tmp_path: Path) -> None:
    from apixo_batch.journal import JobState

    journal = _journal(tmp_path / "j.sqlite")
    assert journal.last_change() == NOW
    journal.transition("j1", JobState.SUBMITTING, NOW + 5, attempts=1)
    rows, cursor = journal.changed_since(NOW + 1)
    assert [r.id for r in rows] == ["j1"] and cursor == NOW + 5
    assert journal.changed_since(NOW + 6) == ([], NOW + 6)
    journal.close()


def test_a_journal_of_the_step_before_gains_the_decisions_table(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _journal(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE decisions")
    db.execute("DROP INDEX jobs_updated_idx")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    db.commit()
    db.close()
    journal = Journal(path, lock=False)
    journal.decide("j0", "keep", note=None, reviewer=None, at=NOW)
    assert journal.decision_counts() == {"keep": 1}
    indexes = {r[1] for r in journal._db.execute("PRAGMA index_list(jobs)")}
    assert "jobs_updated_idx" in indexes
    journal.close()
