"""A campaign bound by the account's slots: apixo-batch (polling, callback) and the docs' recipe.

Issue 19. The real account's shape, shrunk faithfully: 50 slots instead of 1,000,
``--time-scale 0.05``, every model and mode of the catalog in a seeded random order
at the docs' generation times (the simulator's), and the request budget per task
of 1,000 slots and 10,000 requests a minute (the simulator's limit is that budget
at this scale and slot count: 10,000 real requests a minute). Each side runs alone
against a fresh simulator with the same seed; the simulator's ``/_sim/tasks`` gives
every task's creation, end and the moment its client learned the end, from which:

* **slots busy in steady state**: the time-average of tasks running at the
  simulator over the account's slots, from the moment the first wave has been
  submitted (the slots-th task created) to the last submit;
* **lower bound / wall time**: the campaign's lower bound (its generation seconds
  over the slots, or its longest generation if longer) over the client process's
  wall time (start-up included);
* **requests per task**: every API request the simulator answered (429s included)
  over the jobs;
* detection delay (end at the simulator to the client knowing it) p50/p90, and for
  apixo-batch the slot turnaround it reports (end known to the next submit leaving).

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \\
        /work/main/bench/compare.py [--jobs 800] [--repeat 1] [polling callback recipe]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import engine_cmd, load, measure  # noqa: E402
from _harness import (  # noqa: E402
    KEY,
    busy_and_bound,
    free_port,
    mixed_campaign,
    simulator,
    task_timings,
    workdir,
)

SCALE = 0.05
SLOTS = 50
#: 10,000 requests a minute for 1,000 slots, for 50 slots at 0.05 of real time
RPM = round(10_000 * SLOTS / 1_000 / SCALE)
SIDES = ("polling", "callback", "recipe")
#: the simulator of every side (bench/shared_limits.py's too)
SIM_CONFIG: dict[str, Any] = {
    "time_scale": SCALE,
    "balance": 1e9,
    "file_size": 64 << 10,
    "concurrency_limit": SLOTS,
    "rpm_limit": RPM,
    "seed": 19,
}


def one(side: str, jobs: int) -> dict[str, Any]:
    with workdir() as wd:
        job_file, recipe_rows = mixed_campaign(wd, jobs)
        with simulator(wd, **SIM_CONFIG) as sim:
            env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            if side == "recipe":
                cmd = [sys.executable, str(HERE / "recipe_baseline.py"), "--base-url"]
                cmd += [sim.base_url, "--key", KEY, "--jobs-file", str(recipe_rows)]
                cmd += ["--max-concurrent", str(SLOTS), "--time-scale", str(SCALE)]
                cmd += ["--out", str(wd / "b")]
            else:
                cmd = engine_cmd(job_file, "--max-concurrent", str(SLOTS))
                cmd += ["--time-scale", str(SCALE)]
                if side == "callback":
                    port = free_port()
                    cmd += ["--callback-url", f"http://127.0.0.1:{port}/hook"]
                    cmd += ["--listen", f"127.0.0.1:{port}"]
            proc = measure(cmd, env)
            stats = sim.stats()
            timings = task_timings(sim)
    summary = proc.lines[-1] if proc.lines else {}
    done = summary.get("counts", {}).get("done") if "counts" in summary else summary.get("done")
    out = busy_and_bound(timings, SLOTS, SCALE)
    turnaround = summary.get("slot_turnaround_s") or {}
    return {
        **out,
        "done": done,
        "ratio": out["bound_s"] / proc.wall_s,
        "wall_s": proc.wall_s,
        "per_task": stats["api_requests_total"] / jobs,
        "429s": stats["rate_limited"],
        "cpu_s": proc.cpu_s,
        "turn_p50": turnaround["p50"] / SCALE if turnaround else None,
        "turn_p90": turnaround["p90"] / SCALE if turnaround else None,
        "planned_s": summary.get("planned_wall_s"),
    }


def _fmt(values: list[Any], fmt: str) -> str:
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums:
        return "-"
    mid = fmt.format(statistics.median(nums))
    return mid if len(nums) == 1 else f"{mid} ({fmt.format(min(nums))}-{fmt.format(max(nums))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("sides", nargs="*", default=list(SIDES))
    args = parser.parse_args()
    print(
        f"## {args.jobs} jobs, every model and mode, {SLOTS} slots, rpm {RPM} (real), "
        f"time_scale {SCALE}, {args.repeat} run(s) each; {load()}\n"
    )
    head = (
        "client | slots busy in steady state | lower bound / wall time | requests per task | "
        "429s | done | detection p50/p90 s | slot turnaround p50/p90 s | wall s (planned) | CPU s"
    )
    print("| " + head + " |")
    print("|" + "---|" * (head.count("|") + 1))
    for side in args.sides:
        runs = [one(side, args.jobs) for _ in range(args.repeat)]

        def col(key: str, fmt: str, runs: list[dict[str, Any]] = runs) -> str:
            return _fmt([r[key] for r in runs], fmt)

        name = "the docs recipe" if side == "recipe" else f"apixo-batch, {side}"
        row = [
            name,
            col("busy", "{:.3f}"),
            col("ratio", "{:.3f}"),
            col("per_task", "{:.2f}"),
            col("429s", "{:.0f}"),
            col("done", "{:.0f}"),
            f"{col('detect_p50', '{:.2f}')} / {col('detect_p90', '{:.2f}')}",
            f"{col('turn_p50', '{:.3f}')} / {col('turn_p90', '{:.3f}')}",
            f"{col('wall_s', '{:.1f}')} ({col('planned_s', '{:.1f}')})",
            col("cpu_s", "{:.1f}"),
        ]
        print("| " + " | ".join(row) + " |", flush=True)
    print(
        "\nDetection and turnaround in unscaled seconds (real ones / time_scale); "
        "wall and CPU in real seconds of the client process."
    )
    print("Reproduce: .venv/bin/python bench/compare.py", *sys.argv[1:])


if __name__ == "__main__":
    main()
