"""Every benchmark, one after another: what ``make bench`` runs.

Each benchmark is a subprocess (``sys.executable``) with a header before it;
a failing one does not stop the others, and the exit status is 1 when any
failed. ``--quick`` shortens scaling.py (no 10,000-job run, no 100,000-job
slice), leaves out cpu_compare.py's 9,000-job workload, and runs cpu_compare.py and
callback_bench.py once per side instead of three times.

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks(quick: bool) -> list[list[str]]:
    repeat = "1" if quick else "3"
    return [
        ["engine_bench.py"],
        ["cpu_by_thread.py"],
        ["callback_bench.py", "--repeat", repeat],
        ["callback_bench.py", "--repeat", repeat, "--time-scale", "0.1"],
        [
            "cpu_compare.py",
            "--repeat",
            repeat,
            *(["short", "rpm3000", "bigfiles"] if quick else []),
        ],
        ["plan_large.py"],
        ["sim_throughput.py"],
        ["download_large.py"],
        # Needs Ceph's RGW (apt-get install radosgw ceph-mon ceph-osd); says so when missing.
        ["s3_bench.py", *(["--jobs", "1", "--rounds", "1"] if quick else [])],
        ["scaling.py", *(["--quick"] if quick else [])],
    ]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    failed: list[str] = []
    started = time.monotonic()
    for script, *args in benchmarks(quick):
        name = " ".join([script, *args])
        one, five, _ = os.getloadavg()
        print(f"\n{'=' * 72}\n== {name}   (load {one:.2f}/{five:.2f})\n{'=' * 72}", flush=True)
        t0 = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        took = time.monotonic() - t0
        print(f"-- {name}: exit {code} after {took:.0f} s", flush=True)
        if code != 0:
            failed.append(f"{name} (exit {code})")
    print(f"\n{len(failed)} of {len(benchmarks(quick))} benchmarks failed", end="")
    print(f": {', '.join(failed)}" if failed else "", end="")
    print(f"; {time.monotonic() - started:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
