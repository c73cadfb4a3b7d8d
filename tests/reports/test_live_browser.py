"""``review --serve`` in a real browser (issue 36): Debian's Chromium driven by Playwright
on the live page, beside a run of the real CLI against the simulator. Skipped, with the
one-line reason, where no Chromium is found."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from browser import browser_page, why_no_browser
from e2e import finish, read_manifest, run_cli, simple_jobs, start_cli, write_campaign

from apixo_batch.journal import Journal, NewJob
from apixo_batch.reports.live import ReviewServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

NASTY = (
    "a lake <script>window.pwned = 1; alert('x')</script> \"quoted\" & 'single' "
    "<img src=x onerror=alert(2)>"
)


@pytest.fixture
async def page():
    async with browser_page() as tab:
        yield tab


async def _serve(sim: Any, job_file: Path, *extra: str) -> tuple[Any, str]:
    """``review --serve`` as a user starts it, and the URL it prints."""
    proc = await start_cli(sim, "review", str(job_file), "--serve", *extra)
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert first.startswith("review page: http://127.0.0.1:"), first
    return proc, first.removeprefix("review page: ").strip()


async def _review_of(page: Any, job_id: str) -> str:
    return str(await page.locator(f'article[data-id="{job_id}"]').get_attribute("data-review"))


async def _until_review(page: Any, job_id: str, verdict: str) -> None:
    await page.wait_for_selector(f'article[data-id="{job_id}"][data-review="{verdict}"]')


async def test_decisions_made_live_during_a_run_persist_and_reach_manifest_and_status(
    simulator, tmp_path: Path, page: Any
) -> None:
    """While a run goes on, cards change state in the open page; 3 kept from the keyboard
    (j, y), 2 rejected with a note by the buttons, one more rejected and undone (u); a
    reload shows the same; `run --reroll rejected` submits exactly the 2 rejected jobs and
    the page shows both takes of each; the manifest and `status` carry the decisions."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.6, 0.8))
    job_file = write_campaign(tmp_path, simple_jobs(12))
    out = tmp_path / "out"
    run = await start_cli(sim, "run", str(job_file), "--time-scale", "0.01", "--json",
                          "--max-concurrent", "1")  # fmt: skip
    for _ in range(200):
        if (out / ".apixo-batch.sqlite").exists():
            break
        await asyncio.sleep(0.05)
    server, url = await _serve(sim, job_file, "--reviewer", "tester")
    try:
        await page.goto(url)
        await page.wait_for_selector("article.card")
        assert await page.locator("article.card").count() == 12
        pending_at_open = await page.locator('article[data-state="pending"]').count()
        # Cards change state without a reload, while the run goes on.
        await page.wait_for_function(
            "() => document.querySelectorAll('article[data-state=\"done\"]').length >= 6"
        )
        assert pending_at_open > 6

        for job_id in ("job-0000", "job-0001", "job-0002"):
            await page.keyboard.press("j")
            await page.keyboard.press("y")
            await _until_review(page, job_id, "keep")
        trips = [await page.evaluate("window.lastDecisionMs")]
        for job_id in ("job-0003", "job-0004"):
            card = page.locator(f'article[data-id="{job_id}"]')
            await card.locator(".note-input").fill(f"too dark, {job_id}")
            await card.locator('button[data-act="reject"]').click()
            await _until_review(page, job_id, "reject")
            trips.append(await page.evaluate("window.lastDecisionMs"))
        await page.keyboard.press("j")  # from job-0004 (the last one clicked) to job-0005
        await page.keyboard.press("n")
        await _until_review(page, "job-0005", "reject")
        await page.keyboard.press("u")
        await _until_review(page, "job-0005", "undecided")
        assert run.returncode is None, "the run ended before the decisions: nothing was live"
        print(f"\ndecision round trips in the browser: {', '.join(f'{t:.1f}' for t in trips)} ms")

        await page.reload()
        await page.wait_for_selector("article.card")
        decided = {f"job-{i:04d}": await _review_of(page, f"job-{i:04d}") for i in range(6)}
        assert decided == {
            "job-0000": "keep",
            "job-0001": "keep",
            "job-0002": "keep",
            "job-0003": "reject",
            "job-0004": "reject",
            "job-0005": "undecided",
        }
        note = page.locator('article[data-id="job-0003"] .note')
        assert await note.inner_text() == "too dark, job-0003"
        assert (
            "rejected by tester"
            in await page.locator('article[data-id="job-0003"] .verdict').inner_text()
        )
        fact = page.locator('#facts [data-fact="review"]')
        assert await fact.inner_text() == "3 kept, 2 rejected, 7 undecided"
        await page.select_option("#decision", "reject")
        rejected = [await c.get_attribute("data-id") for c in await page.locator("article").all()]
        assert rejected == ["job-0003", "job-0004"]

        done = await finish(run)
        assert done.code == 0, done.stderr
        # The page follows the run to its end.
        await page.select_option("#decision", "")
        await page.wait_for_function(
            "() => document.querySelectorAll('article[data-state=\"done\"]').length === 12"
        )

        # A new take of exactly the two rejected jobs; the page shows both takes of each.
        created = sim.stats()["tasks_created"]
        reroll = await run_cli(sim, "run", str(job_file), "--reroll", "rejected",
                               "--time-scale", "0.01", "--json")  # fmt: skip
        assert reroll.code == 0, reroll.stderr
        assert sim.stats()["tasks_created"] - created == 2
        for job_id in ("job-0003", "job-0004"):
            takes = page.locator(f'article[data-id="{job_id}"] figure.take')
            await page.wait_for_function(
                f"() => document.querySelectorAll('article[data-id=\"{job_id}\"] video')"
                ".length === 2"
            )
            assert [await t.get_attribute("data-take") for t in await takes.all()] == ["1", "2"]
            assert await _review_of(page, job_id) == "undecided"  # take 2 is not decided yet
            assert "take 1 (rejected)" in await takes.first.inner_text()
        assert await _review_of(page, "job-0000") == "keep"
        assert (out / "job-0003.mp4").exists() and (out / "job-0003-take2.mp4").exists()
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        stopped = await finish(server)
    assert stopped.code == 0, stopped.stderr

    entries = {e["id"]: e for e in read_manifest(out)}
    assert entries["job-0000"]["review"]["decision"] == "keep"
    assert entries["job-0000"]["review"]["reviewer"] == "tester"
    assert entries["job-0003"]["review"]["note"] == "too dark, job-0003"
    assert "review" not in entries["job-0005"] and "review" not in entries["job-0011"]
    assert entries["job-0003"]["take"] == 2
    assert entries["job-0003"]["review"]["take"] == 1
    # The rejected takes were rerolled: their new takes are undecided.
    status = await run_cli(sim, "status", str(job_file), "--json")
    assert json.loads(status.stdout)["review"] == {"keep": 3, "reject": 0}
    told = await run_cli(sim, "status", str(job_file))
    assert "review      3 kept, 0 rejected" in told.stdout
    static = (out / "review.html").read_text(encoding="utf-8")
    assert '"review":{"decision":"reject","note":"too dark, job-0004"' in static


