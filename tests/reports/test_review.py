"""review.html without a browser: its data block (what each card and the header are made
from), its escaping, the command and --no-review."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from e2e import run_cli, simple_jobs, write_campaign

from apixo_batch.journal import JobState, Journal, NewJob, RunRecord, Totals, last_runs
from apixo_batch.journal.runs import keep_run
from apixo_batch.planning.selection import Again, Selection
from apixo_batch.reports.review import write_review

NASTY = "</script><script>alert(1)</script> <!-- \"q\" & 'a' \u2028 é"


def test_user_text_cannot_leave_the_data_block(tmp_path: Path) -> None:
    """A prompt holding </script>, a comment opener, quotes and line separators stays inside
    the JSON block, and reads back as written."""
    journal = Journal(tmp_path / "j.sqlite", lock=False)
    inp = {"mode": "text-to-video", "duration": 5, "sound": False, "prompt": NASTY}
    journal.sync(
        [NewJob("a<b>", 0, "kling-2-6", "auto", json.dumps(inp), "h", "a.mp4", 0.3)], time.time()
    )
    page = write_review(
        journal.iter_all(), tmp_path, name="<b>name</b>", job_file="c.yaml"
    ).read_text()
    journal.close()
    assert page.count("</script>") == 3  # the two data blocks and the script: nothing else
    block = re.search(r'<script id="jobs" type="application/json">(.*?)</script>', page, re.S)
    assert block is not None
    [job] = json.loads(block.group(1))
    assert (job["id"], job["prompt"]) == ("a<b>", NASTY)
    assert "<title>&lt;b&gt;name&lt;/b&gt;: review</title>" in page
    assert "<script>alert" not in page


async def test_review_command_and_run_write_the_page(simulator, tmp_path: Path) -> None:
    """`review` before any run: exit 1, nothing written; `run` writes review.html (not with
    --no-review), and `review` writes it again from the journal without a request."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    out = tmp_path / "out"
    assert (await run_cli(sim, "review", job_file)).code == 1
    res = await run_cli(sim, "run", job_file, "--time-scale", "0.01", "--no-review")
    assert res.code == 0 and not (out / "review.html").exists()
    requests = sim.stats()["requests_total"]
    again = await run_cli(sim, "review", job_file)
    assert again.code == 0 and again.stdout.strip() == str(out / "review.html")
    assert sim.stats()["requests_total"] == requests
    assert '"id":"job-0001"' in (out / "review.html").read_text(encoding="utf-8")


S = JobState
NOW = 1_800_000_000.0
HOUR = 3600.0


def _input(**extra: object) -> str:
    return json.dumps({"mode": "text-to-video", "duration": 5, "prompt": "a scene", **extra})


def campaign_journal(tmp_path: Path) -> Journal:
    """One job in each place a job can be: done (one of unknown price), failed, expired
    with its URL's journaled expiry hours ahead, paid but not downloaded, in flight and
    never submitted (the browser tests read it too)."""
    journal = Journal(tmp_path / "j.sqlite", lock=False)
    jobs = [
        ("done", 0.3, _input(sound=True, cfg_scale=0.5, image_urls=["https://i.test/a.jpg"])),
        ("free", None, _input()),
        ("failed", 0.3, _input()),
        ("expired", 0.3, _input()),
        ("gaveup", 0.3, _input()),
        ("flight", 0.3, _input(image_urls=["javascript:alert(1)"])),
        ("never", 0.3, _input(sound=False, cfg_scale=0)),
    ]
    journal.sync(
        [
            NewJob(job_id, i, "kling-2-6", "auto", inp, f"h{i}", f"{job_id}.mp4", cost)
            for i, (job_id, cost, inp) in enumerate(jobs)
        ],
        NOW,
    )
    for job_id, _, _ in jobs[:-1]:
        journal.transition(job_id, S.SUBMITTING, NOW, attempts=1)
        journal.transition(
            job_id, S.SUBMITTED, NOW, task_id=f"t-{job_id}", submitted_at=NOW, request_type="x"
        )
    journal.transition("failed", S.FAILED, NOW, fail_code="SensitiveContentDetected")
    for job_id in ("done", "free", "expired", "gaveup"):
        journal.transition(
            job_id,
            S.SUCCEEDED,
            NOW,
            result_urls=[f"https://r.test/{job_id}.mp4"],
            completed_at=NOW,
            expires_at=time.time() + 7.1 * HOUR,
        )
    for job_id in ("done", "free"):
        journal.transition(job_id, S.DONE, NOW, files=[f"{job_id}.mp4"], bytes=1, sha256=["x"])
    journal.transition("expired", S.EXPIRED, NOW, fail_code="RESULT_EXPIRED", fail_msg="410 Gone")
    return journal


