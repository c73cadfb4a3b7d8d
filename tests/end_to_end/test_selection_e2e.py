"""Part of a campaign, end to end (issue 32): --limit, --only, --model; --retry-failed
narrowed by selection and fail code, refused inputs not paid again; --retry-expired;
--reroll keeping the first take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]


def _job(job_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    inp = {"mode": "text-to-video", "prompt": prompt, "duration": 5, "sound": False, **extra}
    return {"id": job_id, "model": "kling-2-6", "input": inp}


def _i2v(job_id: str, url: str) -> dict[str, Any]:
    inp = {"mode": "image-to-video", "prompt": "spin", "duration": 5, "sound": False,
           "image_urls": [url]}  # fmt: skip
    return {"id": job_id, "model": "kling-2-6", "input": inp}


def _states(out: Path) -> dict[str, str]:
    return {e["id"]: e["state"] for e in read_manifest(out)}


async def test_a_three_job_smoke_test_then_the_full_run_pays_nothing_twice(
    simulator, tmp_path: Path
) -> None:
    """--limit 3 submits three jobs and ends 0 (the rest wait, untouched); the full run
    then submits the other seven, no job twice."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(10))
    smoke = await run_cli(sim, "run", str(job_file), *FAST, "--limit", "3")
    assert smoke.code == 0, smoke.stderr
    assert sim.stats()["submits_accepted"] == 3
    assert smoke.summary["counts"] == {"done": 3, "failed": 0, "expired": 0, "pending": 7}
    assert smoke.summary["stop_reason"] is None
    full = await run_cli(sim, "run", str(job_file), *FAST)
    assert full.code == 0, full.stderr
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["duplicate_submits"]) == (10, 0)
    assert full.summary["submitted"] == 7
    assert set(_states(tmp_path / "out").values()) == {"done"}


async def test_only_with_a_glob_acts_on_those_jobs_alone(simulator, tmp_path: Path) -> None:
    """--only 'hero-*' --only extra-1: three of five jobs; a pattern that matches nothing is
    one line and exit 2, before anything is sent or created."""
    sim = await simulator(time_scale=0.01)
    jobs = [_job(f"hero-{i}", f"hero {i}") for i in range(2)]
    jobs += [_job(f"extra-{i}", f"extra {i}") for i in range(3)]
    job_file = write_campaign(tmp_path, jobs)
    missing = await run_cli(sim, "run", str(job_file), *FAST, "--only", "hero-*,nope-*")
    assert missing.code == 2
    assert "'nope-*' matches no job" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert missing.summary["exit_code"] == 2  # --json: a summary last, as every run ends
    assert sim.stats()["submits_accepted"] == 0 and not (tmp_path / "out").exists()
    res = await run_cli(sim, "run", str(job_file), *FAST, "--only", "hero-*", "--only", "extra-1")
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    assert _states(tmp_path / "out") == {
        "hero-0": "done", "hero-1": "done", "extra-0": "pending", "extra-1": "done",
        "extra-2": "pending",
    }  # fmt: skip
    status = await run_cli(sim, "status", str(job_file), "--json", "--only", "extra-*")
    assert status.code == 0, status.stderr
    assert status.events[-1]["counts"] == {"done": 1, "queued": 2}


