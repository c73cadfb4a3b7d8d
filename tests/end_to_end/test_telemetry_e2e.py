"""--notify and the metrics end to end: the real CLI against the simulator, notifications
through Apprise's JSON webhook to a receiver on 127.0.0.1, /metrics scraped mid-run and
the textfile read after, both parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from e2e import SIM_KEY, cli_env, finish, run_cli, run_env, simple_jobs, start_cli, write_campaign
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    url: str
    posts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def receiver(*, hang: bool = False) -> AsyncIterator[Receiver]:
    """A JSON webhook on 127.0.0.1: records each post (when, payload), or never answers."""
    never = asyncio.Event()
    got: Receiver = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        got.posts.append((time.time(), await request.json()))
        if hang:
            await never.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    got.url = f"json://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        never.set()
        await runner.cleanup()


def samples(text: str) -> dict[str, list[Sample]]:
    """Every sample by metric family name, through prometheus_client's own parser."""
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    for family_samples in found.values():
        for s in family_samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


FAST = ["--time-scale", "0.01", "--json"]


async def test_end_notification_from_the_job_file_reaches_the_webhook(
    simulator, tmp_path: Path
) -> None:
    """notify: in the job file, its port from ${ENV}: one end message with the campaign,
    the counts, the exit code and its meaning, the review page; never the key."""
    sim = await simulator(time_scale=0.01)
    async with receiver() as hook:
        port = hook.url.rsplit(":", 1)[1].split("/")[0]
        job_file = write_campaign(
            tmp_path,
            simple_jobs(3),
            name="nightly",
            notify=["json://127.0.0.1:${HOOK_PORT}/hook"],
        )
        env = {**cli_env(sim), "HOOK_PORT": port}
        res = await run_env("run", str(job_file), *FAST, env=env)
        assert res.code == 0, res.stderr
        assert len(hook.posts) == 1, hook.posts
        received_at, payload = hook.posts[0]
    assert payload["title"] == "apixo-batch nightly: exit 0, every job done"
    assert payload["type"] == "success"
    body = payload["message"]
    assert "3 done" in body and "spent $0.90" in body
    assert "review: " in body and "review.html" in body
    assert SIM_KEY not in str(payload)
    assert "\n" not in body  # one chat line
    # Sent when the summary is emitted, not when the process is done.
    assert received_at - res.summary["at"] < 2.0


async def test_stop_and_end_are_told_once_each_and_never_carry_the_key(
    simulator, tmp_path: Path
) -> None:
    """A key the API refuses: one stop message, one end message (exit 3), and the key in
    neither, though the refusal is quoted."""
    sim = await simulator(time_scale=0.01)
    bad_key = "sk-live-DO-NOT-LEAK-0123456789"
    async with receiver() as hook:
        job_file = write_campaign(tmp_path, simple_jobs(4))
        res = await run_cli(sim, "run", str(job_file), *FAST, "--notify", hook.url, key=bad_key)
        assert res.code == 3, res.stderr
        kinds = [p["title"] for _, p in hook.posts]
    assert len(kinds) == 2, kinds
    assert any("stopped submitting (" in t for t in kinds)
    assert any(t.startswith("apixo-batch e2e: exit 3,") for t in kinds)
    assert all(bad_key not in str(p) for _, p in hook.posts)


