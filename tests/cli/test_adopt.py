"""`apixo-batch adopt JOBFILE JOB_ID TASK_ID` (issue 30): a paid task id journaled as the
job's task once APIXO (the in-process simulator) knows it for the job's model; one clear
line and exit 2, the journal unchanged, when it cannot be."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from e2e import simple_jobs, write_campaign
from simfixture import SIM_KEY, api_call, simulator_fixture  # noqa: F401

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


async def _task(sim: Any, model: str, prompt: str = "a cat") -> str:
    """A task created straight on the API (paid outside the journal); its id."""
    async with aiohttp.ClientSession() as http:
        status, body, _ = await api_call(
            http,
            "POST",
            f"{sim.base_url}/generateTask/{model}",
            body={
                "request_type": "async",
                "input": {"mode": "text-to-video", "prompt": prompt, "duration": 5, "sound": True}
                if model == "kling-2-6"
                else {
                    "mode": "text-to-video",
                    "prompt": prompt,
                    "resolution": "720p",
                    "duration": 5,
                },
            },
        )
    assert status == 200, body
    return str(body["data"]["taskId"])


async def _adopt(sim: Any, job_file: Path, *args: str) -> int:
    # In a thread: the CLI runs its own event loop, and the simulator answers on this one.
    argv = ["adopt", str(job_file), *args, "--base-url", sim.base_url]
    return await asyncio.to_thread(cli.main, argv)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIXO_API_KEY", SIM_KEY)


async def test_adopt_asks_apixo_then_journals_the_task_id_as_submitted(
    simulator: Any, job_file: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await simulator(time_scale=0.01)
    task_id = await _task(sim, "kling-2-6")
    before = sim.stats()["requests_total"]
    assert await _adopt(sim, job_file, "job-0000", task_id) == 0
    out = capsys.readouterr().out
    assert f"job job-0000: task {task_id} (" in out and "journaled" in out and "download" in out
    assert sim.stats()["requests_total"] == before + 1  # one status request
    assert _row(job_file, "job-0000") == (S.SUBMITTED, task_id)
    # The same id again: nothing to do, still 0, and APIXO is not asked again.
    assert await _adopt(sim, job_file, "job-0000", task_id) == 0
    assert "already its task" in capsys.readouterr().out
    assert sim.stats()["requests_total"] == before + 1


async def test_adopt_refuses_a_task_id_apixo_does_not_know(
    simulator: Any, job_file: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await simulator(time_scale=0.01)
    assert await _adopt(sim, job_file, "job-0000", "task_made_up") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "APIXO does not know task task_made_up for model kling-2-6" in err[0]
    assert "not adopted, the journal unchanged" in err[0] and SIM_KEY not in err[0]
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


async def test_adopt_refuses_a_task_of_another_model(
    simulator: Any, job_file: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wan-2-5 task offered to a kling-2-6 job: APIXO's status route for kling-2-6 does
    not know it (404), so it is refused and the job keeps no task."""
    sim = await simulator(time_scale=0.01)
    task_id = await _task(sim, "wan-2-5")
    assert await _adopt(sim, job_file, "job-0000", task_id) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"APIXO does not know task {task_id} for model kling-2-6" in err[0]
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


def test_adopt_refuses_a_task_whose_answer_names_another_model(
    job_file: Path,
    key_env: None,
    mock_api: aioresponses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Should a status answer carry the task's model, another model than the job's is
    refused as well."""
    data = {"taskId": "task_x", "state": "processing", "model": "wan-2-5"}
    url = "http://api.test/statusTask/kling-2-6?taskId=task_x"
    mock_api.get(url, payload={"code": 200, "message": "success", "data": data})
    argv = ["adopt", str(job_file), "job-0000", "task_x", "--base-url", "http://api.test"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "task task_x is a wan-2-5 task, and the job's model is kling-2-6" in (err[0])
    )
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


async def test_adopt_with_apixo_unreachable_changes_nothing(
    job_file: Path, key_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No answer at all (a port nobody listens on): exit 75, one line, nothing journaled."""
    argv = ["adopt", str(job_file), "job-0000", "task_x", "--base-url", "http://127.0.0.1:9"]
    assert await asyncio.to_thread(cli.main, argv) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not ask APIXO about task task_x" in err[0], err
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


def test_adopt_without_a_key_is_one_line_and_exit_2(
    job_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("APIXO_API_KEY", raising=False)
    assert cli.main(["adopt", str(job_file), "job-0000", "task_x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "APIXO_API_KEY is not set" in err[0]
    assert _row(job_file, "job-0000") == (S.QUEUED, None)


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
