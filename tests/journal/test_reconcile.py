"""Reconcile with ``Again``: which ended jobs a run queues again (failed by code,
expired, done as a new take), within a selection, and what the sync says of the rest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apixo_batch.journal import JobState, Journal, NewJob
from apixo_batch.planning.selection import Again, Selection

S = JobState
NOW = 1_700_000_000.0


def _job(n: int, *, prompt: str | None = None, model: str = "wan-2-5") -> NewJob:
    inp = {
        "mode": "text-to-video",
        "prompt": prompt or f"a cat, take {n}",
        "duration": 5,
        "resolution": "720p",
    }
    text = json.dumps(inp, sort_keys=True)
    return NewJob(
        id=f"job-{n}",
        idx=n,
        model=model,
        provider="alibaba",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n}.mp4",
        cost_usd=0.5,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()


def _submit(j: Journal, job_id: str, task_id: str) -> None:
    j.transition(job_id, S.SUBMITTING, NOW)
    j.transition(job_id, S.SUBMITTED, NOW, task_id=task_id, submitted_at=NOW)


def _fail(j: Journal, n: int, code: str) -> None:
    _submit(j, f"job-{n}", f"t-{n}")
    j.transition(f"job-{n}", S.FAILED, NOW, fail_code=code, fail_msg="no")


def _done(j: Journal, n: int) -> None:
    _submit(j, f"job-{n}", f"t-{n}")
    j.transition(f"job-{n}", S.SUCCEEDED, NOW, result_urls=["u"], expires_at=NOW + 9)
    j.transition(f"job-{n}", S.DONE, NOW, files=[f"job-{n}.mp4"], bytes=10, sha256=["h"])


def _state(j: Journal, n: int) -> JobState:
    row = j.get(f"job-{n}")
    assert row is not None
    return row.state


def test_retry_failed_skips_an_unchanged_refused_input_and_says_so(journal: Journal) -> None:
    """A content violation with the same input is not paid for again; a timeout is retried,
    and so is a refused input that was edited (with the new input)."""
    journal.sync([_job(0), _job(1), _job(2)], NOW)
    _fail(journal, 0, "CONTENT_VIOLATION")
    _fail(journal, 1, "Timeout")
    _fail(journal, 2, "INVALID_IMAGE_URL")
    edited = _job(2, prompt="a dog")
    _, synced = journal.reconcile([_job(0), _job(1), edited], NOW + 1, again=Again(failed=True))
    assert synced.refused_unchanged == {"job-0": "CONTENT_VIOLATION"}
    assert [_state(journal, n) for n in range(3)] == [S.FAILED, S.QUEUED, S.QUEUED]
    row = journal.get("job-2")
    assert row is not None
    assert (row.input_hash, row.task_id, row.fail_code) == (edited.input_hash, None, None)
    assert synced.again == {"failed": 2}


def test_fail_code_narrows_the_retry_and_overrides_the_refusal(journal: Journal) -> None:
    """--fail-code CONTENT_VIOLATION: only those, sent again even with the same input."""
    journal.sync([_job(0), _job(1)], NOW)
    _fail(journal, 0, "CONTENT_VIOLATION")
    _fail(journal, 1, "Timeout")
    again = Again(failed=True, fail_codes=("CONTENT_VIOLATION",))
    _, synced = journal.reconcile([_job(0), _job(1)], NOW + 1, again=again)
    assert [_state(journal, n) for n in range(2)] == [S.QUEUED, S.FAILED]
    assert synced.refused_unchanged == {}


def test_the_selection_bounds_what_is_sent_again(journal: Journal) -> None:
    """--retry-failed --only job-1: job-0 stays failed, untouched."""
    journal.sync([_job(0), _job(1)], NOW)
    _fail(journal, 0, "Timeout")
    _fail(journal, 1, "Timeout")
    again = Again(failed=True, selection=Selection(only=("job-1",)))
    journal.reconcile([_job(0), _job(1)], NOW + 1, again=again)
    assert [_state(journal, n) for n in range(2)] == [S.FAILED, S.QUEUED]


def test_retry_expired_queues_an_expired_job_again(journal: Journal) -> None:
    """Expired is no longer a dead end: --retry-expired queues it, its old task cleared."""
    journal.sync([_job(0)], NOW)
    _submit(journal, "job-0", "t-0")
    journal.transition("job-0", S.SUCCEEDED, NOW, result_urls=["u"], expires_at=NOW)
    journal.transition("job-0", S.EXPIRED, NOW, fail_code="RESULT_EXPIRED")
    journal.reconcile([_job(0)], NOW + 1, retry_failed=True)  # not a failed job
    assert _state(journal, 0) is S.EXPIRED
    journal.reconcile([_job(0)], NOW + 2, again=Again(expired=True))
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.task_id, row.result_urls, row.fail_code) == (S.QUEUED, None, (), None)
    assert journal.totals()["spent_known_usd"] == 0.5  # the first task stays paid for


def test_reroll_makes_a_new_take_and_keeps_the_earlier_files(journal: Journal) -> None:
    """--reroll: take 2, a new seed (wan-2-5 takes one), the first file held by the job."""
    journal.sync([_job(0), _job(1)], NOW)
    _done(journal, 0)
    _done(journal, 1)
    again = Again(reroll=True, selection=Selection(only=("job-0",)))
    _, synced = journal.reconcile([_job(0), _job(1)], NOW + 1, again=again)
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.take, row.earlier_files, row.files) == (
        S.QUEUED, 2, ("job-0.mp4",), (),
    )  # fmt: skip
    assert row.out_name == "job-0-take2.mp4"
    assert isinstance(row.input["seed"], int)
    assert row.input_hash == _job(0).input_hash  # the file's input: no "changed" warning
    assert _state(journal, 1) is S.DONE
    assert journal.file_owners()["job-0.mp4"] == ("job-0",)
    assert journal.file_owners()["job-0-take2.mp4"] == ("job-0",)
    assert synced.again == {"done": 1}
    # A third take adds the second take's files to the earlier ones.
    _submit(journal, "job-0", "t-0b")
    journal.transition("job-0", S.SUCCEEDED, NOW, result_urls=["u"], expires_at=NOW + 9)
    journal.transition("job-0", S.DONE, NOW, files=["job-0-take2.mp4"], bytes=10, sha256=["h"])
    journal.reconcile([_job(0), _job(1)], NOW + 3, again=again)
    row = journal.get("job-0")
    assert row is not None
    assert (row.take, row.earlier_files) == (3, ("job-0.mp4", "job-0-take2.mp4"))


def test_a_changed_ended_job_is_told_by_the_state_it_ended_in(journal: Journal) -> None:
    """Without a retry flag, an edited failed or done job is not sent; the sync names its
    end, so the advice can name --retry-failed or --reroll."""
    journal.sync([_job(0), _job(1)], NOW)
    _fail(journal, 0, "CONTENT_VIOLATION")
    _done(journal, 1)
    _, synced = journal.reconcile([_job(0, prompt="x"), _job(1, prompt="y")], NOW + 1)
    assert synced.ended == {"job-0": "failed", "job-1": "done"}
    assert [_state(journal, n) for n in range(2)] == [S.FAILED, S.DONE]


def test_a_failed_take_is_retried_as_the_same_take_with_its_seed(journal: Journal) -> None:
    """Take 2 failed (a timeout): --retry-failed sends take 2 again, its seed and its
    earlier files kept; an edited input keeps the take's seed too."""
    journal.sync([_job(0)], NOW)
    _done(journal, 0)
    journal.reconcile([_job(0)], NOW + 1, again=Again(reroll=True))
    first = journal.get("job-0")
    assert first is not None
    _submit(journal, "job-0", "t-0b")
    journal.transition("job-0", S.FAILED, NOW, fail_code="Timeout")
    journal.reconcile([_job(0)], NOW + 2, again=Again(failed=True))
    row = journal.get("job-0")
    assert row is not None
    assert (row.state, row.take, row.earlier_files) == (S.QUEUED, 2, ("job-0.mp4",))
    assert row.input["seed"] == first.input["seed"]
    journal.reconcile([_job(0, prompt="a dog")], NOW + 3)  # queued, never paid: replaced
    edited = journal.get("job-0")
    assert edited is not None
    assert (edited.input["prompt"], edited.input["seed"]) == ("a dog", first.input["seed"])
