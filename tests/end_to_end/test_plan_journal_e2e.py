"""End to end: `plan` on a campaign that has run reads its journal and says what `run`
would do now: nothing to submit once done; every job paid again once renamed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]


async def test_plan_reads_the_journal_of_a_finished_and_a_renamed_campaign(
    simulator, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01, results_per_task=1)
    jobs = simple_jobs(4)
    job_file = write_campaign(tmp_path, jobs)
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr

    # Finished: nothing to submit, $0; today's keys are kept.
    done = await run_cli(sim, "plan", str(job_file), "--json")
    assert done.code == 0, done.stderr
    data = json.loads(done.stdout)
    # The table, cost and time are what run would do now: nothing; the file's are beside.
    assert (data["jobs"], data["cost"]["known_usd"], data["groups"]) == (0, 0, [])
    assert data["wall_time"]["seconds"] == 0
    assert data["file"]["jobs"] == 4 and data["file"]["known_usd"] > 0
    journal = data["journal"]
    assert journal["path"] == str(tmp_path / "out" / ".apixo-batch.sqlite")
    assert journal["to_submit"] == {
        "jobs": 0,
        "known_usd": 0,
        "unknown_jobs": 0,
        "new": 0,
        "new_ids": [],
    }
    assert (journal["done"], journal["orphaned"], journal["pay_again"]["jobs"]) == (4, 0, 0)
    text = await run_cli(sim, "plan", str(job_file))
    assert "submit        0 jobs for $0.00" in text.stdout, text.stdout
    assert "Nothing to submit: estimated cost $0.00" in text.stdout, text.stdout
    assert "0 jobs to submit now, of the 4 in" in text.stdout, text.stdout

    # Every job renamed: 4 new, 4 orphaned, paid again; --budget says how many fit.
    renamed = [{**job, "id": f"new-{job['id']}"} for job in jobs]
    write_campaign(tmp_path, renamed)
    one_job = data["file"]["known_usd"] / 4
    spent = journal["spent_usd"]
    again = await run_cli(
        sim, "plan", str(job_file), "--json", "--budget", f"{spent + 2.5 * one_job:.4f}"
    )
    assert again.code == 0, again.stderr
    journal = json.loads(again.stdout)["journal"]
    assert journal["to_submit"]["jobs"] == 4 and journal["to_submit"]["new"] == 4
    assert journal["to_submit"]["known_usd"] == pytest.approx(4 * one_job, abs=1e-3)
    assert (journal["orphaned"], journal["orphaned_paid"]) == (4, 4)
    assert journal["pay_again"]["jobs"] == 4
    assert journal["pay_again"]["usd"] == pytest.approx(4 * one_job, abs=1e-3)
    assert journal["budget"]["fit_jobs"] == 2
    text = await run_cli(sim, "plan", str(job_file), "--budget", f"{spent + 2.5 * one_job:.4f}")
    assert "run would pay for 4 jobs again" in text.stdout, text.stdout
    assert "2 of the 4 jobs fit" in text.stdout, text.stdout
    assert sim.stats()["submits_accepted"] == 4  # plan sends nothing


async def test_plan_out_and_state_name_the_run_folder(tmp_path: Path, simulator) -> None:
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    other = tmp_path / "elsewhere"
    first = await run_cli(sim, "run", str(job_file), "--out", str(other), *FAST)
    assert first.code == 0, first.stderr
    shown = await run_cli(sim, "plan", str(job_file), "--out", str(other))
    assert shown.code == 0, shown.stderr
    assert f"Output folder:  {other}" in shown.stdout
    assert f"Journal {other / '.apixo-batch.sqlite'}: run would now" in shown.stdout
    state = await run_cli(
        sim, "plan", str(job_file), "--json", "--state", str(other / ".apixo-batch.sqlite")
    )
    assert json.loads(state.stdout)["journal"]["done"] == 2
    # No journal where the file says: as today, no journal figures.
    plain = await run_cli(sim, "plan", str(job_file), "--json")
    assert json.loads(plain.stdout)["journal"] is None


async def test_plan_after_a_new_matrix_tells_what_run_then_does(simulator, tmp_path: Path) -> None:
    """A finished campaign gets a top-level `matrix` (every id renamed), a hand-made file
    at one new name, and loses a done file. `plan` says, before anything is paid: 3
    orphaned (named, paid for), the full new cost (no silent re-pay), 1 job refused for
    its taken name, 2 to submit, 1 done file to fetch again, how far --budget goes. The
    `run` that follows does exactly that."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    jobs = simple_jobs(3)
    job_file = write_campaign(tmp_path, jobs)
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    before = json.loads((await run_cli(sim, "plan", str(job_file), "--json")).stdout)
    one_job = before["file"]["known_usd"] / 3
    spent = before["journal"]["spent_usd"]

    write_campaign(tmp_path, jobs, matrix={"duration": [5]})
    cut = out / "job-0000-5.mp4"
    cut.write_bytes(b"my hand-made cut")
    (out / "job-0001.mp4").unlink()
    budget = ["--budget", f"{spent + 1.5 * one_job:.4f}"]
    res = await run_cli(sim, "plan", str(job_file), "--json", *budget)
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    journal = data["journal"]
    assert (journal["orphaned"], journal["orphaned_paid"]) == (3, 3)
    assert journal["orphaned_ids"] == ["job-0000", "job-0001", "job-0002"]
    assert journal["pay_again"]["usd"] == pytest.approx(3 * one_job, abs=1e-3)
    assert journal["to_submit"]["new"] == 3 and journal["refused"] == 1
    assert journal["clashes"] == [
        {"job": "job-0000-5", "file": str(cut), "holder": None, "result": 1}
    ]
    assert journal["to_submit"]["jobs"] == 2
    assert journal["to_submit"]["known_usd"] == pytest.approx(2 * one_job, abs=1e-3)
    assert journal["off_disk"]["jobs"] == 1
    assert journal["off_disk"]["problems"][0]["job"] == "job-0001"
    assert journal["budget"]["fit_jobs"] == 1
    # The table, cost and time are the 2 jobs run would submit; the file's 3 beside.
    assert data["jobs"] == 2 and data["file"]["jobs"] == 3
    assert data["cost"]["known_usd"] == pytest.approx(2 * one_job, abs=1e-3)
    assert [g["jobs"] for g in data["groups"]] == [2] and data["wall_time"]["seconds"] > 0

    text = (await run_cli(sim, "plan", str(job_file), *budget)).stdout
    assert "orphaned      3 in the journal" in text and "job-0000, job-0001, job-0002" in text
    assert "run would pay for 3 jobs again" in text, text
    assert f"job job-0000-5: {cut} is a file no job of this campaign wrote" in text, text
    assert "fetch again   1 done jobs" in text and "job-0001" in text, text
    assert "1 of the 2 jobs fit" in text, text
    assert sim.stats()["submits_accepted"] == 3  # plan sends nothing

    run = await run_cli(sim, "run", str(job_file), *FAST)
    assert run.code == 1, run.stderr  # the refused job is failed
    assert sim.stats()["submits_accepted"] == 3 + 2
    assert cut.read_bytes() == b"my hand-made cut"
    by_id = {e["id"]: e for e in read_manifest(out)}
    assert by_id["job-0000-5"]["fail_code"] == "OUTPUT_EXISTS"
    assert by_id["job-0001"]["state"] == "done" and (out / "job-0001.mp4").is_file()


