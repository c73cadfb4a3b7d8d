"""compare.py's slot-bound campaign alone, then with ``review --serve`` open and polling.

Issue 36, deliverable 5: a campaign running at full speed on the same machine keeps its
figures with the live review page open. The same campaign as compare.py (50 slots,
``--time-scale 0.05``, every model and mode, the simulator's request budget, seed 19),
``apixo-batch run`` with polling, twice on a fresh simulator each time:

* **alone**: nothing else;
* **page open**: as soon as the run has created its journal, ``apixo-batch review
  JOBFILE --serve`` starts on it (a process of its own, as a user would start it) and a
  client asks it what the page asks, with the page's token: the page, the first cards,
  every job, then ``/api/changes`` a second after each answer (the page's ``setTimeout``
  of ``poll_ms``) until the run exits.

Printed for both: slots busy in steady state, lower bound / wall time, requests per
task, wall and CPU seconds of the run, and page open over alone for each; for the page
open, the polls made, their median and p95 latency, and the review server's CPU.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \\
        /work/main/bench/compare_live.py [--jobs 800] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import engine_cmd, load, measure, pct  # noqa: E402
from _harness import KEY, busy_and_bound, mixed_campaign, simulator, task_timings, workdir  # noqa: E402
from compare import RPM, SCALE, SLOTS, _fmt  # noqa: E402

POLL_S = 1.0
JOURNAL = ".apixo-batch.sqlite"


async def _page(url: str, done: asyncio.Event) -> dict[str, Any]:
    """What the page asks, until ``done``: its HTML, the first cards, every job when the
    first answer is not complete, then a poll a second after each answer."""
    base, token = url.split("/#token=")
    auth = {"X-Review-Token": token}
    polls: list[float] = []
    failed = 0
    async with aiohttp.ClientSession(base) as session:
        async with session.get("/") as r:
            assert r.status == 200, await r.text()
            await r.read()
        async with session.get("/api/jobs?limit=300", headers=auth) as r:
            assert r.status == 200, await r.text()
            first = await r.json()
        cursor, seq = first["cursor"], first["seq"]
        if not first["complete"]:
            async with session.get("/api/jobs", headers=auth) as r:
                every = await r.json()
            seq = min(seq, every["seq"])
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), POLL_S)
                break
            except TimeoutError:
                pass
            t0 = time.perf_counter()
            async with session.get(f"/api/changes?since={cursor}&seq={seq}", headers=auth) as r:
                if r.status != 200:
                    failed += 1
                    continue
                got = await r.json()
            polls.append((time.perf_counter() - t0) * 1000)
            cursor, seq = got["cursor"], got["seq"]
    return {"polls": polls, "failed": failed}


async def _beside(
    job_file: Path, out_dir: Path, env: dict[str, str], done: asyncio.Event
) -> dict[str, Any]:
    """Wait for the run's journal, serve the review page on it and poll it until ``done``;
    the server's CPU seconds come from its rusage once it exits."""
    journal = out_dir / JOURNAL
    # The run creates the journal on its start; review --serve refuses a missing one.
    while not journal.exists():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.05)
        if done.is_set():
            break
    if done.is_set():
        return {"polls": [], "failed": 0, "server_cpu_s": None}
    cmd = [sys.executable, "-m", "apixo_batch", "review", str(job_file), "--serve"]
    # Popen rather than asyncio's subprocess: its child watcher would reap the server and
    # lose the rusage that os.wait4 gives below.
    server = await asyncio.to_thread(
        subprocess.Popen, cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert server.stdout is not None
    try:
        line = (await asyncio.to_thread(server.stdout.readline)).decode().strip()
        if not line.startswith("review page: "):
            err = server.stderr.read().decode() if server.stderr else ""
            raise RuntimeError(f"review --serve did not start: {line!r} {err!r}")
        got = await _page(line.removeprefix("review page: "), done)
    finally:
        server.send_signal(signal.SIGTERM)
        _, _, usage = await asyncio.to_thread(os.wait4, server.pid, 0)
    return {**got, "server_cpu_s": usage.ru_utime + usage.ru_stime}


async def _run_with(
    cmd: list[str], env: dict[str, str], job_file: Path, out_dir: Path, page: bool
) -> tuple[Any, dict[str, Any]]:
    done = asyncio.Event()
    beside = asyncio.create_task(_beside(job_file, out_dir, env, done)) if page else None
    try:
        proc = await asyncio.to_thread(measure, cmd, env)
    finally:
        done.set()
    extra = await beside if beside is not None else {}
    return proc, extra


def one(page: bool, jobs: int) -> dict[str, Any]:
    cfg = {
        "time_scale": SCALE,
        "balance": 1e9,
        "file_size": 64 << 10,
        "concurrency_limit": SLOTS,
        "rpm_limit": RPM,
        "seed": 19,
    }
    with workdir() as wd:
        job_file, _ = mixed_campaign(wd, jobs)
        with simulator(wd, **cfg) as sim:
            env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            cmd = engine_cmd(job_file, "--max-concurrent", str(SLOTS))
            cmd += ["--time-scale", str(SCALE)]
            proc, extra = asyncio.run(_run_with(cmd, env, job_file, wd / "out", page))
            stats = sim.stats()
            timings = task_timings(sim)
    summary = proc.lines[-1] if proc.lines else {}
    done = summary.get("counts", {}).get("done") if "counts" in summary else summary.get("done")
    out = busy_and_bound(timings, SLOTS, SCALE)
    polls = extra.get("polls", [])
    return {
        **out,
        "code": proc.code,
        "done": done,
        "ratio": out["bound_s"] / proc.wall_s,
        "wall_s": proc.wall_s,
        "cpu_s": proc.cpu_s,
        "per_task": stats["api_requests_total"] / jobs,
        "429s": stats["rate_limited"],
        "polls": len(polls) if page else None,
        "poll_failed": extra.get("failed") if page else None,
        "poll_p50": statistics.median(polls) if polls else None,
        "poll_p95": pct(polls, 0.95) if polls else None,
        "server_cpu_s": extra.get("server_cpu_s") if page else None,
    }


KEYS = (
    ("busy", "slots busy in steady state", "{:.3f}"),
    ("ratio", "lower bound / wall time", "{:.3f}"),
    ("per_task", "requests per task", "{:.2f}"),
    ("429s", "429s", "{:.0f}"),
    ("done", "done", "{:.0f}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("cpu_s", "run CPU s", "{:.1f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(
        f"## {args.jobs} jobs, every model and mode, {SLOTS} slots, rpm {RPM} (real), "
        f"time_scale {SCALE}, polling, {args.repeat} run(s) each side; {load()}\n"
    )
    # Alternate the sides so that a neighbour's load lands on both alike.
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.repeat):
        for page in (False, True):
            results[page].append(one(page, args.jobs))
    head = ["apixo-batch run", *(label for _, label, _ in KEYS)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for page, name in ((False, "alone"), (True, "review --serve open, polling")):
        runs = results[page]
        row = [name, *(_fmt([r[k] for r in runs], fmt) for k, _, fmt in KEYS)]
        print("| " + " | ".join(row) + " |")
    ratios = ["page open / alone"]
    for k, _, _ in KEYS:
        a = [r[k] for r in results[False] if isinstance(r[k], (int, float))]
        b = [r[k] for r in results[True] if isinstance(r[k], (int, float))]
        ratios.append(
            f"{statistics.median(b) / statistics.median(a):.3f}"
            if a and b and statistics.median(a)
            else "-"
        )
    print("| " + " | ".join(ratios) + " |")
    live = results[True]
    print(
        f"\nPage open: {_fmt([r['polls'] for r in live], '{:.0f}')} polls "
        f"({_fmt([r['poll_failed'] for r in live], '{:.0f}')} not answered 200), poll latency "
        f"median {_fmt([r['poll_p50'] for r in live], '{:.1f}')} ms, "
        f"p95 {_fmt([r['poll_p95'] for r in live], '{:.1f}')} ms; "
        f"review server CPU {_fmt([r['server_cpu_s'] for r in live], '{:.2f}')} s; "
        f"exit codes {[r['code'] for r in results[False]]} / {[r['code'] for r in live]}; {load()}"
    )
    print("Wall and CPU in real seconds of the run process.")
    print("Reproduce: .venv/bin/python bench/compare_live.py", *sys.argv[1:])


if __name__ == "__main__":
    main()