async def test_user_text_stays_text_and_writes_need_the_token_and_the_same_origin(
    simulator, tmp_path: Path, page: Any
) -> None:
    """A prompt and a note holding <script>, <img onerror> and quotes show as text and run
    nothing; a write without the token is refused (403), and one from another origin
    never lands."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(2)
    jobs[1]["id"] = "nasty"
    jobs[1]["input"]["prompt"] = NASTY
    job_file = write_campaign(tmp_path, jobs)
    assert (await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")).code == 0
    server, url = await _serve(sim, job_file)
    try:
        await page.goto(url)
        card = page.locator('article[data-id="nasty"]')
        await card.wait_for()
        assert await card.locator(".prompt").inner_text() == NASTY
        await card.locator(".note-input").fill(NASTY)
        await card.locator(".note-input").press("Enter")
        await _until_review(page, "nasty", "keep")
        assert await card.locator(".note").inner_text() == NASTY
        await page.reload()
        await page.locator('article[data-id="nasty"] .note').wait_for()
        assert await page.locator('article[data-id="nasty"] .note').inner_text() == NASTY
        assert await page.evaluate("window.pwned") is None
        assert page.dialogs == [] and await page.locator("article img").count() == 0

        without = await page.evaluate(
            """fetch('api/decide', {method: 'POST', headers: {'Content-Type':
               'application/json'}, body: JSON.stringify({id: 'job-0000', decision:
               'reject'})}).then(r => r.status)"""
        )
        assert without == 403
        token = url.split("#token=")[1]
        origin = url.split("/#")[0]
        # Another site the browser has open (the simulator's origin), holding the token.
        await page.goto(sim.url + "/_sim/stats")
        sent = await page.evaluate(
            """([origin, token]) => fetch(origin + '/api/decide', {method: 'POST',
               headers: {'Content-Type': 'application/json', 'X-Review-Token': token},
               body: JSON.stringify({id: 'job-0000', decision: 'reject'})})
               .then(r => r.status, e => 'blocked')""",
            [origin, token],
        )
        assert sent in ("blocked", 403)
    finally:
        server.send_signal(signal.SIGTERM)
        assert (await finish(server)).code == 0
    with closing(Journal(tmp_path / "out" / ".apixo-batch.sqlite", lock=False)) as journal:
        assert {k: d.decision for k, d in journal.decisions().items()} == {"nasty": "keep"}


async def test_a_hundred_thousand_jobs_open_search_and_decide(tmp_path: Path, page: Any) -> None:
    """100,000 jobs: the first cards come from a first page of them, a window of cards is
    drawn, search finds the last job once all are in, and a decision goes through. The
    times are printed, not asserted (bench/review_live.py asserts the round trip)."""
    path = tmp_path / "j.sqlite"
    with closing(Journal(path, lock=False)) as journal:
        inp = {"mode": "text-to-video", "duration": 5, "sound": False}
        journal.sync(
            (
                NewJob(f"job-{i:06d}", i, "kling-2-6", "auto",
                       json.dumps({**inp, "prompt": f"scene {i}"}), f"h{i}", f"job-{i:06d}.mp4",
                       0.3)
                for i in range(100_000)
            ),
            time.time(),
        )  # fmt: skip
    server = ReviewServer(path, tmp_path, name="big", job_file="big.yaml")
    url = await server.start()
    try:
        started = time.perf_counter()
        await page.goto(url)
        await page.wait_for_selector("article.card")
        first_cards = time.perf_counter() - started
        await page.wait_for_function("() => JOBS.length === 100000", timeout=30_000)
        all_in = time.perf_counter() - started
        assert 0 < await page.locator("article.card").count() <= 200
        await page.fill("#search", "scene 99999")
        cards = page.locator("article.card")
        assert [await c.get_attribute("data-id") for c in await cards.all()] == ["job-099999"]
        await page.keyboard.press("Tab")  # out of the search box: keys move and decide
        await page.locator("h1").click()
        await page.keyboard.press("j")
        await page.keyboard.press("y")
        await _until_review(page, "job-099999", "keep")
        trip = await page.evaluate("window.lastDecisionMs")
    finally:
        await server.close()
    print(
        f"\n100,000 jobs: first cards {first_cards:.2f} s, all jobs in {all_in:.2f} s, "
        f"a decision's round trip {trip:.1f} ms"
    )
    with closing(Journal(path, lock=False)) as journal:
        assert journal.decision_counts() == {"keep": 1}
