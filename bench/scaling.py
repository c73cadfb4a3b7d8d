"""How the engine's wall time, CPU and peak RSS grow from 1,000 to 100,000 jobs (issue 7, item 4).

A whole 100,000-job run at <= 9,999 requests a minute is ~20 minutes of API
pacing (>= 2 requests a task), so two measurements, both against a simulator
subprocess (time_scale 0.01, 16 KB files, balance unlimited), the engine at
``--rpm 9999 --max-concurrent 999``, measured alone with os.wait4:

(a) full runs (default 1,000, 3,000, 10,000 jobs): wall, tasks/s, CPU s,
    CPU s per 1,000 tasks, peak RSS, requests/task, 429s;
(b) 60-second slices (default 1,000, 10,000, 100,000 jobs): ``apixo-batch run``
    loads, validates and journals every row, then submits, polls and downloads
    at full rate; after --slice-s seconds it gets SIGTERM. Reported: peak RSS
    (the whole life, shutdown and manifest included), jobs done, seconds to
    the first submit, seconds from SIGTERM to exit. A small run finishes
    before the slice ends (marked "finished").

    .venv/bin/python bench/scaling.py [--full 1000,3000,10000] [--slice 1000,10000,100000]
        [--slice-s 60] [--quick]          # --quick: --full 1000,3000 --slice 1000,10000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Proc, engine_cmd, load, measure
from _harness import KEY, campaign, simulator, workdir

SCALE = 0.01
SIM = {"time_scale": SCALE, "file_size": 16 << 10, "balance": 1e9}
ARGS = ("--rpm", "9999", "--max-concurrent", "999", "--time-scale", str(SCALE))


def run(n: int, stop_after_s: float | None) -> tuple[Proc, dict[str, Any]]:
    with workdir() as wd:
        job_file = campaign(wd, n)
        with simulator(wd, **SIM) as sim:
            env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            proc = measure(engine_cmd(job_file, *ARGS), env, stop_after_s)
            return proc, sim.stats()


def count(proc: Proc, kind: str) -> int:
    return sum(1 for e in proc.lines if e.get("event") == kind)


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", type=sizes, default=[1000, 3000, 10000])
    parser.add_argument("--slice", type=sizes, default=[1000, 10000, 100000])
    parser.add_argument("--slice-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="--full 1000,3000 --slice 1000,10000")
    args = parser.parse_args()
    if args.quick:
        args.full, args.slice = [1000, 3000], [1000, 10000]
    bad = 0
    print(f"## engine scaling (time_scale {SCALE}, {' '.join(ARGS[:4])}, 16 KB files)\n")
    if args.full:
        print(f"### (a) full runs; {load()} at start\n")
        rows = []
        for n in args.full:
            p, s = run(n, None)
            done = count(p, "downloaded")
            bad += p.code != 0
            rows.append(
                [
                    f"{n:,}",
                    f"{done:,}",
                    f"{p.wall_s:.1f}",
                    f"{done / p.wall_s:.1f}",
                    f"{p.cpu_s:.1f}",
                    f"{p.cpu_s / n * 1000:.2f}",
                    f"{p.max_rss_mb:.0f}",
                    f"{s['api_requests_total'] / n:.2f}",
                    str(s["rate_limited"]),
                    f"{p.code} ({load()})",
                ]
            )
        head = ["jobs", "done", "wall s", "tasks/s", "CPU s", "CPU s / 1,000 tasks"]
        head += ["peak RSS MB", "requests/task", "429s", "exit (load after)"]
        table(head, rows)
    if args.slice:
        print(f"### (b) {args.slice_s:.0f}-second slices, then SIGTERM; {load()} at start\n")
        rows = []
        for n in args.slice:
            p, s = run(n, args.slice_s)
            subs = [e["at"] for e in p.lines if e.get("event") == "submitted"]
            first = f"{subs[0] - p.started_at:.1f}" if subs else "none"
            stop = f"{p.wall_s - args.slice_s:.1f}" if p.stopped else "finished"
            rows.append(
                [
                    f"{n:,}",
                    f"{p.max_rss_mb:.0f}",
                    f"{count(p, 'downloaded'):,}",
                    f"{len(subs):,}",
                    first,
                    f"{p.cpu_s:.1f}",
                    stop,
                    f"{p.code} ({load()})",
                ]
            )
        head = ["jobs in file", "peak RSS MB", "done", "submitted", "s to first submit"]
        head += ["CPU s", "s from SIGTERM to exit", "exit (load after)"]
        table(head, rows)
    print(f"{load()} at end. One run per size: compare rows of the same table only.")
    print("Reproduce: .venv/bin/python bench/scaling.py", *sys.argv[1:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
