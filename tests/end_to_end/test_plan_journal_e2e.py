"""End to end: `plan` on a campaign that has run reads its journal and says what `run`
would do now: nothing to submit once done; every job paid again once renamed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import run_cli, simple_jobs, write_campaign

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
    assert data["jobs"] == 4 and data["cost"]["known_usd"] > 0
    journal = data["journal"]
    assert journal["path"] == str(tmp_path / "out" / ".apixo-batch.sqlite")
    assert journal["to_submit"] == {"jobs": 0, "known_usd": 0, "unknown_jobs": 0, "new": 0}
    assert (journal["done"], journal["orphaned"], journal["pay_again"]["jobs"]) == (4, 0, 0)
    text = await run_cli(sim, "plan", str(job_file))
    assert "submit        0 jobs for $0.00" in text.stdout, text.stdout

    # Every job renamed: 4 new, 4 orphaned, paid again; --budget says how many fit.
    renamed = [{**job, "id": f"new-{job['id']}"} for job in jobs]
    write_campaign(tmp_path, renamed)
    one_job = data["cost"]["known_usd"] / 4
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
