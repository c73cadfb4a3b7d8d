"""Every limiter kind the simulator plays against one campaign (issue 31). Asserts nothing.

One campaign shape: ``--jobs`` short jobs (default 600, Kling 2.6 at ``--time-scale
0.02``; 1,500 for 60 s windows, which hold more than 600 jobs' requests), the
engine told its default ``--rpm`` (9,000) while the account allows 30 % of it
(2,700 requests a minute, spread over the kind's window); and, with ``--told90``,
the engine told 90 % of the account's limit instead. Per kind it prints:

* ``bound``: the fraction of the account's bound reached: requests the account
  accepted over what it would accept in the run's wall time. For the per-route kind
  (status polls in a window of their own, submits and balance checks in another, each
  half the account's 2,700 a minute) the campaign's bound is the task rate the
  tighter route allows: min over routes of (the route's rate / its requests per
  task), with the requests per task the run made. Tasks done over that bound times
  the wall time is max over routes of (the route's accepted requests / (its rate x
  the wall time)): what the table prints;
* ``429``: the share of requests answered 429;
* ``learned``: the rate the run kept in its journal, against the account's truth;
* ``next start``: the rate a next run with that journal starts at (the engine's own
  ``RequestBucket.start_under``), over the truth.

The simulator always runs this checkout's code (it plays the limiters); the engine
runs ``--engine DIR``'s (default: this checkout), so main's engine can be measured
against the same limiters: ``git archive main | tar -x -C /tmp/base`` then
``--engine /tmp/base``.

    cd /tmp && PYTHONPATH=/work/wt/i31r /work/main/.venv/bin/python \\
        /work/wt/i31r/bench/limiter_matrix.py [--engine DIR] [--told90] [kind ...]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import campaign, run_engine, simulator, workdir  # noqa: E402

#: the account: 30 % of the engine's default 9,000 requests a minute
ACCOUNT_RPM = 2_700
SCALE = 0.02

#: kind -> the simulator's limiter settings (the limit is filled in from the window)
KINDS: dict[str, dict[str, Any]] = {
    "sliding-10s": {"rpm_window_s": 10.0},
    "sliding-1s": {"rpm_window_s": 1.0},
    "sliding-60s": {"rpm_window_s": 60.0, "jobs": 1500},
    "fixed-10s": {"rpm_window_s": 10.0, "rpm_window": "fixed"},
    "fixed-60s": {"rpm_window_s": 60.0, "rpm_window": "fixed", "jobs": 1500},
    "counts-refused-10s-no-retry-after": {
        "rpm_window_s": 10.0,
        "rpm_count_refused": True,
        "retry_after": "absent",
    },
    "counts-refused-60s-no-retry-after": {
        "rpm_window_s": 60.0,
        "rpm_count_refused": True,
        "retry_after": "absent",
        "jobs": 1500,
    },
    "retry-after-short-10s": {"rpm_window_s": 10.0, "retry_after": "short"},
    "fixed-10s-counts-refused-no-retry-after": {
        "rpm_window_s": 10.0,
        "rpm_window": "fixed",
        "rpm_count_refused": True,
        "retry_after": "absent",
    },
    "per-route-10s": {"rpm_window_s": 10.0, "per_route": True},
}


def sim_settings(kind: str) -> tuple[dict[str, Any], float]:
    """The simulator's settings for ``kind`` and the account's rate (requests a second,
    for a separate status window: each route's)."""
    spec = dict(KINDS[kind])
    spec.pop("jobs", None)
    per_route = spec.pop("per_route", False)
    window = float(spec["rpm_window_s"])
    if per_route:
        # Half the account's requests for polls, half for the rest: each route its window.
        limit = round(ACCOUNT_RPM / 2 * window / 60.0)
        spec.update(rpm_limit=limit, status_rpm_limit=limit)
    else:
        spec["rpm_limit"] = round(ACCOUNT_RPM * window / 60.0)
    return spec, spec["rpm_limit"] / window


def kept_rpm(out: Path) -> tuple[float | None, dict[str, float]]:
    """The rates the run kept in its journal: the account's (``learned_rpm:<account>``)
    and each route's limited in a window of its own (``learned_rpm:<account>/<route>``)."""
    db = out / ".apixo-batch.sqlite"
    if not db.exists():
        return None, {}
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, value FROM meta WHERE key LIKE 'learned_rpm:%'").fetchall()
    shared = next((float(v) for k, v in rows if "/" not in k), None)
    routes = {k.rsplit("/", 1)[1]: float(v) for k, v in rows if "/" in k}
    return shared, routes


def next_start(
    engine_env: dict[str, str], rpm: int, learned: float | None, routes: dict[str, float]
) -> float:
    """Requests a minute a next run's bucket grants at its start, by the engine's code:
    with routes paced on their own, the sum of theirs (the shared bucket's at most)."""
    code = (
        "import sys\n"
        "from apixo_batch.apixo.limits import RequestBucket\n"
        "from apixo_batch.clock import SystemClock\n"
        f"b = RequestBucket({rpm}, SystemClock())\n"
        f"b.start_under({learned!r})\n"
        f"routes = {routes!r}\n"
        "if routes:\n"
        "    b.start_routes(routes)\n"
        "    r = sum(g.control.rate * 60 for g in b.routes.values())\n"
        "    print(min(r, b.rate_per_s * 60))\n"
        "else:\n"
        "    print(b.rate_per_s * 60)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=engine_env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def one(kind: str, jobs: int, told90: bool, engine: str | None, told_rpm: int | None = None) -> str:
    spec, per_s = sim_settings(kind)
    # A 60 s window holds 2,700 requests: the campaign must be longer than one window.
    jobs = max(jobs, KINDS[kind].get("jobs", 0))
    per_route = "status_rpm_limit" in spec
    truth = per_s * 60.0 * (2 if per_route else 1)
    told = told_rpm or (round(truth * 0.9) if told90 else 9_000)
    cfg = {"time_scale": SCALE, "balance": 1e9, "file_size": 16 << 10, **spec}
    engine_env = dict(os.environ)
    if engine:
        engine_env["PYTHONPATH"] = engine
    with workdir() as wd:
        job_file = campaign(wd, jobs)
        with simulator(wd, **cfg) as sim:
            saved = dict(os.environ)
            os.environ.clear()
            os.environ.update(engine_env)
            try:
                m = run_engine(
                    sim, job_file, "--time-scale", str(SCALE), "--rpm", str(told),
                    "--max-concurrent", "900",
                )  # fmt: skip
            finally:
                os.environ.clear()
                os.environ.update(saved)
            stats = sim.stats()
        shared, routes = kept_rpm(wd / "out")
    # Routes paced on their own: what they keep together (the account's, per route).
    learned = sum(routes.values()) if routes else shared
    requests = stats["api_requests_total"]
    limited = stats["rate_limited"]
    by_route = stats["requests"]
    if per_route:
        # Each window's accepted requests over its own rate (both the same here): the
        # tighter route is the one nearest its bound (see the module doc).
        def accepted_on(routes: tuple[str, ...]) -> int:
            return sum(v for r in routes for k, v in by_route.get(r, {}).items() if k != "429")

        status = accepted_on(("GET /statusTask",))
        rest = accepted_on(("POST /generateTask", "GET /apikeys/current-balance"))
        bound = max(status, rest) / per_s / m.wall_s
    else:
        bound = (requests - limited) / per_s / m.wall_s
    start = next_start(engine_env, told, shared, routes)
    done = (m.summary.get("counts") or {}).get("done")
    learned_txt = "none" if learned is None else f"{learned:,.0f} ({learned / truth:.2f})"
    return (
        f"| {kind} | {told:,} | {done}/{jobs} | {m.wall_s:.1f} | {bound:.2f} | "
        f"{limited} ({limited / max(requests, 1):.1%}) | {learned_txt} | "
        f"{start:,.0f} ({start / truth:.2f}) |"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", help=f"of: {', '.join(KINDS)}")
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--told90", action="store_true", help="told 90 %% of the account's rate")
    parser.add_argument(
        "--told", type=int, default=None, help="told this rate (e.g. 90 %% of one route's)"
    )
    parser.add_argument("--engine", default=None, help="PYTHONPATH of the engine's code")
    args = parser.parse_args(argv)
    print(f"engine: {args.engine or 'this checkout'}; account {ACCOUNT_RPM:,} requests/min")
    print(
        "| kind | told rpm | done | wall s | of the account's bound | 429s (share) "
        "| learned rpm (/truth) | next run starts at (/truth) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.kinds or list(KINDS):
        print(one(kind, args.jobs, args.told90, args.engine, args.told), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
