"""End to end: the real CLI against the real simulator on 127.0.0.1, with --time-scale."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    ALL_MODES,
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

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("backend")]

FAST = ["--time-scale", "0.01", "--json"]


async def test_happy_path_every_model_and_mode_byte_exact(simulator, tmp_path: Path) -> None:
    """All 12 modes end done, files byte-exact, manifest in job-file order, exit 0."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, ALL_MODES)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert [e["id"] for e in manifest] == [j["id"] for j in ALL_MODES]
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
        assert entry["cost_time_ms"] is not None and entry["expires_at"]
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0
    assert stats["submits_accepted"] == len(ALL_MODES)
    assert res.summary["counts"]["done"] == len(ALL_MODES)


async def test_second_result_url_gets_suffix(simulator, tmp_path: Path) -> None:
    """A job with two result URLs writes <id>.mp4 and <id>-2.mp4."""
    sim = await simulator(time_scale=0.01, results_per_task=2)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    for entry in read_manifest(tmp_path / "out"):
        assert entry["files"] == [f"{entry['id']}.mp4", f"{entry['id']}-2.mp4"]
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_extra_result_never_overwrites_another_jobs_file(simulator, tmp_path: Path) -> None:
    """Job `a`'s second result would be `a-2.mp4`, job `a-2`'s file: it is not written
    over it; `a` waits with a warning naming both, and once the template is changed
    `download` brings it home without a new submit."""
    sim = await simulator(time_scale=0.01, results_per_task=2)
    jobs = simple_jobs(2)
    jobs[0]["id"], jobs[1]["id"] = "a", "a-2"
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    by_id = {e["id"]: e for e in read_manifest(tmp_path / "out")}
    assert by_id["a"]["state"] == "pending"
    assert by_id["a-2"]["files"] == ["a-2.mp4", "a-2-2.mp4"]
    assert_byte_exact(sim, tmp_path / "out", by_id["a-2"])
    [warning] = [e for e in res.events if e["event"] == "warning" and e.get("job") == "a"]
    assert "a-2.mp4 (job a-2's file)" in warning["message"]
    assert "output.filename" in warning["message"]

    by_id = await _rename_and_download(sim, tmp_path, jobs, job_file)
    assert by_id["a"]["files"] == ["a_.mp4", "a_-2.mp4"]
    for entry in by_id.values():
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_new_jobs_file_never_overwrites_an_earlier_jobs_extra_result(
    simulator, tmp_path: Path
) -> None:
    """Job `take` landed `take-2.mp4` as its second result; job `take-2`, added to the
    file later, would write its own result there: it is refused before it is paid
    (failed, OUTPUT_EXISTS) with a warning naming both, and `take`'s paid file stays as
    it was. Renamed, `run --retry-failed` submits and lands it."""
    sim = await simulator(time_scale=0.01, results_per_task=2)
    jobs = simple_jobs(1)
    jobs[0]["id"] = "take"
    job_file = write_campaign(tmp_path, jobs)
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    [take] = read_manifest(tmp_path / "out")
    assert take["files"] == ["take.mp4", "take-2.mp4"]
    second_result = (tmp_path / "out" / "take-2.mp4").read_bytes()

    jobs.append({**simple_jobs(2)[1], "id": "take-2"})
    write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    assert (tmp_path / "out" / "take-2.mp4").read_bytes() == second_result
    assert sim.stats()["submits_accepted"] == 1
    by_id = {e["id"]: e for e in read_manifest(tmp_path / "out")}
    assert (by_id["take-2"]["state"], by_id["take-2"]["fail_code"]) == ("failed", "OUTPUT_EXISTS")
    assert_byte_exact(sim, tmp_path / "out", by_id["take"])
    [warning] = [e for e in res.events if e["event"] == "warning" and e.get("job") == "take-2"]
    assert "take-2.mp4 is job take's file" in warning["message"]

    write_campaign(tmp_path, jobs, output={"dir": "out", "filename": "{id}_.mp4"})
    again = await run_cli(sim, "run", str(job_file), "--retry-failed", *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 2
    by_id = {e["id"]: e for e in read_manifest(tmp_path / "out")}
    assert by_id["take-2"]["files"] == ["take-2_.mp4", "take-2_-2.mp4"]
    assert_byte_exact(sim, tmp_path / "out", by_id["take-2"])
    assert (tmp_path / "out" / "take-2.mp4").read_bytes() == second_result


async def _rename_and_download(
    sim: Any, tmp_path: Path, jobs: list[dict[str, Any]], job_file: Path
) -> dict[str, dict[str, Any]]:
    """The fix the clash warning gives: a template whose names differ, then `download`,
    which brings the waiting result home without a new submit (2 jobs, 2 submits)."""
    write_campaign(tmp_path, jobs, output={"dir": "out", "filename": "{id}_.mp4"})
    again = await run_cli(sim, "download", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 2
    return {e["id"]: e for e in read_manifest(tmp_path / "out")}


async def test_limits_never_exceeded(simulator, tmp_path: Path) -> None:
    """With the simulator's limits equal to the flags: peak in flight <= flag, zero 429s."""
    sim = await simulator(
        time_scale=0.01, concurrency_limit=8, rpm_limit=2400, duration_override_s=(0.2, 0.4)
    )
    job_file = write_campaign(tmp_path, simple_jobs(60))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "8", "--rpm", "2400")
    assert res.code == 0, res.stderr
    stats = sim.stats()
    assert 6 <= stats["max_concurrent_tasks"] <= 8  # used, never exceeded
    assert stats["rate_limited"] == 0
    assert stats["submits_accepted"] == 60


async def test_request_rate_paced_under_every_window(simulator, tmp_path: Path) -> None:
    """The bucket is paced: a rolling window never sees more than its share, zero 429s.

    --rpm 3000 allows at most 50 burst + 48.9/s drip, i.e. 344 requests in any 6 s;
    the simulator's window is shortened to 6 s with a limit of 345 so that a bucket
    sized to a whole minute (3,000 at once) would trip it within the first second.
    """
    sim = await simulator(
        time_scale=0.01, rpm_limit=345, rpm_window_s=6.0, duration_override_s=(0.05, 0.1)
    )
    job_file = write_campaign(tmp_path, simple_jobs(250))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--rpm", "3000", limit=90)
    assert res.code == 0, res.stderr
    stats = sim.stats()
    assert stats["rate_limited"] == 0
    assert stats["api_requests_total"] > 345  # the window really was exercised


async def test_faults_still_end_all_done_and_byte_exact(simulator, tmp_path: Path) -> None:
    """10% 5xx + 3% resets + 20% truncated downloads: every job done, byte-exact."""
    sim = await simulator(
        time_scale=0.01,
        seed=7,
        error_rate_500=0.04,
        error_rate_502=0.03,
        error_rate_504=0.03,
        reset_rate=0.03,
        truncate_rate=0.2,
        file_size=300_000,
    )
    jobs = simple_jobs(40)
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 40
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    stats = sim.stats()
    # Only submits whose answer was lost can be duplicated, and the engine flags those.
    flagged = sum(1 for e in manifest if e["possibly_duplicated"])
    assert stats["duplicate_submits"] <= flagged


async def test_kill9_then_rerun_never_resubmits_task_ids(simulator, tmp_path: Path) -> None:
    """kill -9 mid-run, rerun: jobs that had task ids are polled, not submitted again."""
    sim = await simulator(time_scale=0.01, duration_override_s=(0.5, 1.0))
    jobs = simple_jobs(40)
    job_file = write_campaign(tmp_path, jobs)
    proc = await start_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "10")
    await kill_when(proc, lambda: sim.stats()["submits_accepted"] >= 15)
    await finish(proc)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0, res.stderr
    stats = sim.stats()
    manifest = read_manifest(tmp_path / "out")
    assert all(e["state"] == "done" for e in manifest)
    flagged = sum(1 for e in manifest if e["possibly_duplicated"])
    assert stats["duplicate_submits"] <= flagged
    assert stats["submits_accepted"] == 40 + stats["duplicate_submits"]
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_sigterm_exits_130_fast_with_manifest_then_resumes(simulator, tmp_path: Path) -> None:
    """SIGTERM: exit 130 within 5 s, manifest written; the same command then finishes."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 3.0))
    job_file = write_campaign(tmp_path, simple_jobs(30))
    proc = await start_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "10")
    await kill_when(proc, lambda: sim.stats()["submits_accepted"] >= 10, sig=signal.SIGTERM)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    res = await finish(proc, limit=10)
    assert loop.time() - t0 < 5.0
    assert res.code == 130, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 30
    assert any(e["state"] == "pending" and e["task_id"] for e in manifest)
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["duplicate_submits"] == 0


async def test_bad_key_exits_3_fast_and_never_shows_the_key(simulator, tmp_path: Path) -> None:
    """A wrong key: exit 3 after very few requests; the key is nowhere in output or files."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(50))
    bad = "sk-live-THIS-KEY-MUST-NEVER-LEAK-12345"
    res = await run_cli(sim, "run", str(job_file), *FAST, key=bad)
    assert res.code == 3, res.stderr
    assert sim.stats()["api_requests_total"] <= 3
    assert bad not in res.stdout + res.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert bad.encode() not in path.read_bytes(), path
    plain = await run_cli(sim, "run", str(job_file), "--time-scale", "0.01", key=bad)
    assert plain.code == 3
    assert bad not in plain.stdout + plain.stderr


