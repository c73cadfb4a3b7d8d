"""Ledger: what reads and what writes, and how durably, at the start of a run and after."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apixo_batch.clock import FakeClock
from apixo_batch.journal import AsyncJournal, JobState, Journal, NewJob, SqliteLedger

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


class _Spy:
    """Records each transaction the journal commits: its size and durability."""

    def __init__(self, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[tuple[int, bool]] = []
        real = journal.execute_batch

        def spy(ops: Any, *, durable: bool = True) -> list[Any]:
            self.batches.append((len(ops), durable))
            return real(ops, durable=durable)

        monkeypatch.setattr(journal, "execute_batch", spy)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def reopen(path: Path) -> Iterator[Callable[[], Journal]]:
    """Opens the journal again once the test's ledger closed it; closed after the test."""
    opened: list[Journal] = []

    def open_() -> Journal:
        opened.append(Journal(path))
        return opened[-1]

    yield open_
    for j in opened:
        j.close()


async def test_reconcile_is_one_durable_write_of_its_own_kept_across_a_reopen(
    path: Path, reopen: Callable[[], Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile commits through the write path, in one durable transaction (not as a
    read); a reopened journal holds what it did."""
    journal = Journal(path)
    journal.sync([_job(i) for i in range(3)], NOW)
    journal.transition("job-0", S.SUBMITTING, NOW)  # a crash cut this submit off
    journal.transition("job-1", S.SUBMITTING, NOW)
    journal.transition("job-1", S.FAILED, NOW, fail_code="SUBMIT_ERROR")
    spy = _Spy(journal, monkeypatch)
    ledger = SqliteLedger(AsyncJournal(journal), FakeClock())
    recovered, synced = await ledger.reconcile((_job(i) for i in (0, 1, 3)), retry_failed=False)
    await ledger.close()
    assert spy.batches == [(1, True)]
    assert recovered == 1
    assert (synced.added, synced.unchanged, synced.dropped_from_file) == (1, 2, 1)
    again = reopen()
    rows = {r.id: r for r in again.iter_all()}
    assert (rows["job-0"].state, rows["job-0"].possibly_duplicated) == (S.QUEUED, True)
    assert (rows["job-1"].state, rows["job-1"].fail_code) == (S.QUEUED, None)
    assert (rows["job-2"].in_file, rows["job-3"].state) == (False, S.QUEUED)


async def test_reconcile_without_a_job_file_leaves_the_jobs_as_they_are(
    path: Path, reopen: Callable[[], Journal]
) -> None:
    """No job file (``status``/``download`` from the journal alone): crash leftovers are
    requeued, but no job is marked dropped from the file; the file's stamp is kept."""
    journal = Journal(path)
    journal.sync([_job(i) for i in range(3)], NOW)
    journal.transition("job-0", S.SUBMITTING, NOW)
    ledger = SqliteLedger(AsyncJournal(journal), FakeClock())
    recovered, synced = await ledger.reconcile(None, retry_failed=False)
    await ledger.keep_file_stamp("12:34|-")
    await ledger.close()
    assert recovered == 1
    assert (synced.added, synced.dropped_from_file) == (0, 0)
    again = reopen()
    assert all(r.in_file for r in again.iter_all())
    assert again.file_ids() == {"job-0", "job-1", "job-2"}
    assert again.file_stamp() == "12:34|-"


async def test_learned_values_are_writes_kept_across_a_reopen(
    path: Path, reopen: Callable[[], Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learned rate and the pruning of learned completion times go through the write
    path (not durable: an earlier value serves as well); both are there after a reopen."""
    journal = Journal(path)
    with journal.transaction():
        for i in range(502):
            journal.record_completion("k", float(i), NOW + i)
    spy = _Spy(journal, monkeypatch)
    ledger = SqliteLedger(AsyncJournal(journal), FakeClock())
    learned = await ledger.learned_completions()
    await ledger.remember_rpm("account", 42.0)
    await ledger.close()
    assert learned == {"k": [float(i) for i in range(2, 502)]}
    assert spy.batches == [(1, False), (1, False)]
    again = reopen()
    assert again._db.execute("SELECT count(*) FROM completions").fetchone() == (500,)
    assert again.get_meta("learned_rpm:account") == "42.0"
