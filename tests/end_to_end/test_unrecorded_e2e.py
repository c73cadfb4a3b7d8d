"""Issue 30: a paid task id the journal could not record (its disk full) is kept beside
it and adopted by the next run: followed and downloaded, never paid for twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e import SIM_KEY, disk_full_for, read_manifest, run_cli, simple_jobs, write_campaign

from apixo_batch import RunOptions, run_campaign
from apixo_batch.exitcodes import ExitCode
from apixo_batch.jobs import load_campaign
from apixo_batch.journal import Journal, jobs_of
from apixo_batch.journal.reconcile import Reconcile
from apixo_batch.journal.unrecorded import SideFile

pytestmark = pytest.mark.e2e


def opts(sim: Any, **fields: Any) -> RunOptions:
    return RunOptions(base_url=sim.base_url, time_scale=0.01, **fields)


async def test_ids_a_full_journal_refused_are_adopted_by_the_next_run_not_paid_twice(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(60))
    side = tmp_path / "out" / ".apixo-batch.sqlite.unrecorded"
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
    lost = [e for e in events if e.kind == "warning" and "task_id" in e.data]
    assert lost, "the cap left no paid id unjournaled: the test proves nothing"
    for warning in lost:
        assert (
            str(side) in warning.data["message"] and "keep this line" not in warning.data["message"]
        )
    # Read as the next run reads it: up to the reserved zeros.
    kept = SideFile(tmp_path / "out" / ".apixo-batch.sqlite").read()
    assert {k.task_id for k in kept} == {e.data["task_id"] for e in lost}

    monkeypatch.setattr(Reconcile, "sync", real_sync)  # room again
    again = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert again.exit_code == ExitCode.OK, again.stop_reason
    stats = sim.stats()
    assert stats["distinct_inputs"] == 60
    assert stats["duplicate_submits"] == 0  # before issue 30: one per lost id
    assert not side.exists()
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 60 and {e["state"] for e in manifest} == {"done"}
    adopted = {e["id"]: e for e in manifest if e["id"] in {w.job_id for w in lost}}
    assert {e["task_id"] for e in adopted.values()} == {w.data["task_id"] for w in lost}


async def test_a_disk_full_for_the_journal_and_the_side_file_loses_no_paid_id(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills once the run has started: the journal refuses every write (ENOSPC)
    and no file may grow. The side file's space was reserved at start-up, so every paid
    id the journal refused is kept there all the same: 0 ids lost, and the next run
    submits nothing twice. (Before the space was reserved, appending to the side file
    failed too: the ids were only printed, and the next run paid for them again.)"""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(60))
    side = tmp_path / "out" / ".apixo-batch.sqlite.unrecorded"
    real_sync = Reconcile.sync
    refused: list[str] = []

    def sync_then_fill(self: Journal, *args: Any, **kw: Any) -> Any:
        result = real_sync(self, *args, **kw)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 1}")
        refused.extend(disk_full_for(side, monkeypatch))  # the side file's disk too
        return result

    monkeypatch.setattr(Reconcile, "sync", sync_then_fill)
    events: list[Any] = []
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, on_event=events.append)
    assert result.exit_code == ExitCode.IO_ERROR
    lost = [e for e in events if e.kind == "warning" and "task_id" in e.data]
    assert lost, "the journal took every id: the test proves nothing"
    assert all("the next run follows it" in w.data["message"] for w in lost), [
        w.data["message"] for w in lost
    ]
    assert not any("keep this line" in w.data["message"] for w in lost)
    kept = SideFile(tmp_path / "out" / ".apixo-batch.sqlite").read()
    assert {k.task_id for k in kept} == {e.data["task_id"] for e in lost}
    assert refused == []  # no write had to grow the side file

    monkeypatch.undo()  # room again
    again = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert again.exit_code == ExitCode.OK, again.stop_reason
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0 and stats["distinct_inputs"] == 60
    assert stats["submits_accepted"] == 60  # each job paid once over both runs
    assert not side.exists()
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 60 and {e["state"] for e in manifest} == {"done"}
    by_id = {e["id"]: e["task_id"] for e in manifest}
    assert {by_id[w.job_id] for w in lost} == {w.data["task_id"] for w in lost}


async def test_an_adopted_task_is_followed_and_downloaded_never_submitted(
    simulator, tmp_path: Path
) -> None:
    """A task paid outside the journal (created here straight on the API): `adopt` asks
    APIXO about it (one status request) and journals it, then `download` follows it and
    lands its file, and `run` submits only the other job."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    state = tmp_path / "out" / ".apixo-batch.sqlite"
    journal = Journal(state)
    journal.reconcile(jobs_of(load_campaign(job_file)), 1000.0, retry_failed=False)
    row = journal.get("job-0000")
    journal.close()
    assert row is not None
    async with aiohttp.ClientSession() as http:
        answer = await http.post(
            f"{sim.base_url}/generateTask/{row.model}",
            json={"request_type": "async", "provider": row.provider, "input": row.input},
            headers={"Authorization": f"Bearer {SIM_KEY}"},
        )
        task_id = (await answer.json())["data"]["taskId"]
    before = sim.stats()["requests_total"]
    adopted = await run_cli(sim, "adopt", str(job_file), "job-0000", task_id)
    assert adopted.code == 0, adopted.stderr
    assert sim.stats()["requests_total"] == before + 1  # its status, nothing submitted
    fetched = await run_cli(sim, "download", str(job_file), "--time-scale", "0.01")
    assert fetched.code == 1, fetched.stderr  # job-0001 was never submitted: not done
    assert (tmp_path / "out" / "job-0000.mp4").exists()
    ran = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")
    assert ran.code == 0, ran.stderr
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0 and stats["distinct_inputs"] == 2
    assert {e["id"]: e["task_id"] for e in read_manifest(tmp_path / "out")}["job-0000"] == task_id
