"""The side file of task ids the journal refused, and adopting a task id (issue 30)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apixo_batch.journal import JobState, Journal, NewJob
from apixo_batch.journal.unrecorded import AdoptRefused, Kept, SideFile, adopt_task, side_file_of

S = JobState
NOW = 1_767_965_610.0


def _job(n: int) -> NewJob:
    text = json.dumps({"prompt": f"a cat, take {n}"}, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n,
        model="veo3-fast",
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n}.mp4",
        cost_usd=0.5,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    j.sync([_job(i) for i in range(4)], NOW)
    yield j
    j.close()


def test_the_side_file_is_beside_the_journal(tmp_path: Path) -> None:
    assert side_file_of(tmp_path / "x.sqlite") == tmp_path / "x.sqlite.unrecorded"


def test_kept_ids_are_read_back_in_order(tmp_path: Path) -> None:
    side = SideFile(tmp_path / "state.db")
    assert side.read() == []
    side.reserve()
    assert side.path.exists() and side.empty()
    side.keep("job-0", "task-a", "async", NOW)
    side.keep("job-1", "task-b", "callback", NOW + 1)
    assert side.read() == [
        Kept("job-0", "task-a", "async", NOW),
        Kept("job-1", "task-b", "callback", NOW + 1),
    ]
    assert not side.empty()
    side.remove()
    assert not side.path.exists() and side.read() == []


def test_a_torn_last_line_is_ignored_and_the_next_id_stays_whole(tmp_path: Path) -> None:
    side = SideFile(tmp_path / "state.db")
    side.keep("job-0", "task-a", "async", NOW)
    with side.path.open("a") as f:
        f.write('{"job_id": "job-1", "task_id": "ta')  # a crash mid-append
    assert side.read() == [Kept("job-0", "task-a", "async", NOW)]
    side.keep("job-2", "task-c", "async", NOW)
    assert [k.task_id for k in side.read()] == ["task-a", "task-c"]


def test_an_in_memory_journal_keeps_nothing_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    side = SideFile(Path(":memory:"))
    side.reserve()
    with pytest.raises(OSError):
        side.keep("job-0", "task-a", "async", NOW)
    assert side.read() == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("before", ["queued", "submitting", "failed"])
def test_a_task_id_is_adopted_as_the_jobs_submitted_task(journal: Journal, before: str) -> None:
    if before != "queued":
        journal.transition("job-0", S.SUBMITTING, NOW)
    if before == "failed":
        journal.transition("job-0", S.FAILED, NOW, fail_code="SUBMIT_ERROR", fail_msg="x")
    with journal.transaction():
        assert adopt_task(journal, "job-0", "task-a", "async", NOW + 5) is True
    row = journal.get("job-0")
    assert row is not None and row.state is S.SUBMITTED and row.task_id == "task-a"
    assert row.submitted_at == NOW + 5 and row.fail_code is None
    assert journal.by_task("task-a") is not None
    assert [r.id for r in journal.in_states([S.SUBMITTED])] == ["job-0"]


def test_adopting_the_same_id_again_changes_nothing(journal: Journal) -> None:
    with journal.transaction():
        adopt_task(journal, "job-0", "task-a", "async", NOW)
    with journal.transaction():
        assert adopt_task(journal, "job-0", "task-a", "async", NOW + 9) is False
    row = journal.get("job-0")
    assert row is not None and row.state is S.SUBMITTED and row.submitted_at == NOW


def test_a_job_with_another_task_id_or_none_at_all_is_refused(journal: Journal) -> None:
    with journal.transaction():
        adopt_task(journal, "job-0", "task-a", "async", NOW)
    with pytest.raises(AdoptRefused, match="already has task task-a"):
        adopt_task(journal, "job-0", "task-b", "async", NOW)
    with pytest.raises(AdoptRefused, match="not in the journal"):
        adopt_task(journal, "job-9", "task-b", "async", NOW)
    row = journal.get("job-0")
    assert row is not None and row.task_id == "task-a"