async def test_insufficient_credits_stops_submits_but_follows_paid_work(
    simulator, tmp_path: Path
) -> None:
    """After N submits the API says no money: exit 3, the N paid tasks still land on disk."""
    sim = await simulator(time_scale=0.01, insufficient_after=5)
    job_file = write_campaign(tmp_path, simple_jobs(20))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "3")
    assert res.code == 3, res.stderr
    # Told once, though every submit on the wire after the fifth is refused.
    [stopped] = [e for e in res.events if e["event"] == "stopped"]
    assert stopped["reason"].startswith("the API refused a submit:")
    manifest = read_manifest(tmp_path / "out")
    done = [e for e in manifest if e["state"] == "done"]
    assert len(done) == 5
    assert all(
        e["state"] == "pending" and e["task_id"] is None for e in manifest if e["state"] != "done"
    )
    for entry in done:
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_preflight_refuses_when_balance_is_short(simulator, tmp_path: Path) -> None:
    """Balance below the estimate: nothing submitted, exit 3; --allow-partial submits."""
    sim = await simulator(time_scale=0.01, balance=1.0)
    # 10 kling-2-6 silent 5 s jobs at $0.30 each = $3.00 > $1.00
    job_file = write_campaign(tmp_path, simple_jobs(10))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 3
    assert sim.stats()["submits_accepted"] == 0
    assert "balance" in res.summary["stop_reason"]
    [stopped] = [e for e in res.events if e["event"] == "stopped"]
    assert list(stopped) == ["event", "at", "reason", "balance_usd", "stop"]
    assert stopped["balance_usd"] == 1.0 and stopped["reason"] == res.summary["stop_reason"]
    assert stopped["stop"] == "refused"
    partial = await run_cli(sim, "run", str(job_file), *FAST, "--allow-partial")
    assert partial.code == 3  # the money ran out part-way
    assert sim.stats()["submits_accepted"] == 3  # $0.30 each out of $1.00


