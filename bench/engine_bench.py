"""Engine benchmarks against the simulator (issue 4): prints figures, asserts nothing.

    python bench/engine_bench.py [rate concurrency overhead bigfile] [--repeat N] [--jobs N]

rate         600 jobs, --rpm 3000, --max-concurrent 200, generations of ~0.5-0.7 s:
             tasks/s against the bound (rpm/60)/2, requests per task, 429s.
concurrency  --max-concurrent 100, generations of 5-7 s, rpm not binding:
             tasks/s against max_concurrent / mean generation time.
overhead     2,000 jobs with up to 999 in flight: engine CPU s per 1,000 tasks, peak RSS;
             the file system of the run is named (it shows in the CPU, see _harness.disk).
             Runs move by about 10 % from one to the next: --repeat 3 for a median;
             --jobs N for a larger campaign (the once-per-run CPU weighs less).
bigfile      one 300 MB result through the engine: peak RSS and MB/s against curl.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    campaign,
    disk,
    engine_code,
    reference_cpu_ms,
    run_engine,
    simulator,
    workdir,
)

# Work directories are deleted when the benchmark ends, not after each run: on ext4
# without a journal, deleting a run's 2,000 files makes the next run's file creations
# pay for scanning past them (see _harness.disk): the benchmark measuring itself.
_KEPT = contextlib.ExitStack()
atexit.register(_KEPT.close)


def _kept_workdir() -> Path:
    return _KEPT.enter_context(workdir())


def rate() -> None:
    wd = _kept_workdir()
    job_file = campaign(wd, 600)
    with simulator(wd, time_scale=0.01, rpm_limit=3000, concurrency_limit=200) as sim:
        m = run_engine(
            sim, job_file, "--rpm", "3000", "--max-concurrent", "200", "--time-scale", "0.01"
        )
        stats = sim.stats()
    bound = (3000 / 60) / 2
    tps = 600 / m.wall_s
    steady = m.steady_rate(warmup_s=1.0)
    print(
        f"rate-bound    600 jobs in {m.wall_s:.1f} s = {tps:.1f} tasks/s overall, "
        f"{steady:.1f} steady; bound {bound:.1f} -> {tps / bound:.2f} overall, "
        f"{steady / bound:.2f} steady; {stats['api_requests_total'] / 600:.2f} requests/task; "
        f"{stats['rate_limited']} x 429; exit {m.code}"
    )


def concurrency() -> None:
    n, limit = 600, 100
    wd = _kept_workdir()
    job_file = campaign(wd, n)
    with simulator(wd, time_scale=0.1, concurrency_limit=limit) as sim:
        m = run_engine(
            sim,
            job_file,
            "--max-concurrent",
            str(limit),
            "--rpm",
            "9999",
            "--time-scale",
            "0.1",
        )
        stats = sim.stats()
    mean_gen = 6.0  # kling-2-6 5 s: 50-70 s documented, x 0.1
    bound = limit / mean_gen
    tps = n / m.wall_s
    # Steady state: after the first wave could have finished, until the last submit
    # (the overall figure also pays the ramp-up and the drain of the last wave).
    steady = m.steady_rate(warmup_s=7.0)
    print(
        f"concurrency   {n} jobs in {m.wall_s:.1f} s = {tps:.1f} tasks/s overall, "
        f"{steady:.1f} steady; bound {bound:.1f} -> {tps / bound:.2f} overall, "
        f"{steady / bound:.2f} steady; peak in flight {stats['max_concurrent_tasks']}; "
        f"{stats['api_requests_total'] / n:.2f} requests/task; exit {m.code}"
    )


def overhead(n: int = 2000) -> float:
    wd = _kept_workdir()
    where = disk(wd)
    job_file = campaign(wd, n)
    # Generations of 15-21 s keep about 999 tasks in flight at once.
    # A balance for any --jobs: the pre-flight check must not refuse the campaign.
    with simulator(wd, time_scale=0.3, file_size=64 * 1024, balance=n * 10.0) as sim:
        flags = ("--max-concurrent", "999", "--rpm", "9999", "--time-scale", "0.3")
        m = run_engine(sim, job_file, *flags)
        stats = sim.stats()
        # The same command again on the finished campaign: what every run pays once
        # (interpreter, imports, job file, journal, manifest), whatever its size.
        fixed = run_engine(sim, job_file, *flags)
    per_task = (m.cpu_s - fixed.cpu_s) / n * 1000
    print(
        f"overhead      {n} jobs in {m.wall_s:.1f} s; engine CPU {m.cpu_s:.1f} s = "
        f"{m.cpu_s / n * 1000:.2f} s per 1,000 tasks; of it {fixed.cpu_s:.2f} s once per run "
        f"(the rerun, exit {fixed.code}), {per_task:.2f} s per 1,000 tasks beyond; "
        f"peak RSS {m.max_rss_mb:.0f} MB; peak in flight {stats['max_concurrent_tasks']}; "
        f"{stats['rate_limited']} x 429; exit {m.code}; {where}; "
        f"reference loop {reference_cpu_ms():.0f} ms CPU; engine code {engine_code()}"
    )
    return m.cpu_s / n * 1000


def bigfile() -> None:
    size = 300 * 1024 * 1024
    wd = _kept_workdir()
    job_file = campaign(wd, 1)
    with simulator(wd, time_scale=0.01, file_size=size) as sim:
        t0 = time.monotonic()
        m = run_engine(sim, job_file, "--time-scale", "0.01")
        total = time.monotonic() - t0
        entry = json.loads((wd / "out" / "manifest.jsonl").read_text().splitlines()[0])
        at = {e["event"]: e["at"] for e in m.events if e.get("job")}
        dl_s = at["downloaded"] - at["succeeded"]
        url = entry["result_urls"][0]
        engine_s = total  # includes submit + one poll (~0.7 s of generation)
        curl_s = None
        if shutil.which("curl"):
            t1 = time.monotonic()
            subprocess.run(["curl", "-s", "-o", str(wd / "curl.mp4"), url], check=True)
            curl_s = time.monotonic() - t1
    mb = size / 1e6
    line = (
        f"bigfile       300 MB result: whole run {engine_s:.1f} s, download {dl_s:.2f} s "
        f"({mb / dl_s:.0f} MB/s, hashed + fsynced), peak RSS {m.max_rss_mb:.0f} MB, "
        f"state {entry['state']}"
    )
    if curl_s:
        line += (
            f"; curl -o on the same URL {curl_s:.2f} s ({mb / curl_s:.0f} MB/s) -> "
            f"{curl_s / dl_s:.2f} of curl"
        )
    print(line)


SCENARIOS: dict[str, Callable[[], object]] = {
    "rate": rate,
    "concurrency": concurrency,
    "overhead": overhead,
    "bigfile": bigfile,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the overhead scenario")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    for name in args.scenarios or list(SCENARIOS):
        if name != "overhead":
            for _ in range(args.repeat):
                SCENARIOS[name]()
            continue
        figures = sorted(overhead(args.jobs) for _ in range(args.repeat))
        if args.repeat > 1:
            print(
                f"overhead      median of {args.repeat} runs: {statistics.median(figures):.2f} s "
                f"per 1,000 tasks (runs: {', '.join(f'{f:.2f}' for f in figures)})"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
