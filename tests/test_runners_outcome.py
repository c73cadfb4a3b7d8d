"""tests/runners.py's reading of a campaign: the paid-once checks the runners' targets
rest on find what they must, and only that (fabricated outcomes, no process)."""

from __future__ import annotations

from typing import Any

import pytest
from runners import Journaled, Outcome, SimTaskSeen, job_of_prompt


def _job(task: str | None, flagged: bool = False, state: str = "done") -> dict[str, Any]:
    return {"state": state, "task_id": task, "possibly_duplicated": flagged, "owner": None}


def _runner(rid: int, adopted_by: int | None = None) -> dict[str, Any]:
    return {"id": rid, "pid": 100 + rid, "adopted_by": adopted_by}


def test_prompt_names_its_job() -> None:
    """simple_jobs' prompt 'scene number 7' is job-0007."""
    assert job_of_prompt("scene number 7") == "job-0007"


def test_one_task_per_job_passes() -> None:
    """One task per job, each journaled: nothing to report."""
    o = Outcome(
        {"a": _job("t1"), "b": _job("t2")},
        {"a": [Journaled("t1", 10.0, 1)], "b": [Journaled("t2", 11.0, 2)]},
        {"a": [SimTaskSeen("t1", 9.9)], "b": [SimTaskSeen("t2", 10.9)]},
        [_runner(1), _runner(2)],
    )
    o.assert_paid_once()
    assert (o.submits, o.extra_submits) == (2, 0)


def test_a_task_lost_before_the_journal_must_be_flagged() -> None:
    """A task created but never journaled, then a second submit: allowed only flagged."""
    history = {"a": [Journaled("t2", 20.0, 2)]}
    created = {"a": [SimTaskSeen("t1", 9.0), SimTaskSeen("t2", 19.9)]}
    flagged = Outcome({"a": _job("t2", flagged=True)}, history, created, [_runner(2)])
    flagged.assert_paid_once()
    assert flagged.not_journaled() == {"a": ["t1"]}
    unflagged = Outcome({"a": _job("t2")}, history, created, [_runner(2)])
    with pytest.raises(AssertionError, match="not flagged"):
        unflagged.assert_paid_once()


def test_a_submit_after_the_task_id_was_journaled_is_the_sin() -> None:
    """A job's second task created after its first id was durable: found, flagged or not."""
    o = Outcome(
        {"a": _job("t2", flagged=True)},
        {"a": [Journaled("t1", 10.0, 1), Journaled("t2", 30.0, 1)]},
        {"a": [SimTaskSeen("t1", 9.9), SimTaskSeen("t2", 29.9)]},
        [_runner(1)],
    )
    assert o.resubmitted_after_journaled() == [("a", "t2")]
    with pytest.raises(AssertionError, match="journaled"):
        o.assert_paid_once()


def test_a_stray_of_an_adopted_runner_is_allowed_only_when_said() -> None:
    """Runner 1, adopted by 2, journals t1 late (its row went back flagged and runner 2
    sent t2): a stray, accepted with strays_ok, and the sin otherwise."""
    o = Outcome(
        {"a": _job("t2", flagged=True)},
        {"a": [Journaled("t1", 20.0, 1), Journaled("t2", 21.0, 2)]},
        {"a": [SimTaskSeen("t1", 5.0), SimTaskSeen("t2", 20.5)]},
        [_runner(1, adopted_by=2), _runner(2)],
    )
    assert o.strays() == {"a": ["t1"]}
    o.assert_paid_once(strays_ok=True)
    with pytest.raises(AssertionError):
        o.assert_paid_once()


def test_mutual_adoption_and_jobs_not_done_are_found() -> None:
    """Two runners that adopted each other, and a job left pending, are both reported."""
    o = Outcome(
        {"a": _job(None, state="queued")},
        {},
        {},
        [_runner(1, adopted_by=2), _runner(2, adopted_by=1), _runner(3, adopted_by=1)],
    )
    assert o.mutual_adoptions() == [(1, 2), (2, 1)]
    assert o.not_done() == {"a": "queued"}
    with pytest.raises(AssertionError, match="not done"):
        o.assert_paid_once()
