"""Queued jobs whose output name is taken: found before the submit, refused unpaid."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apixo_batch.journal import OUTPUT_EXISTS, Clash, JobState, Journal, NewJob, output_clashes
from apixo_batch.journal.clash import find_clashes, refuse_clashes

S = JobState
NOW = 1_767_965_610.0


def _job(n: int, *, idx: int | None = None, filename: str | None = None) -> NewJob:
    text = json.dumps({"prompt": f"a cat, take {n}"}, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n if idx is None else idx,
        model="veo3-fast",
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=filename or f"job-{n}.mp4",
        cost_usd=0.5,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()


def _land(j: Journal, job_id: str, files: list[str]) -> None:
    j.transition(job_id, S.SUBMITTING, NOW)
    j.transition(job_id, S.SUBMITTED, NOW, task_id=f"t-{job_id}", submitted_at=NOW)
    j.transition(job_id, S.SUCCEEDED, NOW, result_urls=["u"] * len(files))
    j.transition(job_id, S.DONE, NOW, files=files)


def test_a_file_no_job_wrote_is_a_clash_a_file_the_job_landed_is_not(journal: Journal) -> None:
    """On disk and landed by no job: refused. Landed by a job: that job's, not foreign."""
    journal.sync([_job(0), _job(1), _job(2)], NOW)
    _land(journal, "job-2", ["job-2.mp4"])
    on_disk = {"job-1.mp4", "job-2.mp4"}
    assert output_clashes(journal, on_disk.__contains__) == [Clash("job-1", "job-1.mp4", None)]
    # Without a look at the disk (object storage, a plan): the journal alone.
    assert output_clashes(journal, None) == []


def test_an_inserted_job_whose_index_name_another_job_landed_is_a_clash(
    journal: Journal,
) -> None:
    """Names from {index}: a job inserted at the top takes clip-0.mp4, landed by the job
    that was first; the shifted old jobs are done (they write nothing more)."""
    journal.sync(
        [_job(1, idx=0, filename="clip-0.mp4"), _job(2, idx=1, filename="clip-1.mp4")], NOW
    )
    _land(journal, "job-1", ["clip-0.mp4"])
    _land(journal, "job-2", ["clip-1.mp4"])
    journal.sync(
        [
            _job(0, idx=0, filename="clip-0.mp4"),
            _job(1, idx=1, filename="clip-1.mp4"),
            _job(2, idx=2, filename="clip-2.mp4"),
        ],
        NOW,
    )
    on_disk = {"clip-0.mp4", "clip-1.mp4"}
    assert output_clashes(journal, on_disk.__contains__) == [Clash("job-0", "clip-0.mp4", "job-1")]


def test_a_name_a_task_on_its_way_will_land_is_a_clash_case_folded(journal: Journal) -> None:
    journal.sync([_job(0, filename="Hero.mp4")], NOW)
    journal.transition("job-0", S.SUBMITTING, NOW)
    journal.transition("job-0", S.SUBMITTED, NOW, task_id="t-0", submitted_at=NOW)
    journal.sync([_job(1, filename="hero.MP4")], NOW)  # job-0 left the file, still paid
    assert output_clashes(journal, None) == [Clash("job-1", "hero.MP4", "job-0")]


def test_refused_jobs_end_failed_unpaid_the_others_stay_queued(journal: Journal) -> None:
    journal.sync([_job(0), _job(1)], NOW)
    found = refuse_clashes(journal, {"job-0.mp4"}.__contains__, NOW, lambda n: f"out/{n}")
    assert [c.job_id for c in found] == ["job-0"]
    row = journal.get("job-0")
    assert row is not None and row.state is S.FAILED and row.task_id is None
    assert row.fail_code == OUTPUT_EXISTS
    assert row.fail_msg is not None and "out/job-0.mp4" in row.fail_msg
    assert "Move the file away" in row.fail_msg
    other = journal.get("job-1")
    assert other is not None and other.state is S.QUEUED
    assert journal.totals()["spent_known_usd"] == 0.0


def test_a_refused_job_retried_once_the_file_is_moved_is_queued_and_not_refused(
    journal: Journal,
) -> None:
    journal.sync([_job(0)], NOW)
    refuse_clashes(journal, lambda _n: True, NOW, str)
    journal.reconcile([_job(0)], NOW, retry_failed=True)
    assert output_clashes(journal, lambda _n: False) == []
    row = journal.get("job-0")
    assert row is not None and row.state is S.QUEUED


