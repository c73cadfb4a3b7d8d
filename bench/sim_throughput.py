"""How many requests a second the simulator answers, so engine benchmarks know it is not their
bottleneck.

Starts ``apixo-batch simulate`` in a subprocess on 127.0.0.1 (as the engine
sees it: another process), then drives it from this process with aiohttp at a
fixed concurrency: each worker submits a task and polls it a few times, the
mix a polling engine produces. Prints requests/s and p50/p99 latency per
route, then a short download phase (MB/s of the file route).

    .venv/bin/python bench/sim_throughput.py [--requests 6000] [--concurrency 32]
        [--polls 4] [--downloads 40] [--file-mb 1] [--in-process] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from apixo_batch.simulator import SimConfig, run_simulator

KEY = "bench-key"
INP = {"mode": "text-to-video", "prompt": "bench", "duration": 5, "sound": False}


def _settings(file_mb: float) -> dict[str, Any]:
    # Limits out of the way: this measures the server, not its 429s.
    return {
        "api_key": KEY,
        "rpm_limit": 10**9,
        "concurrency_limit": 10**9,
        "balance": 10.0**9,
        "duration_override_s": [0.2, 0.5],
        "file_size": int(file_mb * 1_000_000),
    }


@contextlib.asynccontextmanager
async def subprocess_simulator(file_mb: float) -> AsyncIterator[tuple[str, int | None]]:
    """``apixo-batch simulate`` in a child process; yields its root URL and pid."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sim.yaml"
        settings = {k: v for k, v in _settings(file_mb).items() if k != "api_key"}
        config.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apixo_batch",
            "simulate",
            "--port",
            "0",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "APIXO_API_KEY": KEY},
        )
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            match = re.search(r"listening on (\S+)", line)
            if not match:
                raise RuntimeError(f"simulator did not start: {line!r}")
            yield match.group(1), proc.pid
        finally:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.communicate(), 30)


@contextlib.asynccontextmanager
async def inprocess_simulator(file_mb: float) -> AsyncIterator[tuple[str, int | None]]:
    async with run_simulator(SimConfig.model_validate(_settings(file_mb))) as sim:
        yield sim.url, None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(root: str, requests: int, concurrency: int, polls: int) -> dict[str, Any]:
    """Submit-and-poll workers until ``requests`` requests have been answered."""
    base = root + "/api/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    latencies: defaultdict[str, list[float]] = defaultdict(list)
    codes: defaultdict[int, int] = defaultdict(int)
    budget = requests
    task_ids: list[str] = []

    async def call(
        session: aiohttp.ClientSession, route: str, method: str, url: str, **kw: Any
    ) -> Any:
        started = time.perf_counter()
        async with session.request(method, url, headers=headers, **kw) as resp:
            body = await resp.json()
        latencies[route].append(time.perf_counter() - started)
        codes[resp.status] += 1
        return body

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal budget
        while budget > 0:
            budget -= 1
            body = {"request_type": "async", "input": {**INP, "prompt": f"bench {n} {budget}"}}
            answer = await call(
                session, "submit", "POST", f"{base}/generateTask/kling-2-6", json=body
            )
            task_id = answer["data"]["taskId"]
            task_ids.append(task_id)
            for _ in range(polls):
                if budget <= 0:
                    break
                budget -= 1
                url = f"{base}/statusTask/kling-2-6"
                await call(session, "status", "GET", url, params={"taskId": task_id})

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        async with session.get(f"{root}/_sim/stats") as resp:
            stats = await resp.json()
    everything = [x for values in latencies.values() for x in values]
    return {
        "requests": len(everything),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(everything) / elapsed, 1),
        "p50_ms": round(_pct(everything, 0.5), 2),
        "p99_ms": round(_pct(everything, 0.99), 2),
        "by_route": {
            route: {
                "count": len(values),
                "p50_ms": round(_pct(values, 0.5), 2),
                "p99_ms": round(_pct(values, 0.99), 2),
                "mean_ms": round(statistics.fmean(values) * 1000, 2),
            }
            for route, values in latencies.items()
        },
        "status_codes": dict(codes),
        "server_counted": stats["api_requests_total"],
        "task_ids": task_ids,
    }


async def downloads(root: str, task_ids: list[str], concurrency: int) -> dict[str, Any]:
    """Fetch the results of ``task_ids`` at ``concurrency``; MB/s of the file route."""
    todo: list[str] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        for task_id in task_ids:
            url = f"{root}/api/v1/statusTask/kling-2-6"
            async with session.get(url, params={"taskId": task_id}) as resp:
                data = (await resp.json())["data"]
            todo += json.loads(data["resultJson"])["resultUrls"]
    total = 0
    slots = asyncio.Semaphore(concurrency)

    async def fetch(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal total
        async with slots, session.get(url) as resp:
            async for chunk in resp.content.iter_chunked(1 << 16):
                total += len(chunk)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(fetch(session, u) for u in todo))
        elapsed = time.perf_counter() - started
    return {
        "files": len(todo),
        "MB": round(total / 1e6, 1),
        "MB_per_s": round(total / 1e6 / elapsed, 1),
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--polls", type=int, default=4, help="status calls per submit")
    parser.add_argument("--downloads", type=int, default=40)
    parser.add_argument("--file-mb", type=float, default=1.0)
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    start = inprocess_simulator if args.in_process else subprocess_simulator
    async with start(args.file_mb) as (root, pid):
        await drive(root, 200, args.concurrency, args.polls)  # warm-up: connections, imports
        cpu_before = cpu_seconds(pid)
        result = await drive(root, args.requests, args.concurrency, args.polls)
        cpu_after = cpu_seconds(pid)
        if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
            # What one fully busy core of the server would answer: the client shares
            # this machine, so the measured rate understates the server's capacity.
            result["server_cpu_s"] = round(cpu_after - cpu_before, 2)
            result["capacity_per_core"] = round(result["requests"] / (cpu_after - cpu_before))
        task_ids = result.pop("task_ids")
        if args.downloads and task_ids:
            await asyncio.sleep(0.6)  # every task has finished by now (0.2-0.5 s each)
            result["downloads"] = await downloads(root, task_ids[: args.downloads], 8)
    result["mode"] = "in-process" if args.in_process else "subprocess"
    result["concurrency"] = args.concurrency
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"simulator ({result['mode']}), concurrency {args.concurrency}: "
            f"{result['requests']} requests in {result['seconds']} s = "
            f"{result['requests_per_s']} req/s, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
        )
        if "capacity_per_core" in result:
            print(
                f"  server CPU {result['server_cpu_s']} s: "
                f"~{result['capacity_per_core']} req/s per fully busy core"
            )
        for route, row in result["by_route"].items():
            print(f"  {route:7s} {row['count']:6d}  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms")
        if "downloads" in result:
            d = result["downloads"]
            print(f"  files   {d['files']} x {args.file_mb} MB: {d['MB_per_s']} MB/s")
    return result


if __name__ == "__main__":
    asyncio.run(main())