async def test_model_runs_one_models_jobs(simulator, tmp_path: Path) -> None:
    """--model wan-2-5: only the wan jobs are submitted; the kling ones stay queued."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(2, model="wan-2-5", prefix="wan") + simple_jobs(3, prefix="kling")
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST, "--model", "wan-2-5")
    assert res.code == 0, res.stderr
    tasks = list(sim.tasks.values())
    assert len(tasks) == 2 and {t.model for t in tasks} == {"wan-2-5"}
    bad = await run_cli(sim, "run", str(job_file), *FAST, "--model", "wan-9")
    assert bad.code == 2 and "unknown model 'wan-9'" in bad.stderr


async def test_retry_failed_skips_unchanged_refused_inputs_and_advises_the_edit(
    simulator, tmp_path: Path
) -> None:
    """A content refusal and a bad image are not paid again while their input is the same
    (one line says so); the edited one gets the right advice, then is retried."""
    sim = await simulator(time_scale=0.01)
    jobs = [
        _job("flagged", "a forbidden-word scene"),
        _i2v("badimg", "https://example.com/unreachable.jpg"),
        _job("fine", "calm sea"),
    ]
    job_file = write_campaign(tmp_path, jobs)
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 1
    assert sim.stats()["submits_accepted"] == 3
    again = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01", "--retry-failed")
    assert sim.stats()["submits_accepted"] == 3  # nothing paid again
    told = [line for line in again.stderr.splitlines() if "not submitted again" in line]
    assert len(told) == 1
    assert "SensitiveContentDetected" in told[0] and "ImageFormatIncorrect" in told[0]
    # The prompt fixed: a plain run says how to send it (not "give the job a new id").
    jobs[0] = _job("flagged", "a gentle scene")
    write_campaign(tmp_path, jobs)
    plain = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")
    assert "--retry-failed --only flagged" in plain.stderr
    assert "new id" not in plain.stderr
    assert sim.stats()["submits_accepted"] == 3
    fixed = await run_cli(sim, "run", str(job_file), *FAST, "--retry-failed")
    assert sim.stats()["submits_accepted"] == 4  # the edited job only
    assert _states(tmp_path / "out") == {"flagged": "done", "badimg": "failed", "fine": "done"}
    assert fixed.code == 1  # badimg is still failed


async def test_retry_failed_with_a_fail_code_sends_only_those(simulator, tmp_path: Path) -> None:
    """--retry-failed --fail-code Timeout: the provider's timeout alone is sent again;
    naming a refused input's code sends it again as it is; the content refusal stays."""
    sim = await simulator(time_scale=0.01, fail_codes={"flaky": "Timeout"})
    jobs = [
        _job("flagged", "nsfw thing"),
        _job("slow", "a flaky scene"),
        _i2v("badimg", "https://example.com/unreachable.jpg"),
    ]
    job_file = write_campaign(tmp_path, jobs)
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert {e["fail_code"] for e in read_manifest(tmp_path / "out")} == {
        "SensitiveContentDetected", "Timeout", "ImageFormatIncorrect",
    }  # fmt: skip
    assert first.code == 1 and sim.stats()["submits_accepted"] == 3
    nope = await run_cli(sim, "run", str(job_file), *FAST, "--fail-code", "Timeout")
    assert nope.code == 2 and "give --retry-failed too" in nope.stderr
    timeout = await run_cli(
        sim, "run", str(job_file), *FAST, "--retry-failed", "--fail-code", "Timeout"
    )
    assert timeout.summary["submitted"] == 1
    assert sim.submits_for("kling-2-6", jobs[1]["input"]) == 2
    image = await run_cli(
        sim, "run", str(job_file), *FAST, "--retry-failed", "--fail-code", "ImageFormatIncorrect"
    )
    assert image.summary["submitted"] == 1
    assert sim.submits_for("kling-2-6", jobs[2]["input"]) == 2
    assert sim.submits_for("kling-2-6", jobs[0]["input"]) == 1


async def test_expired_jobs_are_said_and_retried_with_retry_expired(
    simulator, tmp_path: Path
) -> None:
    """Results that expire before the download end `expired`; a rerun says how to send
    them again, and --retry-expired does (a new task), landing the file."""
    sim = await simulator(time_scale=0.01, expiry_s=0.001)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert set(_states(tmp_path / "out").values()) == {"expired"}
    assert first.code == 1
    sim.config.expiry_s = 15 * 24 * 3600.0
    plain = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")
    assert "2 expired job(s)" in plain.stderr and "--retry-expired" in plain.stderr
    assert sim.stats()["submits_accepted"] == 2
    res = await run_cli(sim, "run", str(job_file), *FAST, "--retry-expired")
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 4
    assert set(_states(tmp_path / "out").values()) == {"done"}
    assert (tmp_path / "out" / "job-0000.mp4").is_file()


