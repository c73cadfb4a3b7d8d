"""Callback mode end to end: the real CLI, its built-in receiver and the simulator."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
from e2e import (
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

from apixo_batch.journal import Journal

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def callback_args(port: int) -> list[str]:
    return ["--callback-url", f"http://127.0.0.1:{port}/apixo", "--listen", f"127.0.0.1:{port}"]


async def test_callback_mode_all_done_with_few_requests(simulator, tmp_path: Path) -> None:
    """Every result arrives by callback; about one API request per task."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(30))
    res = await run_cli(sim, "run", str(job_file), *FAST, *callback_args(free_port()))
    assert res.code == 0, res.stderr + res.stdout[-3000:]
    manifest = read_manifest(tmp_path / "out")
    assert all(e["arrived_via"] == "callback" for e in manifest)
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    stats = sim.stats()
    assert stats["api_requests_total"] / 30 <= 1.1
    assert stats["callbacks_delivered"] >= 30
    assert res.summary["arrived"] == {"callback": 30}


async def test_dropped_callbacks_recovered_by_safety_net_polls(simulator, tmp_path: Path) -> None:
    """Half the webhooks never come: safety-net polling still brings every result home."""
    sim = await simulator(time_scale=0.01, callback_drop_rate=0.5, seed=3)
    job_file = write_campaign(tmp_path, simple_jobs(20))
    res = await run_cli(sim, "run", str(job_file), *FAST, *callback_args(free_port()))
    assert res.code == 0, res.stderr + res.stdout[-3000:]
    manifest = read_manifest(tmp_path / "out")
    via = {e["arrived_via"] for e in manifest}
    assert via == {"callback", "poll"}
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_duplicated_and_delayed_callbacks_are_harmless(simulator, tmp_path: Path) -> None:
    """Every callback twice and late: each job settles once, files byte-exact."""
    sim = await simulator(time_scale=0.01, callback_duplicate_rate=1.0, callback_delay_s=0.3)
    job_file = write_campaign(tmp_path, simple_jobs(10))
    res = await run_cli(sim, "run", str(job_file), *FAST, *callback_args(free_port()))
    assert res.code == 0, res.stderr + res.stdout[-3000:]
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 10
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    succeeded = [e for e in res.events if e["event"] == "succeeded"]
    assert len(succeeded) == 10  # settled once each


async def test_forged_callbacks_rejected_and_change_nothing(simulator, tmp_path: Path) -> None:
    """Wrong token 403, unknown task 404, oversized 413: the journal is untouched."""
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    port = free_port()
    job_file = write_campaign(tmp_path, simple_jobs(2))
    proc = await start_cli(sim, "run", str(job_file), *FAST, *callback_args(port))
    await kill_when(proc, lambda: journaled_task_ids(tmp_path / "out") >= 2, sig=0)
    journal = Journal(tmp_path / "out" / ".apixo-batch.sqlite", lock=False)
    token = journal.get_meta("callback_token")
    assert token
    task_id = next(iter(sim.tasks))
    forged = {
        "code": 200,
        "message": "success",
        "data": {
            "taskId": task_id,
            "state": "success",
            "resultJson": '{"resultUrls":["http://127.0.0.1:1/evil.mp4"]}',
        },
    }
    base = f"http://127.0.0.1:{port}/apixo"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/not-the-token-at-all-xxxxxxxxxx", json=forged) as r:
            assert r.status == 403
        async with http.post(base, json=forged) as r:
            assert r.status == 403
        unknown = {**forged, "data": {**forged["data"], "taskId": "task_doesnotexist"}}
        async with http.post(f"{base}/{token}", json=unknown) as r:
            assert r.status == 404
        async with http.post(f"{base}/{token}", data=b"{" + b" " * 200_000 + b"}") as r:
            assert r.status == 413
        async with http.post(f"{base}/{token}", data=b"not json") as r:
            assert r.status == 400
    rows = journal.in_states(list(__import__("apixo_batch.journal").journal.JobState))
    assert all(r.state == "submitted" and not r.result_urls for r in rows)
    journal.close()
    res = await finish(proc)
    assert res.code == 0, res.stderr + res.stdout[-3000:]
    for entry in read_manifest(tmp_path / "out"):
        assert "evil" not in "".join(entry["result_urls"])
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_restart_while_callbacks_due_recovers_every_result(simulator, tmp_path: Path) -> None:
    """Killed while callbacks are due (they fail): the rerun polls and recovers them all."""
    sim = await simulator(
        time_scale=0.01,
        duration_override_s=(0.5, 0.8),
        callback_retries=1,
        callback_retry_delays_s=[1.0],
    )
    port = free_port()
    job_file = write_campaign(tmp_path, simple_jobs(12))
    proc = await start_cli(sim, "run", str(job_file), *FAST, *callback_args(port))
    # Killed once every task id is journaled: the callbacks then have nowhere to go.
    await kill_when(proc, lambda: journaled_task_ids(tmp_path / "out") >= 12)
    await finish(proc)
    res = await run_cli(sim, "run", str(job_file), *FAST, *callback_args(port))
    assert res.code == 0, res.stderr + res.stdout[-3000:]
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 12
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    assert sim.stats()["duplicate_submits"] == 0
