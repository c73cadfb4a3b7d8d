"""Account limits lower than the engine was told (issue 18): ratios and 429s. Asserts nothing.

Each case is a fresh simulator (its own account limits) and one `apixo-batch run` against it:

* ``rate90``: the account allows 3,000 requests a minute over 5 s windows; the engine is
  told 2,700 (90 %). Wanted: 0 answers 429.
* ``rate-lower``: the same account; the engine is told 9,000. Wanted: at least 0.85 of the
  account's bound (its requests a minute), at most 3 % of requests answered 429.
* ``outage``: every connection refused for 15 s (5 minutes at ``--time-scale 0.05``)
  from 4 s after the simulator starts, mid-campaign. Wanted: exit 0, every job done,
  none failed, duplicates only for submits that were on the wire.
* ``slots-told``: the same account, the engine told its real limit (100): the reference
  for slots busy (what polling's detection delay leaves idle at this scale).
* ``slots-lower``: the account holds 100 tasks at once; the engine is told 900; the
  docs' generation times (Kling 2.6, 5 s: 50-70 s) at ``--time-scale 0.1``. Wanted: at
  least 0.95 of the account's slots busy in steady state, at most 0.1 answers 429 per task.
  (At 0.05 the polls of 100 slots come within a tenth of the default 9,000 requests a
  minute, a request budget that at real speed only 2,000 slots would need: the engine
  then rightly polls sparingly, and the case measures the request budget, not the slots.)
* ``slots-lower-generic``: the same, the slot 429's message a bare "Too Many Requests"
  (gateways that do not name concurrency, issue 31). Same targets.

The account's bound for a rate case is its limit x the run's wall time (every request
the run needed, at the account's pace); slots busy is the time-average of tasks running
at the simulator (``/_sim/tasks``) from the moment the account's slots were first all
taken to the last submit, over the account's slots.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \
        /work/main/bench/limits_bench.py [case ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402
    busy_and_bound,
    campaign,
    engine_code,
    run_engine,
    simulator,
    task_timings,
    workdir,
)

CASES: dict[str, dict[str, Any]] = {
    "rate90": {
        "sim": {"rpm_limit": 250, "rpm_window_s": 5.0},
        "args": ["--rpm", "2700", "--max-concurrent", "900"],
        "jobs": 600,
        "scale": 0.02,
    },
    "rate-lower": {
        "sim": {"rpm_limit": 250, "rpm_window_s": 5.0},
        "args": ["--rpm", "9000", "--max-concurrent", "900"],
        "jobs": 600,
        "scale": 0.02,
    },
    "slots-lower": {
        "sim": {"concurrency_limit": 100},
        "args": ["--max-concurrent", "900"],
        "jobs": 1000,
        "scale": 0.1,
    },
    "slots-lower-generic": {
        "sim": {"concurrency_limit": 100, "concurrency_message": "Too Many Requests"},
        "args": ["--max-concurrent", "900"],
        "jobs": 1000,
        "scale": 0.1,
    },
    "slots-told": {
        "sim": {"concurrency_limit": 100},
        "args": ["--max-concurrent", "100"],
        "jobs": 1000,
        "scale": 0.1,
    },
    "outage": {
        "sim": {"outages": [[4.0, 15.0]]},
        "args": ["--max-concurrent", "200"],
        "jobs": 600,
        "scale": 0.05,
    },
}


def one(name: str) -> str:
    case = CASES[name]
    cfg = {"time_scale": case["scale"], "balance": 1e9, "file_size": 64 << 10, **case["sim"]}
    with workdir() as wd:
        job_file = campaign(wd, case["jobs"])
        with simulator(wd, **cfg) as sim:
            m = run_engine(sim, job_file, "--time-scale", str(case["scale"]), *case["args"])
            stats = sim.stats()
            timings = task_timings(sim)
    s = m.summary
    requests = stats["api_requests_total"]
    limited = stats["rate_limited"]
    line = (
        f"{name}: exit {m.code}, {s.get('counts')}, wall {m.wall_s:.1f} s, "
        f"{requests} requests ({requests / case['jobs']:.2f}/task), 429s {limited} "
        f"({limited / max(requests, 1):.1%} of requests, {limited / case['jobs']:.3f}/task), "
        f"learned rpm {s.get('learned_rpm')}, learned slots {s.get('learned_slots')}"
    )
    if "outages" in case["sim"]:
        line += (
            f"; duplicate submits {stats['duplicate_submits']}, flagged possibly_duplicated "
            f"{s.get('possibly_duplicated')}, stop reason {s.get('stop_reason')}"
        )
    elif "rpm_limit" in case["sim"]:
        per_s = case["sim"]["rpm_limit"] / case["sim"]["rpm_window_s"]
        # Requests the run needed, at the account's pace: its lower bound of wall time.
        accepted = requests - limited
        line += f"; account bound ratio {accepted / per_s / m.wall_s:.2f}"
    else:
        limit = case["sim"]["concurrency_limit"]
        busy = busy_and_bound(timings, limit, case["scale"])
        line += (
            f"; slots busy in steady state {busy['busy']:.3f} (task lives at the simulator), "
            f"detection p50/p90 {busy['detect_p50']:.2f}/{busy['detect_p90']:.2f} s unscaled"
        )
    return line


def main(argv: list[str]) -> None:
    print(f"engine code: {engine_code()}")
    for name in argv or list(CASES):
        print(one(name), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
