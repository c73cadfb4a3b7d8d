"""End to end: results deleted or damaged after a run are fetched again (never paid again),
and `verify` hashes what a stat cannot see."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e import assert_byte_exact, read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("backend")]

FAST = ["--time-scale", "0.01", "--json"]


async def test_damaged_results_are_fetched_again_and_verify_finds_the_rest(
    simulator, tmp_path: Path
) -> None:
    """One result deleted, one overwritten with 8 bytes of garbage, one rewritten at its
    size: `download` fetches the first two again from their journaled URLs (0 new
    submits); `verify` finds the third, `--fix` sends it back, `download` fetches it."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(4))
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    gone, garbage, rewritten = (out / f"job-000{i}.mp4" for i in range(3))
    gone.unlink()
    garbage.write_bytes(b"garbage!")
    same_size = bytearray(rewritten.read_bytes())
    same_size[-1] ^= 0xFF
    rewritten.write_bytes(bytes(same_size))

    check = await run_cli(sim, "verify", str(job_file))
    assert check.code == 1, check.stderr
    assert check.stdout.splitlines() == [
        f"missing: job job-0000: {gone}: not on disk",
        f"size: job job-0001: {garbage}: 8 bytes on disk, {len(same_size):,} journaled",
        f"hash: job job-0002: {rewritten}: sha256 differs from the journal's",
        "verify: 3 problem(s) in 3 of 4 done job(s)",
    ]
    assert garbage.read_bytes() == b"garbage!"  # verify without --fix changes nothing

    again = await run_cli(sim, "download", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    warned = {e.get("job") for e in again.events if e["event"] == "warning"}
    assert warned == {"job-0000", "job-0001"}
    by_id = {e["id"]: e for e in read_manifest(out)}
    for job_id in ("job-0000", "job-0001", "job-0003"):
        assert_byte_exact(sim, out, by_id[job_id])
    assert again.summary["counts"]["done"] == 4
    assert sim.stats()["submits_accepted"] == 4

    check = await run_cli(sim, "verify", str(job_file), "--fix")
    assert check.code == 1, check.stderr
    assert check.stdout.splitlines()[:2] == [
        f"hash: job job-0002: {rewritten}: sha256 differs from the journal's",
        "verify: 1 problem(s) in 1 of 4 done job(s)",
    ]
    assert "moved back to succeeded" in check.stdout
    fixed = await run_cli(sim, "download", str(job_file), *FAST)
    assert fixed.code == 0, fixed.stderr
    for entry in read_manifest(out):
        assert_byte_exact(sim, out, entry)
    assert sim.stats()["submits_accepted"] == 4
    assert sim.stats()["duplicate_submits"] == 0

    clean = await run_cli(sim, "verify", str(job_file))
    assert (clean.code, clean.stdout) == (0, "verify: 4 done job(s), every file as journaled\n")


async def test_a_missing_result_whose_url_expired_ends_expired(simulator, tmp_path: Path) -> None:
    """The URL of a deleted result has expired: the job ends `expired`, the manifest
    claims no file for it, and nothing is submitted again."""
    sim = await simulator(time_scale=0.01, results_per_task=1, expiry_s=250.0)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    (out / "job-0000.mp4").unlink()
    await asyncio.sleep(3.0)  # 250 s x 0.01: every result URL has expired
    again = await run_cli(sim, "download", str(job_file), *FAST)
    assert again.code == 1, again.stderr
    by_id = {e["id"]: e for e in read_manifest(out)}
    assert by_id["job-0000"]["state"] == "expired"
    assert by_id["job-0000"]["files"] == []
    assert_byte_exact(sim, out, by_id["job-0001"])
    assert sim.stats()["submits_accepted"] == 2
