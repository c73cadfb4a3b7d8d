"""`apixo-batch adopt JOBFILE JOB_ID TASK_ID` (issue 30): a paid task id journaled as the
job's task, no API call; one clear line and exit 2 when it cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import simple_jobs, write_campaign

from apixo_batch.cli import entry as cli
from apixo_batch.jobs import load_campaign
from apixo_batch.journal import JobState, Journal, jobs_of

S = JobState


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = write_campaign(tmp_path, simple_jobs(2))
    journal = Journal(tmp_path / "out" / ".apixo-batch.sqlite")
    journal.reconcile(jobs_of(load_campaign(path)), 1000.0, retry_failed=False)
    journal.transition("job-0001", S.SUBMITTING, 1000.0)
    journal.transition("job-0001", S.SUBMITTED, 1000.0, task_id="task-old")
    journal.close()
    return path


def _row(job_file: Path, job_id: str) -> tuple[JobState, str | None]:
    journal = Journal(job_file.parent / "out" / ".apixo-batch.sqlite", lock=False)
    try:
        row = journal.get(job_id)
        assert row is not None
        return row.state, row.task_id
    finally:
        journal.close()


def test_adopt_journals_the_task_id_as_submitted(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["adopt", str(job_file), "job-0000", "task-new"]) == 0
    out = capsys.readouterr().out
    assert "job job-0000: task task-new journaled" in out and "download" in out
    assert _row(job_file, "job-0000") == (S.SUBMITTED, "task-new")
    # The same id again: nothing to do, still 0.
    assert cli.main(["adopt", str(job_file), "job-0000", "task-new"]) == 0
    assert "already its task" in capsys.readouterr().out


def test_adopt_refuses_a_job_not_in_the_journal(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["adopt", str(job_file), "job-9999", "task-new"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "job-9999" in err[0] and "not in the journal" in err[0]


def test_adopt_refuses_a_job_with_another_task_id(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["adopt", str(job_file), "job-0001", "task-new"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "job-0001" in err[0] and "already has task task-old" in err[0]
    assert _row(job_file, "job-0001") == (S.SUBMITTED, "task-old")


def test_adopt_without_a_journal_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_campaign(tmp_path, simple_jobs(1))
    assert cli.main(["adopt", str(path), "job-0000", "task-new"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no journal at" in err[0] and "job-0000" in err[0]
    assert not (tmp_path / "out").exists()


def test_adopt_refuses_a_task_id_that_is_not_one_word(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["adopt", str(job_file), "job-0000", "task new"]) == 2
    assert "TASK_ID" in capsys.readouterr().err
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


def test_adopt_while_a_run_holds_the_journal_is_refused(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = Journal(job_file.parent / "out" / ".apixo-batch.sqlite")
    try:
        assert cli.main(["adopt", str(job_file), "job-0000", "task-new"]) == 2
    finally:
        held.close()
    assert "another apixo-batch run" in capsys.readouterr().err
