"""review.html in a real browser (issues 23 and 32): Debian's Chromium driven by Playwright, on the
page a finished simulator campaign leaves. Skipped, with the one-line reason in the run's
header, where no Chromium is found."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from browser import browser_page, why_no_browser
from e2e import ALL_MODES, read_manifest, run_cli, write_campaign
from test_review import campaign_journal

from apixo_batch.journal import Journal, NewJob, RunRecord, Totals, last_runs
from apixo_batch.journal.runs import keep_run
from apixo_batch.reports.review import write_review

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

FAST = ["--time-scale", "0.01", "--json"]
NASTY = (
    "a lake <script>window.pwned = 1; alert('x')</script> \"quoted\" & 'single' "
    "<img src=x onerror=alert(2)>"
)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "review.png"


def _jobs() -> list[dict[str, Any]]:
    jobs = [dict(j) for j in ALL_MODES]
    jobs.append(
        {
            "id": "nasty",
            "model": "kling-2-6",
            "input": {"mode": "text-to-video", "prompt": NASTY, "duration": 5, "sound": False},
        }
    )
    jobs.append(
        {
            "id": "refused",
            "model": "kling-2-6",
            "input": {
                "mode": "text-to-video",
                "prompt": "a forbidden-word scene",
                "duration": 10,
                "sound": False,
                "aspect_ratio": "9:16",
            },
        }
    )
    return jobs  # fmt: skip


@pytest.fixture
async def page():
    async with browser_page() as tab:
        yield tab


async def test_a_finished_campaign_reads_plays_filters_and_runs_no_script(
    simulator, tmp_path: Path, page: Any
) -> None:
    """Every job's card, a video that plays (its metadata read from the simulator's
    playable result), the failed job at the top with its code and the retry command,
    filters and search that change what is shown, and a prompt holding <script> and
    quotes shown as text, never run."""
    sim = await simulator(time_scale=0.01, file_size=100_000)
    jobs = _jobs()
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr  # the refused job failed
    out = tmp_path / "out"
    review = out / "review.html"
    assert res.summary["review"] == str(review)
    await page.goto(review.as_uri())
    cards = page.locator("article.card")
    assert await cards.count() == len(jobs)
    assert [await c.get_attribute("data-id") for c in await cards.all()] == [j["id"] for j in jobs]

    # A video plays: its metadata is read, and it is as long as the job asked.
    first = page.locator('article[data-id="k26-t2v-sound"] video')
    await first.evaluate(
        "v => new Promise(ok => v.readyState >= 1 ? ok() : v.onloadedmetadata = ok)"
    )
    ready, duration = await first.evaluate("v => [v.readyState, v.duration]")
    assert ready >= 1 and abs(duration - 5) < 0.2
    await first.evaluate("v => { v.muted = true; return v.play(); }")
    await page.wait_for_function(
        "document.querySelector('article[data-id=\"k26-t2v-sound\"] video').currentTime > 0.2"
    )

    attention = page.locator("#attention")
    assert "SensitiveContentDetected x1" in await attention.inner_text()
    assert f"apixo-batch run {job_file} --retry-failed" in await attention.inner_text()

    await page.select_option("#state", "failed")
    assert [await c.get_attribute("data-id") for c in await cards.all()] == ["refused"]
    await page.select_option("#state", "")
    await page.select_option("#model", "wan-2-5")
    assert {await c.get_attribute("data-id") for c in await cards.all()} == {
        j["id"] for j in jobs if j["model"] == "wan-2-5"
    }
    await page.select_option("#model", "")
    await page.fill("#search", "QUOTED")
    assert [await c.get_attribute("data-id") for c in await cards.all()] == ["nasty"]

    # The nasty prompt is text on the page; nothing of it ran.
    shown = await page.locator('article[data-id="nasty"] .prompt').inner_text()
    assert shown == NASTY
    assert await page.evaluate("window.pwned") is None
    assert page.dialogs == [] and await page.locator("article img").count() == 0

    await page.fill("#search", "")
    await page.select_option("#sort", "gen-desc")
    generated = {e["id"]: e["cost_time_ms"] for e in read_manifest(out)}
    order = [await c.get_attribute("data-id") for c in await cards.all()]
    times = [generated[i] or -1 for i in order]
    assert times == sorted(times, reverse=True)

    await page.select_option("#sort", "file")
    target = SCREENSHOT if os.environ.get("APIXO_UPDATE_SCREENSHOT") else tmp_path / "review.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(target), full_page=False)
    assert target.stat().st_size > 10_000


async def test_a_hundred_thousand_jobs_stay_one_usable_page(tmp_path: Path, page: Any) -> None:
    """100,000 jobs: the page draws only the cards near the screen (a window that moves as
    the reader scrolls) rather than 100,000 at once, and search still reaches every job
    (bench/review_large.py times the writing)."""
    from apixo_batch.reports.review import write_review

    journal = Journal(tmp_path / "j.sqlite", lock=False)
    inp = {"mode": "text-to-video", "duration": 5, "sound": False}
    journal.sync(
        (
            NewJob(f"job-{i:06d}", i, "kling-2-6", "auto",
                   json.dumps({**inp, "prompt": f"scene {i}"}), f"h{i}", f"job-{i:06d}.mp4", 0.3)
            for i in range(100_000)
        ),
        time.time(),
    )  # fmt: skip
    path = write_review(journal.iter_all(), tmp_path, name="big", job_file="big.yaml")
    journal.close()
    await page.goto(path.as_uri())
    cards = page.locator("article.card")
    drawn = await cards.count()
    assert 0 < drawn <= 200
    assert await page.evaluate("JOBS.length") == 100_000
    first = await cards.first.get_attribute("data-id")
    await page.mouse.wheel(0, 200_000)
    # A window on the list: far down, other cards are drawn, never more of them.
    await page.wait_for_function(
        f"document.querySelector('article.card').dataset.id !== {json.dumps(first)}"
    )
    assert 0 < await cards.count() <= 200
    await page.fill("#search", "scene 99999")
    assert [await c.get_attribute("data-id") for c in await cards.all()] == ["job-099999"]


async def _fact(page: Any, key: str) -> str:
    return str(await page.locator(f'#facts [data-fact="{key}"]').inner_text())


async def _card(page: Any, job_id: str) -> str:
    return str(await page.locator(f'article[data-id="{job_id}"]').inner_text())


async def test_the_page_says_where_each_job_is_and_the_command_that_moves_it(
    tmp_path: Path, page: Any
) -> None:
    """What a person reads: an expired card says expired and the command that generates it
    again (no hours left); Needs attention holds the failed, expired and given-up jobs,
    each with its command; each pending card says why it waits; the spend is known prices
    plus the jobs of unknown price; "last run" is the run that worked, not the rerun that
    found nothing to do; sound, cfg_scale and linked, lazy source thumbnails, and a
    javascript: URL never becomes a link."""
    journal = campaign_journal(tmp_path)
    keep_run(journal, RunRecord(time.time() - 120, 42.5, 6, 12))
    keep_run(journal, RunRecord(time.time() - 60, 0.0, 0, 0))
    path = write_review(
        journal.iter_all(),
        tmp_path,
        name="night",
        job_file="my jobs.yaml",
        totals=Totals(journal.totals()),
        runs=last_runs(journal),
    )
    journal.close()
    await page.goto(path.as_uri())

    expired = await _card(page, "expired")
    assert "expired: its URL expired before it was downloaded" in expired
    assert "apixo-batch run 'my jobs.yaml' --retry-expired" in expired
    assert "h left" not in expired

    attention = page.locator("#attention")
    assert (await attention.locator("h2").inner_text()) == (
        "Needs attention: 1 failed, 1 expired, 1 download given up"
    )
    assert "SensitiveContentDetected x1" in await attention.inner_text()
    failed = await attention.locator('p[data-kind="failed"]').inner_text()
    assert "apixo-batch run 'my jobs.yaml' --retry-failed" in failed
    group = await attention.locator('[data-kind="expired"]').inner_text()
    assert "expired x1" in group and "expired" in group.split("\n")[2]
    assert "apixo-batch run 'my jobs.yaml' --retry-expired" in group
    group = await attention.locator('[data-kind="download"]').inner_text()
    assert "download given up x1" in group and "gaveup" in group
    assert "h left before its URL expires" in group
    assert "apixo-batch download 'my jobs.yaml'" in group

    assert "Never submitted: apixo-batch run 'my jobs.yaml' submits it." in await _card(
        page, "never"
    )
    flight = await _card(page, "flight")
    assert "In flight: task t-flight is paid and followed on APIXO." in flight
    gaveup = await _card(page, "gaveup")
    assert "Paid, download given up: 7.1 h left before its URL expires." in gaveup
    assert "apixo-batch download 'my jobs.yaml' fetches it, not charged again." in gaveup
    assert [
        await page.locator(f'article[data-id="{i}"]').get_attribute("data-wait")
        for i in ("never", "flight", "gaveup", "done")
    ] == ["never", "flight", "download", None]

    assert await _fact(page, "spend") == "spent ~$1.50 at known prices + 1 job of unknown price"
    assert (await _fact(page, "last-run")).endswith("took 42.5 s, 6 submitted")
    assert (await _fact(page, "latest-run")).endswith(": nothing to do")

    done = page.locator('article[data-id="done"]')
    assert "sound\non\ncfg_scale\n0.5" in await done.locator("dl").inner_text()
    never = page.locator('article[data-id="never"] dl')
    assert "sound\noff\ncfg_scale\n0" in await never.inner_text()
    link = done.locator(".sources a")
    assert await link.get_attribute("href") == "https://i.test/a.jpg"
    assert await link.get_attribute("target") == "_blank"
    img = link.locator("img")
    assert (await img.get_attribute("loading"), await img.get_attribute("src")) == (
        "lazy",
        "https://i.test/a.jpg",
    )
    bad = page.locator('article[data-id="flight"] .sources')
    assert await bad.locator("a").count() == 0
    assert await bad.inner_text() == "source image 1: javascript:alert(1)"
    assert page.dialogs == []


async def test_a_queued_job_says_the_budget_or_the_stop_that_left_it(
    tmp_path: Path, page: Any
) -> None:
    """After a run that stopped at its budget, a job never submitted says it did not fit
    that budget; after one that was interrupted, that the run stopped submitting; before
    any run kept, only that it was never submitted."""
    journal = campaign_journal(tmp_path)
    said = []
    for record in (
        None,
        RunRecord(time.time(), 5.0, 2, 4, stops=("budget",), budget_usd=1.0),
        RunRecord(time.time(), 5.0, 2, 4, stops=("interrupted",)),
    ):
        if record is not None:
            keep_run(journal, record)
        path = write_review(
            journal.iter_all(), tmp_path, name="n", job_file="c.yaml", runs=last_runs(journal)
        )
        await page.goto(path.as_uri())
        said.append(await page.locator('article[data-id="never"] .why').inner_text())
    journal.close()
    assert said == [
        "Never submitted: apixo-batch run c.yaml submits it.",
        "Not submitted: it did not fit the last run's budget ($1.00). A larger --budget, "
        "or none: apixo-batch run c.yaml",
        "Not submitted: the last run stopped submitting (interrupted). Once that is fixed, "
        "apixo-batch run c.yaml goes on.",
    ]