async def test_failed_tasks_recorded_and_not_resubmitted(simulator, tmp_path: Path) -> None:
    """A content violation ends `failed` with the API's failCode; reruns leave it alone."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(3)
    jobs[1]["input"]["prompt"] = "something nsfw here"
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1
    manifest = read_manifest(tmp_path / "out")
    failed = manifest[1]
    assert failed["state"] == "failed" and failed["fail_code"] == "SensitiveContentDetected"
    assert failed["fail_msg"]
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 1
    assert sim.stats()["submits_accepted"] == 3
    # The same refused input is not paid again by --retry-failed (issue 32)...
    skipped = await run_cli(sim, "run", str(job_file), *FAST, "--retry-failed")
    assert skipped.code == 1
    assert sim.stats()["submits_accepted"] == 3
    # ...unless its code is named.
    retry = await run_cli(
        sim,
        "run",
        str(job_file),
        *FAST,
        "--retry-failed",
        "--fail-code",
        "SensitiveContentDetected",
    )
    assert retry.code == 1
    assert sim.stats()["submits_accepted"] == 4


async def test_expired_result_url_ends_expired(simulator, tmp_path: Path) -> None:
    """A result URL that answers 410 ends the job `expired`, exit 1."""
    sim = await simulator(time_scale=0.01, expiry_s=0.001)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert {e["state"] for e in manifest} == {"expired"}
    assert not list((tmp_path / "out").glob("*.mp4*"))


async def test_finished_campaign_rerun_sends_zero_requests(simulator, tmp_path: Path) -> None:
    """Rerunning a finished campaign: exit 0, not one API request; new jobs only are submitted."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(5)
    job_file = write_campaign(tmp_path, jobs)
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    before = sim.stats()["api_requests_total"]
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0
    assert sim.stats()["api_requests_total"] == before
    write_campaign(tmp_path, [*jobs, *simple_jobs(2, prefix="late")])
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 0
    assert sim.stats()["submits_accepted"] == 7
    assert [e["id"] for e in read_manifest(tmp_path / "out")][-2:] == ["late-0000", "late-0001"]


