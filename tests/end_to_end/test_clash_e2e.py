"""End to end: a file the journal did not write is never written over, and a job whose
name another job's landed file holds is refused before it is paid."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from e2e import assert_byte_exact, read_manifest, run_cli, sha256_of, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]


async def test_a_hand_made_file_is_never_written_over_nor_its_job_paid(
    simulator, tmp_path: Path
) -> None:
    """out/hero.mp4 is the user's cut: the job `hero` is not submitted (failed,
    OUTPUT_EXISTS, one warning naming the job and the path), the file is byte for byte
    what it was, the other jobs are done; exit 1 (a failed job)."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    jobs = simple_jobs(3)
    jobs[0]["id"] = "hero"
    job_file = write_campaign(tmp_path, jobs)
    out = tmp_path / "out"
    out.mkdir()
    cut = out / "hero.mp4"
    cut.write_bytes(b"my hand-made cut, not a generated clip")

    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    assert cut.read_bytes() == b"my hand-made cut, not a generated clip"
    assert sim.submits_for(jobs[0]["model"], jobs[0]["input"]) == 0
    assert sim.stats()["submits_accepted"] == 2
    warned = [e for e in res.events if e["event"] == "warning" and e.get("job") == "hero"]
    assert len(warned) == 1
    assert str(cut) in warned[0]["message"] and "Move the file away" in warned[0]["message"]
    assert res.summary["counts"]["done"] == 2
    assert res.summary["counts"]["failed"] == 1
    by_id = {e["id"]: e for e in read_manifest(out)}
    assert by_id["hero"]["state"] == "failed"
    assert "Traceback" not in res.stderr

    # Moved away: --retry-failed submits it and lands it.
    cut.rename(tmp_path / "my-cut.mp4")
    again = await run_cli(sim, "run", str(job_file), "--retry-failed", *FAST)
    assert again.code == 0, again.stderr
    assert sim.submits_for(jobs[0]["model"], jobs[0]["input"]) == 1
    assert cut.exists()


async def test_a_job_inserted_above_index_names_is_refused_before_it_is_paid(
    simulator, tmp_path: Path
) -> None:
    """Names from {index}: a job inserted at the top would land on clip-0.mp4, the first
    job's file. It is refused at start-up (0 submits, one warning), the landed files are
    unchanged; before, it was paid and its result left pending."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    output = {"dir": "out", "filename": "clip-{index}.mp4"}
    jobs = simple_jobs(2)
    job_file = write_campaign(tmp_path, jobs, output=output)
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    before = {p.name: sha256_of(p) for p in out.glob("clip-*.mp4")}
    assert set(before) == {"clip-0.mp4", "clip-1.mp4"}

    newcomer = simple_jobs(3, prefix="new")[2]
    write_campaign(tmp_path, [newcomer, *jobs], output=output)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    assert sim.submits_for(newcomer["model"], newcomer["input"]) == 0
    assert sim.stats()["submits_accepted"] == 2
    warned = [e for e in res.events if e["event"] == "warning" and e.get("job") == newcomer["id"]]
    assert len(warned) == 1
    assert "clip-0.mp4" in warned[0]["message"] and "job-0000" in warned[0]["message"]
    assert {p.name: sha256_of(p) for p in out.glob("clip-*.mp4")} == before


async def test_every_result_name_of_a_new_job_is_checked_before_it_is_paid(
    simulator, tmp_path: Path
) -> None:
    """Tasks bring two results (`x.mp4`, `x-2.mp4`). A job added later whose second name
    is a hand-made file is refused at start-up: 0 submits for it, the file untouched.
    Before, only its first name was checked: it was paid, then its result left pending."""
    sim = await simulator(time_scale=0.01, results_per_task=2)
    jobs = simple_jobs(1)
    job_file = write_campaign(tmp_path, jobs)
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    assert sorted(p.name for p in out.glob("*.mp4")) == ["job-0000-2.mp4", "job-0000.mp4"]

    newcomer = {**simple_jobs(2, prefix="b")[1], "id": "b"}
    cut = out / "b-2.mp4"
    cut.write_bytes(b"my hand-made cut")
    write_campaign(tmp_path, [*jobs, newcomer])
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    assert sim.submits_for(newcomer["model"], newcomer["input"]) == 0
    assert sim.stats()["submits_accepted"] == 1
    warned = [e for e in res.events if e["event"] == "warning" and e.get("job") == "b"]
    assert len(warned) == 1 and "its result 2 would land on" in warned[0]["message"]
    assert str(cut) in warned[0]["message"]
    assert cut.read_bytes() == b"my hand-made cut"
    entry = {e["id"]: e for e in read_manifest(out)}["b"]
    assert (entry["state"], entry["fail_code"]) == ("failed", "OUTPUT_EXISTS")


async def test_after_a_crash_a_file_at_a_result_name_is_kept_unless_it_is_the_result(
    simulator, tmp_path: Path
) -> None:
    """A crash after the renames, before the journal recorded them: both jobs are
    `succeeded` with no files journaled. job-0000's file is its own result (the same
    bytes): kept, journaled done. job-0001's name holds someone's file by then: not
    written over (one warning, the job stays succeeded); once it is moved away,
    `download` lands the result. Nothing is submitted again."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    with sqlite3.connect(out / ".apixo-batch.sqlite") as db:
        db.execute("UPDATE jobs SET state='succeeded', files='[]', bytes=NULL, sha256='[]'")
    db.close()
    own = sha256_of(out / "job-0000.mp4")
    theirs = out / "job-0001.mp4"
    theirs.write_bytes(b"someone's file, put there after the crash")

    res = await run_cli(sim, "download", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    assert theirs.read_bytes() == b"someone's file, put there after the crash"
    assert sha256_of(out / "job-0000.mp4") == own
    warned = [e for e in res.events if e["event"] == "warning" and e.get("job") == "job-0001"]
    assert len(warned) == 1 and str(theirs) in warned[0]["message"]
    by_id = {e["id"]: e for e in read_manifest(out)}
    assert by_id["job-0000"]["state"] == "done" and by_id["job-0000"]["sha256"] == [own]
    assert by_id["job-0001"]["state"] != "done"

    theirs.rename(tmp_path / "theirs.mp4")
    again = await run_cli(sim, "download", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    for entry in read_manifest(out):
        assert_byte_exact(sim, out, entry)
    assert sim.stats()["submits_accepted"] == 2