async def test_budget_stop_with_notify_on_end_only_sends_the_end(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    async with receiver() as hook:
        job_file = write_campaign(tmp_path, simple_jobs(4))
        res = await run_cli(
            sim,
            "run",
            str(job_file),
            *FAST,
            "--budget",
            "0.5",
            "--notify",
            hook.url,
            "--notify-on",
            "end",
        )
        assert res.code == 1, res.stderr
    assert [p["title"] for _, p in hook.posts] == [
        "apixo-batch e2e: exit 1, some jobs failed, expired or are left pending"
    ]
    assert "stopped: --budget" in hook.posts[0][1]["message"]


async def test_a_hanging_and_a_refusing_receiver_cost_a_warning_and_under_10_s(
    simulator, tmp_path: Path
) -> None:
    """One URL never answers, one refuses the connection: the run exits as it would
    without them, each told in one warning line, within 10 s of its summary."""
    sim = await simulator(time_scale=0.01)
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens once it is closed
    async with receiver(hang=True) as hook:
        job_file = write_campaign(tmp_path, simple_jobs(2))
        res = await run_cli(
            sim,
            "run",
            str(job_file),
            *FAST,
            "--notify",
            hook.url,
            "--notify",
            f"json://127.0.0.1:{closed_port}/x",
        )
        ended = time.time()
    assert res.code == 0, res.stderr
    assert len(hook.posts) == 1  # the hanging one got it, and never answered
    delay = ended - res.summary["at"]
    assert delay < 10.0, f"the end was delayed {delay:.1f} s"
    warnings = [line for line in res.stderr.splitlines() if "notification" in line]
    assert len(warnings) == 2, res.stderr
    assert any("notify URL 2 (json://…)" in w for w in warnings)
    assert "Traceback" not in res.stderr
    assert str(closed_port) not in res.stderr  # the URL is not repeated: it may hold a token


async def test_metrics_scraped_mid_run_and_the_textfile_after(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.05)
    textfile = tmp_path / "apixo.prom"
    job_file = write_campaign(tmp_path, simple_jobs(6))
    proc = await start_cli(
        sim,
        "run",
        str(job_file),
        "--time-scale",
        "0.05",
        "--json",
        "--metrics-port",
        "0",
        "--metrics-textfile",
        str(textfile),
    )
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert line.startswith("apixo-batch: metrics on http://127.0.0.1:"), line
    url = line.split("metrics on ", 1)[1].strip()
    mid: dict[str, list[Sample]] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(500):
            async with session.get(url) as resp:
                assert resp.status == 200
                text = await resp.text()
            mid = samples(text)
            if value(mid, "apixo_batch_submits_total", outcome="accepted") >= 1:
                break
            await asyncio.sleep(0.02)
    res = await finish(proc)
    assert res.code == 0, res.stderr
    assert value(mid, "apixo_batch_up", campaign="e2e") == 1
    assert value(mid, "apixo_batch_rpm_limit") > 0
    assert value(mid, "apixo_batch_run_start_time_seconds") > 0
    assert "job-0000" not in text and "scene number" not in text  # no job ids, no prompts
    allowed = {"campaign", "model", "state", "outcome", "kind", "le"}
    for fam_samples in mid.values():
        for s in fam_samples:
            assert set(s.labels) <= allowed, s

    after = samples(textfile.read_text())
    assert value(after, "apixo_batch_up") == 0
    assert value(after, "apixo_batch_exit_code") == 0
    assert value(after, "apixo_batch_jobs", model="kling-2-6", state="done") == 6
    assert value(after, "apixo_batch_submits_total", outcome="accepted") == 6
    assert value(after, "apixo_batch_downloads_total", outcome="landed") == 6
    assert value(after, "apixo_batch_downloaded_bytes_total") > 0
    assert value(after, "apixo_batch_generation_seconds_count", model="kling-2-6") == 6
    assert value(after, "apixo_batch_download_seconds_count", model="kling-2-6") == 6
    assert value(after, "apixo_batch_end_detection_seconds_count", model="kling-2-6") == 6
    assert value(after, "apixo_batch_polls_total", outcome="finished") == 6
    assert value(after, "apixo_batch_spent_usd") == pytest.approx(1.8)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".apixo.prom")]  # no tmp left


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--notify", "nonsense"], "notify URL 1 (?) is not one Apprise can send to"),
        (["--notify-on", "end,never"], "--notify-on: never"),
        (["--metrics-textfile", "/nonexistent-dir/x.prom"], "--metrics-textfile"),
    ],
)
async def test_bad_telemetry_options_are_one_line_and_exit_2(
    simulator, tmp_path: Path, args: list[str], says: str
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(1))
    res = await run_cli(sim, "run", str(job_file), *args)
    assert res.code == 2, res.stderr
    assert says in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 0


async def test_an_unset_variable_in_notify_names_the_entry(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(1), notify="${NO_SUCH_VAR_35}")
    res = await run_cli(sim, "run", str(job_file))
    assert res.code == 2
    assert "notify[0]" in res.stderr and "${NO_SUCH_VAR_35} is not set" in res.stderr
    assert sim.stats()["submits_accepted"] == 0


async def test_an_outage_is_told_as_a_stall_then_a_recovery(simulator, tmp_path: Path) -> None:
    """Connections refused for the campaign's first seconds with --notify-on
    stall,recover,end: one stall, one recovery, one end (exit 0), in that order."""
    # The window counts from the simulator's start, real seconds: it must outlast the CLI's
    # start-up on a loaded machine by the breaker's five failed calls (2.5 s did not).
    sim = await simulator(time_scale=0.01, duration_override_s=(0.4, 0.8), outages=[(0.0, 6.0)])
    async with receiver() as hook:
        job_file = write_campaign(tmp_path, simple_jobs(6))
        res = await run_cli(
            sim,
            "run",
            str(job_file),
            *FAST,
            "--notify",
            hook.url,
            "--notify-on",
            "stall,recover,end",
        )
        assert res.code == 0, res.stderr
        titles = [p["title"] for _, p in sorted(hook.posts, key=lambda tp: tp[0])]
    assert sim.outages_seen == 1
    assert titles == [
        "apixo-batch e2e: stalled, API unreachable",
        "apixo-batch e2e: recovered",
        "apixo-batch e2e: exit 0, every job done",
    ]
    warned = [e.get("about") for e in res.events if e["event"] == "warning"]
    assert warned.count("outage") == 1 and warned.count("recovered") == 1


async def test_a_metrics_port_in_use_is_one_line_and_exit_2(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(1))
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = await run_cli(sim, "run", str(job_file), "--metrics-port", str(port))
    assert res.code == 2, res.stderr
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sim.stats()["submits_accepted"] == 0