async def test_plan_before_the_first_run_lists_a_hand_made_file_in_the_way(
    simulator, tmp_path: Path
) -> None:
    """No journal yet, but out/hero.mp4 is the user's cut: `plan` says run would refuse
    the job `hero` before its submit and prices the other two; `run` then does so."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    jobs = simple_jobs(3)
    jobs[0]["id"] = "hero"
    job_file = write_campaign(tmp_path, jobs)
    out = tmp_path / "out"
    out.mkdir()
    cut = out / "hero.mp4"
    cut.write_bytes(b"my hand-made cut")
    res = await run_cli(sim, "plan", str(job_file), "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["jobs"], data["file"]["jobs"]) == (2, 3)
    journal = data["journal"]
    assert journal["path"] is None and journal["refused"] == 1
    assert journal["clashes"] == [{"job": "hero", "file": str(cut), "holder": None, "result": 1}]
    text = (await run_cli(sim, "plan", str(job_file))).stdout
    assert "No journal yet, files in the output folder: run would now" in text, text
    assert f"job hero: {cut} is a file no job of this campaign wrote" in text, text
    run = await run_cli(sim, "run", str(job_file), *FAST)
    assert run.code == 1 and sim.stats()["submits_accepted"] == 2
    assert cut.read_bytes() == b"my hand-made cut"