async def test_input_changed_after_submit_is_reported_not_resubmitted(
    simulator, tmp_path: Path
) -> None:
    """Editing a submitted job's input warns clearly and pays nothing twice."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(2)
    job_file = write_campaign(tmp_path, jobs)
    assert (await run_cli(sim, "run", str(job_file), *FAST)).code == 0
    jobs[0]["input"]["prompt"] = "a different prompt"
    write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert sim.stats()["submits_accepted"] == 2
    assert "job-0000" in res.summary["input_changed"]
    assert any(e["event"] == "warning" and "job-0000" in e.get("message", "") for e in res.events)


async def test_second_run_on_same_journal_refuses(simulator, tmp_path: Path, backend: str) -> None:
    """A second process on the same SQLite journal refuses to start with a clear message.
    On a PostgreSQL journal it is a second runner of the campaign instead: it sends
    nothing twice, waits for the first's tasks (it would adopt them should the first
    die), and ends with every job done."""
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    job_file = write_campaign(tmp_path, simple_jobs(2))
    first = await start_cli(sim, "run", str(job_file), *FAST)
    await kill_when(first, lambda: sim.stats()["submits_accepted"] >= 2, sig=0)
    second = await run_cli(sim, "run", str(job_file), *FAST)
    if backend == "pg":
        assert second.code == 0, second.stderr
        assert (await finish(first)).code == 0
        assert sim.stats()["submits_accepted"] == 2
        return
    assert second.code == 2
    assert "another apixo-batch run" in second.stderr
    first.send_signal(signal.SIGTERM)
    await finish(first)


async def test_max_wait_leaves_pending_then_download_picks_up(simulator, tmp_path: Path) -> None:
    """A task past --max-wait is left pending (exit 1); `download` later finishes it."""
    sim = await simulator(time_scale=0.01, duration_override_s=(2.0, 2.0))
    job_file = write_campaign(tmp_path, simple_jobs(1))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-wait", "0.005")
    assert res.code == 1, res.stderr
    [entry] = read_manifest(tmp_path / "out")
    assert entry["state"] == "pending" and entry["task_id"]
    await asyncio.sleep(2.0)
    dl = await run_cli(sim, "download", str(job_file), *FAST)
    assert dl.code == 0, dl.stderr
    [entry] = read_manifest(tmp_path / "out")
    assert_byte_exact(sim, tmp_path / "out", entry)
    assert sim.stats()["submits_accepted"] == 1


async def test_invalid_job_file_exits_2_without_requests(simulator, tmp_path: Path) -> None:
    """An invalid job file: exit 2, the job and field named, no request sent."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(1)
    jobs[0]["input"]["duration"] = 7
    job_file = write_campaign(tmp_path, jobs)
    res = await run_cli(sim, "run", str(job_file), *FAST)
    assert res.code == 2
    assert "job-0000" in res.stderr and "duration" in res.stderr
    assert sim.stats()["requests_total"] == 0


async def test_task_unknown_to_the_api_ends_failed_not_polled_forever(
    simulator, tmp_path: Path
) -> None:
    """A journaled task the API no longer knows (404 again and again) ends failed, clearly."""
    first = await simulator(time_scale=0.01, duration_override_s=(5.0, 5.0))
    job_file = write_campaign(tmp_path, simple_jobs(2))
    proc = await start_cli(first, "run", str(job_file), *FAST)
    await kill_when(proc, lambda: journaled_task_ids(tmp_path / "out") >= 2)
    await finish(proc)
    other = await simulator(time_scale=0.01)  # a different API: it never saw those tasks
    res = await run_cli(other, "run", str(job_file), *FAST)
    assert res.code == 1, res.stderr + res.stdout
    assert (tmp_path / "out" / "manifest.jsonl").exists(), res.stderr + res.stdout
    manifest = read_manifest(tmp_path / "out")
    assert {e["fail_code"] for e in manifest} == {"TASK_NOT_FOUND"}
    assert all(e["task_id"] for e in manifest)
    assert other.stats()["submits_accepted"] == 0  # never resubmitted


async def test_key_revoked_mid_run_exits_3_and_keeps_everything(simulator, tmp_path: Path) -> None:
    """A key revoked while tasks run: exit 3, tasks left pending with their ids, resumable."""
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    job_file = write_campaign(tmp_path, simple_jobs(4))
    proc = await start_cli(sim, "run", str(job_file), *FAST)
    await kill_when(proc, lambda: journaled_task_ids(tmp_path / "out") >= 4, sig=0)
    sim.set_api_key("sim-some-other-key")  # the key is revoked: every request gets 401
    res = await finish(proc)
    assert res.code == 3, res.stderr + res.stdout[-2000:]
    manifest = read_manifest(tmp_path / "out")
    assert all(e["state"] == "pending" and e["task_id"] for e in manifest)
    sim.set_api_key(SIM_KEY)
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 4
