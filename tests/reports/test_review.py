"""review.html without a browser: its data block, its escaping, the command and --no-review."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from e2e import run_cli, simple_jobs, write_campaign

from apixo_batch.journal import Journal, NewJob
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
    assert '"id": "job-0001"' in (out / "review.html").read_text(encoding="utf-8")
