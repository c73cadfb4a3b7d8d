"""The account's limits held in PostgreSQL (issue 33): one runner keeps SQLite's figures,
and three runners on one campaign together keep the account's slots busy without
exceeding them. Prints figures, asserts nothing.

compare.py's slot-bound campaign (every model and mode, 50 slots, ``--time-scale 0.05``,
the simulator's request budget, seed 19; ``run`` polling) on a fresh simulator each
time, three ways:

* **sqlite**: one ``run`` with the journal in a SQLite file (today's default);
* **pg 1 runner**: one ``run`` with ``--state postgresql://…`` on a fresh database of a
  throwaway cluster (tests/pg.py): the slots and the request budget are the database's
  rows (``pipeline/shared.py``);
* **pg 3 runners**: three ``run`` processes of the same command, started a second
  apart, each told ``--max-concurrent 50``: together they share the account's 50 slots.

``--sides`` picks some; the engine run is the one on ``PYTHONPATH`` (another checkout's,
to compare engines on one side).

Printed for each: slots busy in steady state (the simulator's task lives over the
account's 50 slots), lower bound / wall time, requests per task, the simulator's
in-flight peak, 429s (rate and slots), wall seconds; and each PostgreSQL side over
sqlite.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \\
        /work/main/bench/shared_limits.py [--jobs 800] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import engine_cmd, load  # noqa: E402
from _harness import KEY, busy_and_bound, mixed_campaign, simulator, task_timings, workdir  # noqa: E402
from compare import RPM, SCALE, SIM_CONFIG, SLOTS, _fmt  # noqa: E402
from pg import pg_missing, start_cluster  # noqa: E402

SIDES = ("sqlite", "pg 1 runner", "pg 3 runners")


#: seconds between the starts of the runners of one side (as machines start them)
STAGGER_S = 1.0


def _runs(cmd: list[str], env: dict[str, str], n: int) -> tuple[float, list[int]]:
    """``n`` copies of ``cmd``, STAGGER_S apart; the wall time from the first start until
    the last exits, and the exit codes."""
    t0 = time.monotonic()
    procs = []
    for i in range(n):
        if i:
            time.sleep(STAGGER_S)
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    codes = [p.wait() for p in procs]
    return time.monotonic() - t0, codes


def one(side: str, jobs: int, cluster: Any, seq: int) -> dict[str, Any]:
    with workdir() as wd:
        job_file, _ = mixed_campaign(wd, jobs)
        with simulator(wd, **SIM_CONFIG) as sim:
            env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            cmd = engine_cmd(job_file, "--max-concurrent", str(SLOTS))
            cmd += ["--time-scale", str(SCALE)]
            runners = 1
            if side != "sqlite":
                cmd += ["--state", cluster.new_database(f"bench_{seq}")]
                runners = 3 if side.endswith("3 runners") else 1
            wall, codes = _runs(cmd, env, runners)
            stats = sim.stats()
            timings = task_timings(sim)
    out = busy_and_bound(timings, SLOTS, SCALE)
    return {
        **out,
        "codes": codes,
        "ratio": out["bound_s"] / wall,
        "wall_s": wall,
        "per_task": stats["api_requests_total"] / jobs,
        "peak": stats["max_concurrent_tasks"],
        "429s": stats["rate_limited"],
        "slot_429s": stats["rate_limited_concurrency"],
    }


KEYS = (
    ("busy", "slots busy in steady state", "{:.3f}"),
    ("ratio", "lower bound / wall time", "{:.3f}"),
    ("per_task", "requests per task", "{:.2f}"),
    ("peak", "in-flight peak", "{:.0f}"),
    ("429s", "429s", "{:.0f}"),
    ("slot_429s", "of them for slots", "{:.0f}"),
    ("wall_s", "wall s", "{:.1f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--sides", default=",".join(SIDES), help="which of: " + "; ".join(SIDES) + " (comma)"
    )
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    assert sides and set(sides) <= set(SIDES), sides
    why = pg_missing()
    if why is not None:
        raise SystemExit(why)
    print(
        f"## {args.jobs} jobs, every model and mode, {SLOTS} slots, rpm {RPM} (real), "
        f"time_scale {SCALE}, polling, {args.repeat} run(s) each side; {load()}\n"
    )
    cluster = start_cluster(Path(tempfile.gettempdir()))
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    try:
        seq = 0
        for _ in range(args.repeat):
            for side in sides:  # in turn, so that a neighbour's load lands on all alike
                seq += 1
                results[side].append(one(side, args.jobs, cluster, seq))
    finally:
        cluster.stop()
    head = ["journal", *(label for _, label, _ in KEYS)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for side in sides:
        row = [side, *(_fmt([r[k] for r in results[side]], fmt) for k, _, fmt in KEYS)]
        print("| " + " | ".join(row) + " |")
    for side in sides if "sqlite" in sides else []:
        if side == "sqlite":
            continue
        ratios = [f"{side} / sqlite"]
        for k, _, _ in KEYS:
            a = [r[k] for r in results["sqlite"]]
            b = [r[k] for r in results[side]]
            base = statistics.median(a)
            ratios.append(f"{statistics.median(b) / base:.3f}" if base else "-")
        print("| " + " | ".join(ratios) + " |")
    codes = {side: [r["codes"] for r in results[side]] for side in sides}
    print(f"\nexit codes: {codes}; {load()}")
    print("Wall in real seconds until the last run of a side exits.")
    print("Reproduce: .venv/bin/python bench/shared_limits.py", *sys.argv[1:])


if __name__ == "__main__":
    main()
