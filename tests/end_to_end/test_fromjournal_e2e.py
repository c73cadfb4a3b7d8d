"""End to end: `status`, `download` and `review` from the journal alone, when the job
file cannot be read (invalid, or gone) while paid tasks are still in flight."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from e2e import assert_byte_exact, read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]


async def _interrupted(simulator, tmp_path: Path, *, rows: str | None = None):  # type: ignore[no-untyped-def]
    """Three jobs submitted and left in flight by a short --max-wait (exit 1); ``rows``:
    the jobs in a ``jobs_file`` of that name (``.jsonl`` or ``.csv``) beside the job file."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 2.0))
    if rows:
        if rows.endswith(".csv"):
            lines = "id,model,mode,prompt,duration,sound\n" + "".join(
                f"{j['id']},{j['model']},text-to-video,{j['input']['prompt']},5,false\n"
                for j in simple_jobs(3)
            )
        else:
            lines = "".join(json.dumps(job) + "\n" for job in simple_jobs(3))
        (tmp_path / rows).write_text(lines, encoding="utf-8")
        job_file = tmp_path / "campaign.yaml"
        job_file.write_text(
            f"name: e2e\noutput: {{dir: out}}\njobs_file: {rows}\n", encoding="utf-8"
        )
    else:
        job_file = write_campaign(tmp_path, simple_jobs(3))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--json", "--max-wait", "0.005")
    assert res.code == 1, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert {e["state"] for e in manifest} == {"pending"} and all(e["task_id"] for e in manifest)
    return sim, job_file


