"""The side file of task ids the journal refused, and adopting a task id (issue 30)."""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import disk_full_for

from apixo_batch.journal import JobState, Journal, NewJob
from apixo_batch.journal.unrecorded import (
    RESERVED,
    AdoptRefused,
    Kept,
    SideFile,
    adopt_task,
    side_file_of,
)

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


def test_the_reserved_space_takes_ids_in_place_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reserve() gives the file RESERVED bytes of zeros; on a disk then full (no write may
    grow a file), hundreds of ids are still kept, in place, and read back whole."""
    side = SideFile(tmp_path / "state.db")
    side.reserve()
    assert side.path.stat().st_size == RESERVED
    assert side.path.stat().st_blocks * 512 >= RESERVED  # blocks given, not a sparse file
    assert side.empty() and side.read() == []
    refused = disk_full_for(side.path, monkeypatch)
    for n in range(300):
        side.keep(f"job-{n}", f"task-{n:04d}", "async", NOW + n)
    assert refused == [] and side.path.stat().st_size == RESERVED
    assert side.read() == [Kept(f"job-{n}", f"task-{n:04d}", "async", NOW + n) for n in range(300)]
    assert not side.empty()


def test_without_reserved_space_a_full_disk_refuses_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counterpart: a side file never reserved cannot take an id on a full disk (the
    caller then warns with the task id)."""
    side = SideFile(tmp_path / "state.db")
    side.path.touch()
    refused = disk_full_for(side.path, monkeypatch)
    with pytest.raises(OSError) as info:
        side.keep("job-0", "task-a", "async", NOW)
    assert info.value.errno == errno.ENOSPC and refused


def test_a_side_file_of_an_older_version_reads_and_takes_more_ids(tmp_path: Path) -> None:
    """Lines appended with no reserved zeros (before the space was reserved) read as ever;
    reserving the file then keeps them, and a new id lands after them."""
    side = SideFile(tmp_path / "state.db")
    old = [
        {"job_id": "job-0", "task_id": "task-a", "request_type": "async", "at": NOW},
        {"job_id": "job-1", "task_id": "task-b", "request_type": "callback", "at": NOW + 1},
    ]
    side.path.write_text("".join("\n" + json.dumps(o) + "\n" for o in old), encoding="utf-8")
    assert [k.task_id for k in side.read()] == ["task-a", "task-b"] and not side.empty()
    side.reserve()
    assert side.path.stat().st_size == RESERVED
    side.keep("job-2", "task-c", "async", NOW + 2)
    assert [k.task_id for k in side.read()] == ["task-a", "task-b", "task-c"]


def test_a_line_torn_in_the_reserved_space_is_ignored(tmp_path: Path) -> None:
    """A crash mid-write leaves part of a line before the zeros: skipped, and the next id
    (written from the first zero on, after a newline) stays whole."""
    side = SideFile(tmp_path / "state.db")
    side.reserve()
    side.keep("job-0", "task-a", "async", NOW)
    end = side.path.read_bytes().index(b"\0")
    with side.path.open("r+b") as f:
        f.seek(end)
        f.write(b'\n{"job_id": "job-1", "task_id": "ta')
    assert [k.task_id for k in side.read()] == ["task-a"]
    side.keep("job-2", "task-c", "async", NOW)
    assert [k.task_id for k in side.read()] == ["task-a", "task-c"]
    assert side.path.stat().st_size == RESERVED
