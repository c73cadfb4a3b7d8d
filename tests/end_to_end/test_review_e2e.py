"""The review page a real run leaves, read in Chromium (issue 32): an expired job's card,
and "last run" after a rerun that had nothing to do. Skipped where no Chromium is found."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import browser_page, why_no_browser
from e2e import read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

FAST = ["--time-scale", "0.01", "--json"]


async def test_an_expired_job_says_expired_and_how_to_generate_it_again(
    simulator, tmp_path: Path
) -> None:
    """Result URLs that answer 410 before the download: the cards say expired and name
    the command that generates the videos again, never the hours their URLs have left
    (the journaled expiry is still hours ahead); Needs attention lists them."""
    sim = await simulator(time_scale=0.01, expiry_s=0.001)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    out = tmp_path / "out"
    assert {e["state"] for e in read_manifest(out)} == {"expired"}
    async with browser_page() as page:
        await page.goto((out / "review.html").as_uri())
        card = await page.locator('article[data-id="job-0000"]').inner_text()
        assert "expired: its URL expired before it was downloaded" in card
        assert re.search(r"apixo-batch run \S*campaign\.yaml --retry-expired", card), card
        assert "h left" not in card
        group = await page.locator('#attention [data-kind="expired"]').inner_text()
        assert "expired x2" in group and "job-0000, job-0001" in group
        assert "--retry-expired" in group


async def test_last_run_is_the_run_that_worked_not_the_rerun_with_nothing_to_do(
    simulator, tmp_path: Path
) -> None:
    """A run that submits two jobs, then the same command again (nothing to do, no
    request): the page, written by the rerun and by `review`, says the first run's time
    and submits, and that a later run found nothing to do; never "took 0.0 s"."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    took = first.summary["wall_s"]
    assert took > 0.05
    requests = sim.stats()["api_requests_total"]
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 0 and sim.stats()["api_requests_total"] == requests
    review = tmp_path / "out" / "review.html"
    for written_by in ("rerun", "review"):
        if written_by == "review":
            assert (await run_cli(sim, "review", str(job_file))).code == 0
        async with browser_page() as page:
            await page.goto(review.as_uri())
            last = await page.locator('#facts [data-fact="last-run"]').inner_text()
            shown = re.search(r"took ([0-9.]+) s, 2 submitted$", last)
            assert shown is not None, (written_by, last)
            assert abs(float(shown.group(1)) - took) < 0.2, (written_by, last, took)
            latest = await page.locator('#facts [data-fact="latest-run"]').inner_text()
            assert latest.endswith(": nothing to do"), (written_by, latest)
