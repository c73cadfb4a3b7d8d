"""The runs the journal keeps for the review page: the latest, and the latest that did
work; and what the ledger counts as work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from apixo_batch.clock import FakeClock
from apixo_batch.journal import (
    AsyncJournal,
    JobState,
    Journal,
    Landed,
    LastRuns,
    NewJob,
    RunRecord,
    SqliteLedger,
    last_runs,
)
from apixo_batch.journal.runs import LAST_RUN, keep_run

S = JobState
NOW = 1_767_965_610.0


def _job(n: int) -> NewJob:
    text = json.dumps({"prompt": f"a cat, take {n}"})
    digest = hashlib.sha256(text.encode()).hexdigest()
    return NewJob(f"job-{n}", n, "kling-2-6", "auto", text, digest, f"job-{n}.mp4", 0.3)


def test_a_run_that_did_nothing_leaves_the_last_working_run_as_it_was(tmp_path: Path) -> None:
    """A run that submitted is both the latest and the last that worked; a rerun with
    nothing to do replaces the latest only; both read back as kept, across a reopen."""
    journal = Journal(tmp_path / "j.sqlite")
    assert last_runs(journal) == LastRuns(None, None)
    worked = RunRecord(NOW, 42.5, 3, 9, stops=("budget",), stop_reason="--budget", budget_usd=1.0)
    keep_run(journal, worked)
    assert last_runs(journal) == LastRuns(worked, worked)
    idle = RunRecord(NOW + 60, 0.0, 0, 0)
    keep_run(journal, idle)
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert last_runs(again) == LastRuns(idle, worked)
    again.close()


def test_a_record_this_version_cannot_read_is_none_and_unknown_keys_are_kept() -> None:
    """Damaged or foreign JSON reads as no record (the page shows none), never an error;
    keys a later version adds survive a read and a write."""
    assert RunRecord.from_json("{not json") is None
    assert RunRecord.from_json('{"ended_at": "x"}') is None
    assert RunRecord.from_json("[1, 2]") is None
    later = RunRecord.from_json(
        '{"ended_at": 1, "wall_s": 2, "submitted": 3, "changed": 4, "mood": "fine"}'
    )
    assert later is not None and later.extra == {"mood": "fine"}
    assert json.loads(later.to_json())["mood"] == "fine"


async def test_the_ledger_counts_work_not_marks_and_hand_backs(tmp_path: Path) -> None:
    """A submit marked then handed back is no work; a task id, a result, a file are; and
    keep_run writes through the ledger."""
    journal = Journal(tmp_path / "j.sqlite")
    journal.sync([_job(i) for i in range(2)], NOW)
    ledger = SqliteLedger(AsyncJournal(journal), FakeClock())
    await ledger.mark_submitting("job-0", 1)
    await ledger.hand_back("job-0", possibly_duplicated=False)
    assert ledger.changes == 0
    await ledger.mark_submitting("job-1", 1)
    await ledger.record_task_id("job-1", "t1", "x", possibly_duplicated=False)
    await ledger.record_success(
        "job-1",
        result_urls=["https://r.test/1.mp4"],
        completed_at=NOW,
        expires_at=NOW + 3600,
        cost_time_ms=1000,
        via="poll",
        clock_key="k",
        seconds=1.0,
    )
    landed = Landed()
    landed.add("job-1.mp4", "00", 10)
    await ledger.record_done("job-1", landed)
    assert ledger.changes == 3
    await ledger.keep_run(RunRecord(NOW, 1.0, 1, ledger.changes))
    runs = await ledger.last_runs()
    await ledger.close()
    assert runs.work is not None and runs.work.changed == 3
    again = Journal(tmp_path / "j.sqlite")
    assert again.get_meta(LAST_RUN) is not None
    again.close()