async def _recover(sim, job_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    journal = out / ".apixo-batch.sqlite"
    alone = f"working from the journal {journal} alone"

    status = await run_cli(sim, "status", str(job_file))
    assert status.code in (0, 1), status.stderr
    assert alone in status.stderr and "cannot be read (" in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1, status.stderr
    assert "3 task(s) in flight" in status.stdout, status.stdout

    # `run` still refuses a file it cannot read: it would submit from it.
    run = await run_cli(sim, "run", str(job_file), *FAST)
    assert run.code == 2, run.stderr
    assert sim.stats()["submits_accepted"] == 3

    await asyncio.sleep(2.0)
    dl = await run_cli(sim, "download", str(job_file), *FAST, "--json")
    assert dl.code == 0, dl.stderr
    assert alone in dl.stderr
    manifest = read_manifest(out)
    assert [e["id"] for e in manifest] == [j["id"] for j in simple_jobs(3)]
    for entry in manifest:
        assert entry["state"] == "done", entry
        assert "in_job_file" not in entry  # the journal's jobs kept as they were
        assert_byte_exact(sim, out, entry)
    assert sim.stats()["submits_accepted"] == 3  # nothing submitted again

    (out / "review.html").unlink()
    review = await run_cli(sim, "review", str(job_file))
    assert review.code == 0, review.stderr
    assert alone in review.stderr
    page = (out / "review.html").read_text(encoding="utf-8")
    assert all(j["id"] in page for j in simple_jobs(3))


async def test_invalid_job_file_status_download_review_from_journal(
    simulator, tmp_path: Path
) -> None:
    """The job file made invalid with tasks in flight: the paid results are still told,
    fetched byte-exact (0 new submits) and reviewed; `run` refuses the file (exit 2)."""
    sim, job_file = await _interrupted(simulator, tmp_path)
    text = job_file.read_text(encoding="utf-8")
    job_file.write_text(text.replace("duration: 5", "duration: 7", 1), encoding="utf-8")
    await _recover(sim, job_file, tmp_path)


async def test_missing_job_file_status_download_review_from_journal(
    simulator, tmp_path: Path
) -> None:
    """The job file gone with tasks in flight: the same, from the journal found beside it."""
    sim, job_file = await _interrupted(simulator, tmp_path)
    job_file.unlink()
    await _recover(sim, job_file, tmp_path)


@pytest.mark.parametrize("rows", ["jobs.jsonl", "prompts.csv"])
async def test_moved_jobs_file_status_download_review_from_journal(
    simulator, tmp_path: Path, rows: str
) -> None:
    """The jobs_file (JSONL, or a CSV) moved away with tasks in flight: the same, from
    the journal."""
    sim, job_file = await _interrupted(simulator, tmp_path, rows=rows)
    (tmp_path / rows).rename(tmp_path / f"elsewhere-{rows}")
    await _recover(sim, job_file, tmp_path)


async def test_no_journal_beside_an_unreadable_job_file_says_so(simulator, tmp_path: Path) -> None:
    """No journal to work from: one line saying where it looked, exit 2, nothing sent."""
    sim = await simulator(time_scale=0.01)
    job_file = tmp_path / "gone.yaml"
    res = await run_cli(sim, "download", str(job_file), *FAST)
    assert res.code == 2, res.stderr
    assert "no journal was found" in res.stderr and "--state" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sim.stats()["requests_total"] == 0


async def test_status_tells_jobs_added_and_removed_since_the_last_run(
    simulator, tmp_path: Path
) -> None:
    """`status` says the file is unchanged after a run; once edited, how many jobs were
    added and removed, with their ids (at most 5 each), and sends no request."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(4)
    job_file = write_campaign(tmp_path, jobs)
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    before = sim.stats()["requests_total"]
    same = await run_cli(sim, "status", str(job_file))
    assert same.code == 0, same.stderr
    assert "job file: unchanged since the last run" in same.stdout, same.stdout

    edited = jobs[1:] + simple_jobs(7, prefix="new")
    write_campaign(tmp_path, edited)
    text = await run_cli(sim, "status", str(job_file))
    assert text.code == 0, text.stderr
    assert "7 job(s) added (new-0000, new-0001, new-0002, new-0003, new-0004, +2 more)" in (
        text.stdout
    ), text.stdout
    assert "1 job(s) removed (job-0000)" in text.stdout, text.stdout
    doc = json.loads((await run_cli(sim, "status", str(job_file), "--json")).stdout)
    assert doc["file_changes"] == {
        "unchanged": False,
        "added": 7,
        "added_ids": [f"new-{i:04d}" for i in range(5)],
        "removed": 1,
        "removed_ids": ["job-0000"],
    }
    assert sim.stats()["requests_total"] == before


async def test_a_state_journal_elsewhere_needs_out_to_find_its_results(
    simulator, tmp_path: Path
) -> None:
    """--state names the journal; kept apart from a local output, the output folder is
    not known without the file: `review` asks for --out in one line (exit 2), then works."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    state = str(tmp_path / "journal.sqlite")
    assert (await run_cli(sim, "run", str(job_file), *FAST, "--state", state)).code == 0
    job_file.unlink()
    status = await run_cli(sim, "status", str(job_file), "--state", state)
    assert status.code == 0, status.stderr
    assert f"working from the journal {state} alone" in status.stderr
    review = await run_cli(sim, "review", str(job_file), "--state", state)
    assert review.code == 2, review.stderr
    assert "give --out" in review.stderr and len(review.stderr.strip().splitlines()) == 1
    out = str(tmp_path / "out")
    review = await run_cli(sim, "review", str(job_file), "--state", state, "--out", out)
    assert review.code == 0, review.stderr
    assert (tmp_path / "out" / "review.html").is_file()


async def test_status_check_files_lists_done_files_gone_or_resized(
    simulator, tmp_path: Path
) -> None:
    """`status --check-files` stats every done job's files: one deleted and one damaged
    (8 bytes of garbage) are listed with the job id and what is wrong; without the option
    `status` does not read the disk. No request either way."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    before = sim.stats()["requests_total"]
    out = tmp_path / "out"
    whole = await run_cli(sim, "status", str(job_file), "--check-files")
    assert whole.code == 0, whole.stderr
    assert "on disk: the files of all 3 done job(s) are there, with their sizes" in whole.stdout

    (out / "job-0000.mp4").unlink()
    (out / "job-0001.mp4").write_bytes(b"garbage!")
    plain = await run_cli(sim, "status", str(job_file))
    assert "on disk" not in plain.stdout, plain.stdout
    told = await run_cli(sim, "status", str(job_file), "--check-files")
    assert told.code == 0, told.stderr
    assert "on disk: 2 of 3 done job(s) not as journaled" in told.stdout, told.stdout
    assert f"missing: job job-0000: {out / 'job-0000.mp4'}: not on disk" in told.stdout
    assert f"size: job job-0001: {out / 'job-0001.mp4'}: 8 bytes on disk" in told.stdout
    doc = json.loads(
        (await run_cli(sim, "status", str(job_file), "--check-files", "--json")).stdout
    )
    assert (doc["disk"]["checked"], doc["disk"]["bad_jobs"]) == (3, 2), doc["disk"]
    assert doc["disk"]["problems"][0].startswith("missing: job job-0000"), doc["disk"]
    no_check = json.loads((await run_cli(sim, "status", str(job_file), "--json")).stdout)
    assert no_check["disk"] is None
    assert sim.stats()["requests_total"] == before
