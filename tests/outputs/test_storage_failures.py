"""Our disk failing a run (issue 20): the journal full, the results' folder full. One stop
that names the path and the cause, exit 74, the manifest when the disk allows, nothing lost."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from e2e import SIM_KEY, read_manifest, simple_jobs, write_campaign

from apixo_batch import RunOptions, run_campaign
from apixo_batch.exitcodes import ExitCode
from apixo_batch.journal import Journal
from apixo_batch.journal.reconcile import Reconcile


def opts(sim: Any, **fields: Any) -> RunOptions:
    return RunOptions(base_url=sim.base_url, time_scale=0.01, **fields)


async def test_a_full_journal_disk_stops_the_run_with_74_and_a_rerun_finishes(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's SQLite answers 'database or disk is full' mid-run (its size capped
    right after the job file is synced in): the run stops with exit 74 and a reason that
    names the journal, no exception reaches the caller, and a task whose id could not be
    journaled is named in a warning. Once there is room, the same call finishes the
    campaign, submitting only what never had a task."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(60)
    job_file = write_campaign(tmp_path, jobs)
    real_sync = Reconcile.sync

    def sync_then_cap(self: Journal, *args: Any, **kw: Any) -> Any:
        result = real_sync(self, *args, **kw)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 1}")
        return result

    monkeypatch.setattr(Reconcile, "sync", sync_then_cap)
    events: list[Any] = []
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, on_event=events.append)
    assert result.exit_code == ExitCode.IO_ERROR
    assert result.stop_reason is not None and "journal cannot be written" in result.stop_reason
    assert "full" in result.stop_reason
    lost = {e.data["task_id"] for e in events if e.kind == "warning" and "task_id" in e.data}
    monkeypatch.setattr(Reconcile, "sync", real_sync)  # room again
    again = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert again.exit_code == ExitCode.OK, again.stop_reason
    stats = sim.stats()
    # Every job once, except those whose paid task id the journal could not keep (told).
    assert stats["distinct_inputs"] == 60
    assert stats["duplicate_submits"] <= len(lost)
    assert len(read_manifest(tmp_path / "out")) == 60


async def test_a_full_results_disk_stops_submits_leaves_results_for_download_and_exits_74(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results' folder refuses every file (ENOSPC): the first refusal stops new
    submits with a reason that says where and what to do; tasks already paid are followed
    and stay journaled for `download`; the manifest (elsewhere) is written; exit 74."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(30))

    def no_space(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.part"))

    monkeypatch.setattr("apixo_batch.outputs.partfile.PartFile.fresh", no_space)
    events: list[Any] = []
    result = await run_campaign(
        job_file, opts(sim, max_concurrent=5), api_key=SIM_KEY, on_event=events.append
    )
    assert result.exit_code == ExitCode.IO_ERROR
    assert result.stop_reason is not None and "No space left on device" in result.stop_reason
    assert "apixo-batch download" in result.stop_reason
    stopped = [e for e in events if e.kind == "stopped"]
    assert len(stopped) == 1
    assert result.submitted < 30  # submits stopped at the first refusal
    assert result.counts["done"] == 0 and result.counts["failed"] == 0
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 30 and {e["state"] for e in manifest} == {"pending"}
    monkeypatch.undo()
    again = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert again.exit_code == ExitCode.OK
    assert sim.stats()["duplicate_submits"] == 0


async def test_a_manifest_the_disk_refuses_is_one_reason_not_a_traceback(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every result landed, then the manifest cannot be written (ENOSPC): exit 74, the
    reason names the cause, the counts still come from the journal."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))

    def refuse(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", "manifest.jsonl")

    monkeypatch.setattr("apixo_batch.pipeline.books.write_manifest", refuse)
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert result.exit_code == ExitCode.IO_ERROR
    assert result.manifest is None and result.counts["done"] == 3
    assert result.stop_reason is not None and "No space left" in result.stop_reason
