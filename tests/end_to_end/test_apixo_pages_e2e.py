"""End to end, what APIXO's pages document (issue 31): a route the key has no access to
(403), a service unavailable for a while (503), each model's fail codes, and callbacks
that count only an HTTP 200. The real CLI against the real simulator on 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from e2e import (
    SIM_KEY,
    assert_byte_exact,
    finish,
    journaled_task_ids,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]


def _lines(stderr: str, needle: str) -> list[str]:
    return [line for line in stderr.splitlines() if needle in line]


async def test_a_403_on_submit_stops_with_one_line_naming_the_route(
    simulator, tmp_path: Path
) -> None:
    """The key may not submit kling-2-6: exit 3 at once, one line (and the summary's) saying
    which route, nothing paid; once access is granted the same command does every job, each
    paid once."""
    sim = await simulator(time_scale=0.01, forbidden=["submit/kling-2-6"])
    job_file = str(write_campaign(tmp_path, simple_jobs(20)))
    res = await run_cli(sim, "run", job_file, *FAST)
    assert res.code == 3, res.stderr
    assert "Traceback" not in res.stderr and SIM_KEY not in res.stderr + res.stdout
    told = _lines(res.stderr, "this key has no access to POST /generateTask/kling-2-6")
    # Told once as it happens, once more by the summary ("stopped submitting: ...").
    assert len(told) == 2, res.stderr
    assert told[0].startswith("apixo-batch: the API refused a submit: ")
    assert "stopped submitting:" in told[1]
    stats = sim.stats()
    assert stats["submits_accepted"] == 0 and stats["faults"]["403"] <= 20
    assert all(
        e["state"] == "pending" and e["task_id"] is None for e in read_manifest(tmp_path / "out")
    )

    sim.config.forbidden = []
    again = await run_cli(sim, "run", job_file, *FAST)
    assert again.code == 0, again.stderr
    stats = sim.stats()
    assert stats["submits_accepted"] == 20 and stats["duplicate_submits"] == 0
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_a_403_on_polls_stops_following_with_the_status_route(
    simulator, tmp_path: Path
) -> None:
    """Submits pass, polls are refused: exit 3 naming the status route, the paid tasks kept
    with their ids; the rerun with access follows them without paying again."""
    sim = await simulator(time_scale=0.01, forbidden=["status"], duration_override_s=(0.5, 0.5))
    job_file = str(write_campaign(tmp_path, simple_jobs(4)))
    res = await run_cli(sim, "run", job_file, *FAST)
    assert res.code == 3, res.stderr
    assert _lines(res.stderr, "this key has no access to GET /statusTask/kling-2-6"), res.stderr
    paid = sim.stats()["submits_accepted"]
    assert paid >= 1
    sim.config.forbidden = []
    again = await run_cli(sim, "run", job_file, *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 4 and sim.stats()["duplicate_submits"] == 0


async def test_a_balance_route_without_access_is_a_warning_not_a_stop(
    simulator, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01, forbidden=["balance"])
    res = await run_cli(sim, "run", str(write_campaign(tmp_path, simple_jobs(3))), *FAST)
    assert res.code == 0, res.stderr
    [line] = _lines(res.stderr, "this key has no access to GET /apikeys/current-balance")
    assert line.endswith("going on without the balance")


async def test_503_bursts_lose_nothing_and_pay_nothing_twice(simulator, tmp_path: Path) -> None:
    """Two bursts where every API request answers 503 (placed once the run is submitting),
    and scattered 503s besides: every job lands byte-exact, each paid once, exit 0."""
    sim = await simulator(
        time_scale=0.01, duration_override_s=(0.3, 0.6), error_rate_503=0.05, seed=5
    )
    job_file = str(write_campaign(tmp_path, simple_jobs(40)))
    proc = await start_cli(sim, "run", job_file, *FAST, "--max-concurrent", "8")
    await kill_when(proc, lambda: journaled_task_ids(tmp_path / "out") >= 4, sig=0)
    now = sim.uptime
    sim.config.unavailable = [(now, 0.4), (now + 0.8, 0.4)]
    res = await finish(proc)
    assert res.code == 0, res.stderr
    stats = sim.stats()
    in_bursts = stats["requests"]["POST /generateTask"].get("503", 0)
    assert in_bursts >= 2 and stats["faults"]["503"] >= 10
    assert stats["submits_accepted"] == 40 and stats["duplicate_submits"] == 0
    manifest = read_manifest(tmp_path / "out")
    assert [e["state"] for e in manifest] == ["done"] * 40
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_fail_codes_are_each_models_and_the_line_says_what_to_do(
    simulator, tmp_path: Path
) -> None:
    """kling-2-6's unreachable image fails ImageFormatIncorrect (its page's code), wan-2-5's
    INVALID_IMAGE_URL; a provider timeout is told as one --retry-failed may cure."""
    sim = await simulator(time_scale=0.01, fail_codes={"[slow-provider]": "Timeout"})
    jobs = simple_jobs(2) + simple_jobs(1, model="kling-2-5-turbo-pro", prefix="k25")
    jobs[0]["input"] = {
        "mode": "image-to-video",
        "prompt": "animate",
        "duration": 5,
        "sound": False,
        "image_urls": ["https://example.com/unreachable.jpg"],
    }
    jobs[1]["input"]["prompt"] = "a lake [slow-provider]"
    jobs[2]["input"] = {
        "mode": "image-to-video",
        "prompt": "animate",
        "duration": 5,
        "image_urls": ["https://example.com/unreachable.jpg"],
    }
    res = await run_cli(sim, "run", str(write_campaign(tmp_path, jobs)), *FAST)
    assert res.code == 1, res.stderr
    codes = {e["id"]: e["fail_code"] for e in read_manifest(tmp_path / "out")}
    assert codes == {
        "job-0000": "ImageFormatIncorrect",
        "job-0001": "Timeout",
        "k25-0000": "INVALID_IMAGE_URL",
    }
    [image] = _lines(res.stderr, "failed: job-0000 ImageFormatIncorrect")
    assert image.endswith("(the input was refused: fix the job, then --retry-failed)")
    [timeout] = _lines(res.stderr, "failed: job-0001 Timeout")
    assert "--retry-failed may succeed" in timeout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_callbacks_reach_the_engines_receiver_at_the_first_attempt(
    simulator, tmp_path: Path
) -> None:
    """Only an HTTP 200 counts as delivered: the engine's receiver answers exactly that, so
    no callback is ever retried (each delivered at its first attempt)."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.3, 0.5))
    port = _free_port()
    job_file = str(write_campaign(tmp_path, simple_jobs(6)))
    res = await run_cli(
        sim,
        "run",
        job_file,
        *FAST,
        "--callback-url",
        f"http://127.0.0.1:{port}/apixo",
        "--listen",
        f"127.0.0.1:{port}",
    )
    assert res.code == 0, res.stderr
    await sim.drain_callbacks()
    stats = sim.stats()
    assert stats["callbacks_delivered"] == 6
    assert stats["callbacks_attempted"] == 6 and stats["callbacks_failed"] == 0
