"""apixo-batch against the docs' recipe (bench/recipe_baseline.py) on the same workloads (issue 7).

For every workload and side, a fresh simulator subprocess with the same
SimConfig, then the client as another subprocess, measured alone with
os.wait4 (CPU s, peak RSS); the simulator's /_sim/stats give the requests it
answered (429s included), the 429s and the peak of tasks in flight. Prints a
Markdown table: tasks/s, requests/task, 429s, peak RSS, CPU s, wall s
(median of --repeat runs, range in brackets).

    .venv/bin/python bench/cpu_compare.py [--repeat 3] [short rpm3000 conc900 bigfiles]

Caveat, printed too: time_scale 0.01 shrinks every wait 100x but the simulator's
rpm window stays 60 real seconds, so a poll every 5 s becomes one every 0.05 s
against an unchanged limit: the recipe hits 429s that it would reach at real
speed only with ~100x the jobs in flight. bigfiles uses 32 MB files: with 8 MB
ones the local simulator serves downloads nearly one after another, so whole-file
reads never pile up (recipe peak RSS 53-57 MB for 80 x 8 MB).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Proc, engine_cmd, load, measure, med  # noqa: E402
from _harness import KEY, campaign, simulator, workdir  # noqa: E402

SCALE = 0.01


@dataclass(frozen=True)
class Workload:
    jobs: int
    max_concurrent: int
    sim: dict[str, Any]
    note: str


WORKLOADS = {
    "short": Workload(600, 200, {}, "600 jobs: fewer requests than one minute's limit"),
    "rpm3000": Workload(1500, 200, {"rpm_limit": 3000}, "1,500 jobs, sim rpm limit 3,000"),
    "conc900": Workload(9000, 900, {}, "9,000 jobs, rpm limit 10,000"),
    "bigfiles": Workload(
        40,
        200,
        {"file_size": 32 << 20, "duration_override_s": [0.6, 0.65]},
        "40 jobs x 32 MB files, all ending within 50 ms",
    ),
}


def one(name: str, w: Workload, side: str) -> tuple[Proc, dict[str, Any]]:
    cfg = {"time_scale": SCALE, "balance": 1e9, "file_size": 64 << 10, **w.sim}
    rpm = int(cfg.get("rpm_limit", 10_000)) - 1
    with workdir() as wd:
        job_file = campaign(wd, w.jobs)
        with simulator(wd, **cfg) as sim:
            if side == "recipe":
                cmd = [sys.executable, str(HERE / "recipe_baseline.py"), "--base-url"]
                cmd += [sim.base_url, "--key", KEY, "--jobs", str(w.jobs), "--max-concurrent"]
                cmd += [str(w.max_concurrent), "--time-scale", str(SCALE), "--out", str(wd / "b")]
                env = None
            else:
                cmd = engine_cmd(job_file, "--max-concurrent", str(w.max_concurrent))
                cmd += ["--rpm", str(min(rpm, 9999)), "--time-scale", str(SCALE)]
                env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            proc = measure(cmd, env)
            return proc, sim.stats()


def done_of(proc: Proc) -> int:
    last = proc.lines[-1] if proc.lines else {}
    if "counts" in last:  # apixo-batch's summary event
        return int(last["counts"].get("done", 0))
    return int(last.get("done", 0))


def main(argv: list[str]) -> None:
    repeat = 1
    if argv[:1] == ["--repeat"]:
        repeat, argv = int(argv[1]), argv[2:]
    names = argv or list(WORKLOADS)
    print(f"## apixo-batch vs the docs' recipe (time_scale {SCALE}, {repeat} run(s) each)\n")
    print(f"{load()} at start\n")
    rows = []
    for name in names:
        w = WORKLOADS[name]
        for side in ("recipe", "apixo-batch"):
            runs = [one(name, w, side) for _ in range(repeat)]
            procs = [p for p, _ in runs]
            stats = [s for _, s in runs]
            done = [done_of(p) for p in procs]
            rows.append(
                [
                    f"{name}: {w.note}, --max-concurrent {w.max_concurrent}",
                    side,
                    f"{min(done)}/{w.jobs}",
                    med([d / p.wall_s for d, p in zip(done, procs, strict=True)]),
                    med([s["api_requests_total"] / w.jobs for s in stats], "{:.2f}"),
                    med([float(s["rate_limited"]) for s in stats], "{:.0f}"),
                    str(max(s["max_concurrent_tasks"] for s in stats)),
                    med([p.max_rss_mb for p in procs], "{:.0f}"),
                    med([p.cpu_s for p in procs]),
                    med([p.wall_s for p in procs]),
                ]
            )
            print(f"  done {name} / {side}: {load()}", file=sys.stderr)
    head = "workload | client | done | tasks/s | requests/task | 429s | peak in flight"
    head += " | peak RSS MB | CPU s | wall s"
    print("| " + head + " |")
    print("|" + "---|" * (head.count("|") + 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{load()} at end. Median (min-max). apixo-batch runs with --rpm = sim limit - 1.")
    print("requests/task counts every API request the simulator answered, 429s included;")
    print("tasks/s = files on disk / wall s of the client process (start-up included).")
    print(__doc__.split("Caveat, printed too: ")[1].strip() if __doc__ else "")
    print("\nReproduce: .venv/bin/python bench/cpu_compare.py --repeat", repeat, " ".join(names))


if __name__ == "__main__":
    main(sys.argv[1:])