def page_data(journal: Journal, tmp_path: Path, **kw: object) -> tuple[dict[str, dict], dict]:
    """The page written from ``journal`` (with its totals and runs): (jobs by id, meta)."""
    page = write_review(
        journal.iter_all(),
        tmp_path,
        name="c",
        job_file="my jobs.yaml",
        totals=Totals(journal.totals()),
        runs=last_runs(journal),
        **kw,  # type: ignore[arg-type]
    ).read_text(encoding="utf-8")
    blocks = dict(re.findall(r'<script id="(\w+)" type="application/json">(.*?)</script>', page))
    return {j["id"]: j for j in json.loads(blocks["jobs"])}, json.loads(blocks["meta"])


def test_each_pending_job_says_why_it_waits(tmp_path: Path) -> None:
    """Never submitted, in flight, paid with its download given up: each pending job
    carries why; done, failed and expired ones carry none."""
    journal = campaign_journal(tmp_path)
    jobs, meta = page_data(journal, tmp_path)
    journal.close()
    assert {i: j["wait"] for i, j in jobs.items()} == {
        "done": None,
        "free": None,
        "failed": None,
        "expired": None,
        "gaveup": "download",
        "flight": "flight",
        "never": "never",
    }
    assert meta["waits"] == {"download": 1, "flight": 1, "never": 1}
    assert meta["counts"] == {"done": 2, "failed": 1, "expired": 1, "pending": 3}


def test_queued_jobs_say_the_budget_or_the_stop_that_left_them(tmp_path: Path) -> None:
    """A queued job after a run that stopped at its budget waits on the budget; after one
    that was interrupted, on that stop; a later run that met neither clears it."""
    journal = campaign_journal(tmp_path)
    waits = []
    for stops in (("budget",), ("budget", "interrupted"), ()):
        keep_run(journal, RunRecord(NOW, 1.0, 0, 0, stops=stops, budget_usd=1.0))
        jobs, _ = page_data(journal, tmp_path)
        waits.append(jobs["never"]["wait"])
    journal.close()
    assert waits == ["budget", "stopped", "never"]


def test_spend_is_known_prices_plus_the_count_of_unknown_ones(tmp_path: Path) -> None:
    """Five paid tasks at $0.30 and one of unknown price: $1.50 and 1 job of unknown
    price, not one sum that reads as if it were all."""
    journal = campaign_journal(tmp_path)
    _, meta = page_data(journal, tmp_path)
    journal.close()
    assert (meta["spent_usd"], meta["unknown_price_jobs"]) == (1.5, 1)


def test_last_run_is_the_last_that_did_work(tmp_path: Path) -> None:
    """A run that submitted, then a rerun that found nothing to do: "last run" is the
    first (its time and submits), the rerun is kept apart as the latest."""
    journal = campaign_journal(tmp_path)
    keep_run(journal, RunRecord(NOW, 42.5, 6, 12))
    keep_run(journal, RunRecord(NOW + 60, 0.0, 0, 0))
    _, meta = page_data(journal, tmp_path)
    journal.close()
    assert meta["last_run"]["wall_s"] == 42.5 and meta["last_run"]["submitted"] == 6
    assert meta["latest_run"]["ended_at"] == NOW + 60 and meta["latest_run"]["wall_s"] == 0.0


def test_cards_carry_sound_cfg_scale_and_source_images(tmp_path: Path) -> None:
    """What a card shows of the input: sound and cfg_scale (false and 0 kept, not dropped),
    the source image URLs."""
    journal = campaign_journal(tmp_path)
    jobs, meta = page_data(journal, tmp_path)
    journal.close()
    done, never = jobs["done"], jobs["never"]
    assert (done["sound"], done["cfg"], done["images"]) == (True, 0.5, ["https://i.test/a.jpg"])
    assert (never["sound"], never["cfg"], never["images"]) == (False, 0, [])
    # The commands are pasted into a shell: a job file with a space is quoted.
    assert meta["commands"]["retry_expired"] == "apixo-batch run 'my jobs.yaml' --retry-expired"
    assert meta["commands"]["download"] == "apixo-batch download 'my jobs.yaml'"


def test_a_rerolled_card_plays_every_take(tmp_path: Path) -> None:
    """After --reroll and the new take landed, the card holds the first take's file and
    the new one's, the first first."""

    journal = campaign_journal(tmp_path)
    again = Again(reroll=True, selection=Selection(only=("done",)))
    jobs = [NewJob("done", 0, "kling-2-6", "auto", _input(sound=True, cfg_scale=0.5,
            image_urls=["https://i.test/a.jpg"]), "h0", "done.mp4", 0.3)]  # fmt: skip
    journal.sync(jobs, NOW, again=again)
    journal.transition("done", S.SUBMITTING, NOW, attempts=1)
    journal.transition("done", S.SUBMITTED, NOW, task_id="t-2", submitted_at=NOW)
    journal.transition("done", S.SUCCEEDED, NOW, result_urls=["u"], expires_at=NOW + 9)
    journal.transition("done", S.DONE, NOW, files=["done-take2.mp4"], bytes=1, sha256=["y"])
    cards, _ = page_data(journal, tmp_path)
    journal.close()
    assert cards["done"]["files"] == ["done.mp4", "done-take2.mp4"]