def test_every_result_name_is_checked_once_tasks_bring_several(journal: Journal) -> None:
    """Once a task brought two results, a new job's second name (`<stem>-2.mp4`) is
    checked too: on disk and landed by no job, or landed by another job, it is refused
    before the submit. One result a task so far: only the first name is checked."""
    journal.sync([_job(0), _job(1, filename="a.mp4"), _job(2, filename="b.mp4")], NOW)
    on_disk = {"a-2.mp4"}
    assert output_clashes(journal, on_disk.__contains__) == []  # one result a task so far
    _land(journal, "job-0", ["job-0.mp4", "b-2.mp4"])
    assert output_clashes(journal, on_disk.__contains__) == [
        Clash("job-1", "a-2.mp4", None, 2),
        Clash("job-2", "b-2.mp4", "job-0", 2),
    ]
    message = Clash("job-1", "a-2.mp4", None, 2).message("out/a-2.mp4")
    assert "its result 2 would land on out/a-2.mp4" in message and OUTPUT_EXISTS in message


def test_two_queued_jobs_whose_names_would_meet_the_later_one_is_refused(
    journal: Journal,
) -> None:
    """Tasks bring two results: job `a`'s second is `a-2.mp4`, job `a-2`'s first. In file
    order the first keeps its names; a task on its way holds all the names it may bring."""
    journal.sync([_job(0)], NOW)
    _land(journal, "job-0", ["job-0.mp4", "job-0-2.mp4"])
    journal.sync(
        [
            _job(0),
            _job(1, filename="a.mp4"),
            _job(2, filename="a-2.mp4"),
            _job(3, filename="c.mp4"),
            _job(4, filename="c-2.mp4"),
        ],
        NOW,
    )
    journal.transition("job-3", S.SUBMITTING, NOW)
    journal.transition("job-3", S.SUBMITTED, NOW, task_id="t-3", submitted_at=NOW)
    assert output_clashes(journal, None) == [
        Clash("job-2", "a-2.mp4", "job-1", 1),
        Clash("job-4", "c-2.mp4", "job-3", 1),
    ]


def test_the_holders_rows_alone_find_the_same_clashes(journal: Journal) -> None:
    """`plan` reads only the jobs that may hold a name: the same clashes as from all rows."""
    journal.sync([_job(0), _job(1, filename="a.mp4"), _job(2, filename="b.mp4")], NOW)
    _land(journal, "job-0", ["job-0.mp4", "b-2.mp4"])
    journal.sync([_job(0), _job(1, filename="a.mp4"), _job(2, filename="b-2.mp4")], NOW)
    candidates = [("job-1", "a.mp4"), ("job-2", "b-2.mp4")]
    assert [r[0] for r in journal.output_rows(holders=True)] == ["job-0"]
    every = find_clashes(journal.output_rows(), candidates, {"a-2.mp4"}.__contains__)
    held = find_clashes(journal.output_rows(holders=True), candidates, {"a-2.mp4"}.__contains__)
    assert every == held == [Clash("job-1", "a-2.mp4", None, 2), Clash("job-2", "b-2.mp4", "job-0")]


def test_a_rerolled_take_is_checked_at_its_name_and_its_earlier_files_stay_held(
    journal: Journal,
) -> None:
    """--reroll: the queued take lands at job-0-take2.mp4, a name a hand-made file there
    takes from it; its first take's file stays the job's own (never a clash for it, always
    one for a job named after it). The holders' read keeps the job for its earlier file."""
    from apixo_batch.planning.selection import Again

    journal.sync([_job(0), _job(1)], NOW)
    _land(journal, "job-0", ["job-0.mp4"])
    journal.reconcile([_job(0), _job(1, filename="job-0.mp4")], NOW + 1, again=Again(reroll=True))
    assert output_clashes(journal, {"job-0.mp4"}.__contains__) == [
        Clash("job-1", "job-0.mp4", "job-0")
    ]
    assert output_clashes(journal, {"job-0-take2.mp4"}.__contains__) == [
        Clash("job-0", "job-0-take2.mp4", None),
        Clash("job-1", "job-0.mp4", "job-0"),
    ]
    held = list(journal.output_rows(holders=True))
    assert [(r[0], r[1], r[2]) for r in held] == [("job-0", "job-0-take2.mp4", ("job-0.mp4",))]
    assert find_clashes(held, [("new", "JOB-0.mp4")], None) == [Clash("new", "JOB-0.mp4", "job-0")]
