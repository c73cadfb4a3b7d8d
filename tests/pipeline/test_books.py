"""Closing a run's books: what the journal cannot tell at the end stays unknown (never $0),
and only a journal or disk that refuses is taken that way; a bug goes on as it is."""

from __future__ import annotations

import asyncio
import errno
import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from e2e import SIM_KEY, simple_jobs, write_campaign
from stagefakes import Recorder, memory_ledger, new_job

from apixo_batch import Event
from apixo_batch.api import build_engine
from apixo_batch.clock import FakeClock
from apixo_batch.errors import JournalError
from apixo_batch.exitcodes import ExitCode
from apixo_batch.jobs import load_campaign
from apixo_batch.journal import Ledger, SqliteLedger, Totals
from apixo_batch.outputs.output import LocalOutput
from apixo_batch.pipeline import books
from apixo_batch.pipeline.books import close_books, review_page
from apixo_batch.pipeline.options import RunOptions, RunResult
from apixo_batch.reports.manifest import render_summary

UNREADABLE = [
    sqlite3.OperationalError("disk I/O error"),
    JournalError("the journal thread stopped unexpectedly"),
]


def _failing(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, name: str, error: Exception) -> None:
    async def fail(*args: Any, **kw: Any) -> Any:
        raise error

    monkeypatch.setattr(ledger, name, fail)


@pytest.mark.parametrize("error", UNREADABLE, ids=["disk", "journal"])
async def test_totals_the_journal_cannot_read_are_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """The manifest is written, then the totals cannot be read: they are None (unknown), not
    a Totals of zeros, and nothing is raised."""
    ledger = await memory_ledger(FakeClock(), [new_job(i) for i in range(3)])
    _failing(ledger, monkeypatch, "totals", error)
    refused: list[str] = []
    got = await close_books(ledger, LocalOutput(tmp_path), refused.append)
    assert got.totals is None and got.manifest is not None
    assert got.counts["pending"] == 3 and got.never_submitted == 3 and refused == []


async def test_the_totals_are_read_when_the_journal_answers(tmp_path: Path) -> None:
    ledger = await memory_ledger(FakeClock(), [new_job(i) for i in range(3)])
    got = await close_books(ledger, LocalOutput(tmp_path), [].append)
    assert isinstance(got.totals, Totals) and got.totals.jobs == 3


@pytest.mark.parametrize("read", ["totals", "counts"])
async def test_a_bug_reading_the_books_is_raised_not_taken_for_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    ledger = await memory_ledger(FakeClock(), [new_job(0)])
    _failing(ledger, monkeypatch, read, TypeError("'NoneType' object is not subscriptable"))
    with pytest.raises(TypeError, match="not subscriptable"):
        await close_books(ledger, LocalOutput(tmp_path), [].append)


@pytest.mark.looptime
@pytest.mark.usefixtures("inline_run_journal")
async def test_a_run_whose_totals_cannot_be_read_says_its_spend_is_unknown(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal answers at the start and not for the totals at the end: the result and
    the JSON summary say `spent_usd: null`, the text summary says the spend is unknown."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    real = SqliteLedger.totals
    reads: list[int] = []

    async def unreadable_at_the_end(self: Ledger) -> Totals:
        reads.append(1)
        if len(reads) > 1:  # the first read is the run's start (what was spent before)
            raise sqlite3.OperationalError("disk I/O error")
        return await real(self)

    monkeypatch.setattr(SqliteLedger, "totals", unreadable_at_the_end)
    events: list[Event] = []
    clock = FakeClock(wall_start=time.time())  # the simulator's wall time
    run = build_engine(
        job_file,
        RunOptions(base_url=sim.base_url, time_scale=0.01),
        api_key=SIM_KEY,
        on_event=events.append,
        clock=clock,
    ).run()
    result = await asyncio.wait_for(run, timeout=30)
    assert result.counts["done"] == 3 and result.spent_usd is None
    [summary] = [e for e in events if e.kind == "summary"]
    assert "spent_usd" in summary.data and summary.data["spent_usd"] is None
    text = io.StringIO()
    render_summary(result.summary(), text)
    assert "estimated spend unknown" in text.getvalue() and "$0.00" not in text.getvalue()
    # What else comes from those totals is unknown too, never a reassuring zero.
    assert (result.possibly_duplicated, result.unknown_price_jobs) == (None, None)
    assert summary.data["possibly_duplicated"] is None
    assert "possibly duplicated submits: unknown" in text.getvalue()


def test_a_known_spend_is_shown_in_dollars() -> None:
    """Unknown is only for None: a spend of zero is still $0.00."""
    for spent, shown in ((0.0, "estimated spend $0.00"), (1.2, "estimated spend $1.20")):
        text = io.StringIO()
        render_summary(RunResult(ExitCode.OK, {}, spent_usd=spent).summary(), text)
        assert shown in text.getvalue()


async def test_a_review_page_the_disk_refuses_costs_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await memory_ledger(FakeClock(), [new_job(0)])
    campaign = load_campaign(write_campaign(tmp_path, simple_jobs(1)))
    clock = FakeClock()
    events = Recorder()

    def no_space(*args: Any, **kw: Any) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", "review.html")

    monkeypatch.setattr(books, "write_review", no_space)
    got = await review_page(ledger, campaign, LocalOutput(tmp_path), {}, events.emitter(clock))
    assert got is None
    [warning] = events.of("warning")
    assert "review.html not written" in warning.data["message"]


async def test_a_bug_in_the_review_page_is_raised_not_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await memory_ledger(FakeClock(), [new_job(0)])
    campaign = load_campaign(write_campaign(tmp_path, simple_jobs(1)))
    clock = FakeClock()
    events = Recorder()

    def broken(*args: Any, **kw: Any) -> Path:
        raise KeyError("fail_msg")

    monkeypatch.setattr(books, "write_review", broken)
    with pytest.raises(KeyError):
        await review_page(ledger, campaign, LocalOutput(tmp_path), {}, events.emitter(clock))
    assert events.of("warning") == []
