"""How many jobs get submitted twice after one ``kill -9`` of a run with submits streaming in.

Each round: a fresh simulator (no faults, generations of ~2.5-3.5 s at --time-scale 0.05)
and work dir; ``apixo-batch run`` of a 200-job campaign with --max-concurrent 30 is
SIGKILLed as soon as the simulator has accepted --kill-at submits (default 30: the first
wave, while its answers are still landing), then run again to the end (exit 0 expected).
The figure is the simulator's ``duplicate_submits`` (extra accepted submits of one input),
beside the ``possibly_duplicated`` jobs the second run's summary flags. The engine and the
simulator are ``python -m apixo_batch`` with this process's PYTHONPATH and working
directory: start it outside any checkout, or ``-m`` measures that checkout.

    cd /tmp && PYTHONPATH=<checkout> /work/main/.venv/bin/python /work/main/bench/kill_dups.py \
        --repeat 5 [--jobs 200] [--max-concurrent 30] [--kill-at 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import engine_cmd
from _harness import KEY, Sim, campaign, engine_code, simulator, workdir

TIME_SCALE = "0.05"


@dataclass
class Round:
    at_kill: dict[str, Any]  # simulator stats read just before the SIGKILL
    after_kill: dict[str, Any]  # ... and once the killed run's last requests have landed
    final: dict[str, Any]  # ... after the second run ended
    code: int  # exit code of the second run
    summary: dict[str, Any]  # its summary line
    error: str = ""


def _summary(out: Path) -> dict[str, Any]:
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    return next((e for e in reversed(lines) if e.get("event") == "summary"), {})


def one_round(jobs: int, max_concurrent: int, kill_at: int) -> Round:
    with workdir() as wd, simulator(wd, time_scale=0.05, balance=1_000_000.0) as sim:
        cmd = engine_cmd(
            campaign(wd, jobs), "--max-concurrent", str(max_concurrent), "--time-scale", TIME_SCALE
        )
        env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
        err = wd / "stderr.txt"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            at_kill = wait_for_submits(sim, proc, kill_at)
            if proc.poll() is not None:
                return Round(at_kill, at_kill, at_kill, -1, {}, "run ended before its kill")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        time.sleep(0.5)  # requests the kernel had already handed to the simulator
        after_kill = sim.stats()
        out = wd / "stdout.txt"
        with out.open("wb") as stdout, err.open("ab") as stderr:
            code = subprocess.run(cmd, env=env, stdout=stdout, stderr=stderr).returncode
        tail = err.read_text(errors="replace")[-600:] if code else ""
        return Round(at_kill, after_kill, sim.stats(), code, _summary(out), tail)


def wait_for_submits(sim: Sim, proc: subprocess.Popen[bytes], kill_at: int) -> dict[str, Any]:
    """Poll the simulator's stats until ``kill_at`` submits were accepted (or the run ended)."""
    end = time.monotonic() + 60
    while True:
        stats = sim.stats()
        if stats["submits_accepted"] >= kill_at or proc.poll() is not None:
            return stats
        if time.monotonic() > end:
            raise TimeoutError(f"only {stats['submits_accepted']} submits in 60 s")
        time.sleep(0.002)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--jobs", type=int, default=200, help="jobs in the campaign (default 200)")
    ap.add_argument("--max-concurrent", type=int, default=30, help="the run's --max-concurrent")
    ap.add_argument("--kill-at", type=int, default=30, help="SIGKILL at this many submits")
    args = ap.parse_args()
    pythonpath = os.environ.get("PYTHONPATH")
    print(f"engine code: {engine_code()} (cwd {Path.cwd()}, PYTHONPATH {pythonpath!r})")
    print(
        f"{args.jobs} jobs, --max-concurrent {args.max_concurrent}, --time-scale {TIME_SCALE}, "
        f"SIGKILL at {args.kill_at} accepted submits; TMPDIR {tempfile.gettempdir()}"
    )
    failed = dups = flagged = 0
    for i in range(1, args.repeat + 1):
        r = one_round(args.jobs, args.max_concurrent, args.kill_at)
        ok = r.code == 0 and not r.error and r.final["distinct_inputs"] == args.jobs
        failed += not ok
        dups += r.final["duplicate_submits"]
        flagged += int(r.summary.get("possibly_duplicated", 0))
        print(
            f"round {i}: killed at {r.at_kill['submits_accepted']} accepted / "
            f"{r.at_kill['concurrent_tasks']} in flight ({r.after_kill['submits_accepted']} "
            f"accepted once it landed); duplicate submits {r.final['duplicate_submits']} "
            f"(max {r.final['max_submits_per_input']} per input), flagged possibly_duplicated "
            f"{r.summary.get('possibly_duplicated', '-')}; second run exit {r.code}, "
            f"{r.final['submits_accepted']} submits for {r.final['distinct_inputs']} inputs"
            + ("" if ok else f"  FAILED {r.error} counts {r.summary.get('counts')}")
        )
    print(
        f"total: {dups} duplicate submits, {flagged} flagged possibly_duplicated "
        f"over {args.repeat} kills; {failed} round(s) failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