async def test_reroll_keeps_the_first_take_and_manifests_both(simulator, tmp_path: Path) -> None:
    """--reroll --only wan-0000: a new task with a new seed; wan-0000.mp4 stays and the new
    take lands as wan-0000-take2.mp4; the manifest names both; wan-0001 is untouched."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(2, model="wan-2-5", prefix="wan")
    job_file = write_campaign(tmp_path, jobs)
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    out = tmp_path / "out"
    first = (out / "wan-0000.mp4").read_bytes()
    res = await run_cli(sim, "run", str(job_file), *FAST, "--reroll", "--only", "wan-0000")
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    seeds = [
        t.input.get("seed") for t in sim.tasks.values() if t.input["prompt"] == "scene number 0"
    ]
    assert seeds[0] is None and isinstance(seeds[1], int)
    assert (out / "wan-0000.mp4").read_bytes() == first
    assert (out / "wan-0000-take2.mp4").is_file()
    entry = next(e for e in read_manifest(out) if e["id"] == "wan-0000")
    assert entry["state"] == "done"
    assert (entry["files"], entry["earlier_files"], entry["take"]) == (
        ["wan-0000-take2.mp4"], ["wan-0000.mp4"], 2,
    )  # fmt: skip
    assert entry["seed"] == seeds[1]
    other = next(e for e in read_manifest(out) if e["id"] == "wan-0001")
    assert "take" not in other
    # A plain rerun changes nothing: the take is done.
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 0 and sim.stats()["submits_accepted"] == 3
    assert yaml.safe_load(job_file.read_text())["jobs"] == jobs


async def test_download_only_fetches_the_picked_jobs(simulator, tmp_path: Path) -> None:
    """Two results deleted: `download --only job-0000` fetches that one; job-0001 waits
    for a later download, which fetches it. Nothing is submitted."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    out = tmp_path / "out"
    for i in (0, 1):
        (out / f"job-000{i}.mp4").unlink()
    res = await run_cli(sim, "download", str(job_file), *FAST, "--only", "job-0000")
    assert res.code == 0, res.stderr
    assert (out / "job-0000.mp4").is_file() and not (out / "job-0001.mp4").exists()
    rest = await run_cli(sim, "download", str(job_file), *FAST)
    assert rest.code == 0, rest.stderr
    assert (out / "job-0001.mp4").is_file()
    assert sim.stats()["submits_accepted"] == 3


async def test_a_smoke_test_is_weighed_against_the_balance_alone(simulator, tmp_path: Path) -> None:
    """$1.00 of balance, ten $0.30 jobs: the whole run is refused before any submit, but
    --limit 3 ($0.90) is checked for what it may submit, and goes."""
    sim = await simulator(time_scale=0.01)
    sim.balance = 1.0
    job_file = write_campaign(tmp_path, simple_jobs(10))
    whole = await run_cli(sim, "run", str(job_file), *FAST)
    assert whole.code == 3 and sim.stats()["submits_accepted"] == 0
    smoke = await run_cli(sim, "run", str(job_file), *FAST, "--limit", "3")
    assert smoke.code == 0, smoke.stderr
    assert sim.stats()["submits_accepted"] == 3
    [started] = [e for e in smoke.events if e["event"] == "started"]
    assert started["queued"] == 3
    assert started["estimated_cost_usd"] == pytest.approx(0.9)


async def test_plan_with_a_journal_covers_the_picked_reroll_and_its_take_name(
    simulator, tmp_path: Path
) -> None:
    """After a first run, a hand-made file at wan-0000-take2.mp4: `plan --reroll --only
    wan-0000` says run would refuse that take (its own name, checked as run checks it)
    and prices nothing; `plan --reroll --only wan-0001` prices that one take alone, out of
    the file's two. `run --reroll --only wan-0000` then refuses it unpaid."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2, model="wan-2-5", prefix="wan"))
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    out = tmp_path / "out"
    cut = out / "wan-0000-take2.mp4"
    cut.write_bytes(b"my hand-made cut")
    refused = await run_cli(sim, "plan", str(job_file), "--json", "--reroll", "--only", "wan-0000")
    assert refused.code == 0, refused.stderr
    data = json.loads(refused.stdout)
    assert (data["jobs"], data["file"]["jobs"]) == (0, 2)
    journal = data["journal"]
    assert (journal["refused"], journal["to_submit"]["jobs"], journal["done"]) == (1, 0, 0)
    assert journal["clashes"] == [
        {"job": "wan-0000", "file": str(cut), "holder": None, "result": 1}
    ]
    other = await run_cli(sim, "plan", str(job_file), "--json", "--reroll", "--only", "wan-0001")
    journal = json.loads(other.stdout)["journal"]
    assert (journal["refused"], journal["to_submit"]["jobs"], journal["clashes"]) == (0, 1, [])
    run = await run_cli(sim, "run", str(job_file), *FAST, "--reroll", "--only", "wan-0000")
    assert run.code == 1, run.stderr
    assert sim.stats()["submits_accepted"] == 2
    assert cut.read_bytes() == b"my hand-made cut"
