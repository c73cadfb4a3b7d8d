"""review.html in a real browser (issue 23): Debian's Chromium driven by Playwright, on the
page a finished simulator campaign leaves. Skipped, with the one-line reason in the run's
header, where no Chromium is found."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from browser import chromium_path, why_no_browser
from e2e import ALL_MODES, read_manifest, run_cli, write_campaign

from apixo_batch.journal import Journal, NewJob

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
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 900})
            tab.dialogs = []  # type: ignore[attr-defined]

            async def dialog(d: Any) -> None:
                tab.dialogs.append(d.message)  # type: ignore[attr-defined]
                await d.dismiss()

            tab.on("dialog", dialog)
            yield tab
        finally:
            await browser.close()


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
    """100,000 jobs: the page draws cards as the reader scrolls rather than 100,000 at once,
    and search still reaches every job (bench/review_large.py times the writing)."""
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
    await page.mouse.wheel(0, 20_000)
    await page.wait_for_function(f"document.querySelectorAll('article.card').length > {drawn}")
    await page.fill("#search", "scene 99999")
    assert [await c.get_attribute("data-id") for c in await cards.all()] == ["job-099999"]
