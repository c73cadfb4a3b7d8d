"""Several runners on one PostgreSQL campaign, the real CLI (issue 33): prints figures,
asserts nothing.

    python bench/pg_runners_cli.py [--jobs 2000] [--kill-runners 4] [--runners 8]
                                   [--slots 100] [--scale 0.05] [--only kill,stats,one]
                                   [--hosts] [--top]

The same targets as tests/end_to_end/test_runners_targets_e2e.py at the issue's sizes:
``apixo-batch run JOBFILE --state postgresql://…`` started N times (processes) against one
simulator (in this process, on its own thread: its task book is the ground truth for
submits per job) and a throwaway cluster (tests/pg.py, ``fsync=on``,
``synchronous_commit=on``, ``pg_stat_statements``, every statement's duration logged).
wan-2-5 720p jobs, generations of 50-70 s at ``--scale`` (2.5-3.5 s at 0.05), the
account's slots ``--slots`` (simulator and ``--max-concurrent`` alike), 10,000 requests a
minute at the simulator and the CLI's default ``--rpm``; leases shortened to 2 s (grace
1 s) through the environment, as the tests do. Three campaigns, each on a fresh database
and simulator:

* ``kill``: ``--kill-runners`` runners, the busiest killed with ``kill -9`` at 25 % of the
  jobs done: jobs done, submits, extra submits, tasks created but never journaled and
  whether each is flagged, jobs submitted again after their task id was journaled
  (simulator creation time after a durable ``task_history`` row of the same job), the
  delay from the kill to its adoption (``runners.adopted_by`` polled every 20 ms);
* ``stats``: ``--runners`` runners: client statements per job (``pg_stat_statements``
  calls in the campaign's database), commits per job (``xact_commit``), fsynced commits
  per job (``pg_stat_wal.wal_sync``; nothing else writes on the cluster), the claim's
  server-side duration p50/p99 (the logged durations of statements with SKIP LOCKED that
  set ``owner``; pool waits on the runner are not in it), and slots busy in steady
  state (bench/_harness.py ``busy_and_bound``: tasks running at the simulator over the
  slots, from the slots-th task created to the last);
* ``one``: one runner on the same campaign: slots busy, for the ratio N runners / one;
* ``sqlite``: the same campaign in a SQLite journal (``--only ...,sqlite``): the baseline.

``--hosts`` starts each runner in a PID namespace of its own (``unshare``, root): to each
other they are on different machines, so a dead one is found by its lease alone (on one
machine a runner sees at once that another's process is gone). ``--top`` lists the ten
statements called most, per job.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from _common import load  # noqa: E402
from _harness import busy_and_bound  # noqa: E402
from e2e import SIM_KEY, simple_jobs, write_campaign  # noqa: E402
from pg import pg_missing, start_cluster  # noqa: E402
from runners import LEASE_ENV, Outcome  # noqa: E402

from apixo_batch.simulator import SimConfig, Simulator  # noqa: E402
from apixo_batch.simulator.server import run_simulator  # noqa: E402

_CLAIM = re.compile(r"duration: ([0-9.]+) ms .*SKIP LOCKED")


class SimThread:
    """A simulator served by its own event loop on a thread (runners are processes)."""

    def __init__(self, config: SimConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self.sim: Simulator | None = None
        self._thread = threading.Thread(target=self._serve, args=(config,), daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _serve(self, config: SimConfig) -> None:
        async def main() -> None:
            async with run_simulator(config) as sim:
                self.sim = sim
                self._ready.set()
                await self._stop.wait()

        self.loop.run_until_complete(main())

    def call(self, fn: Any) -> Any:
        """``fn(sim)`` on the simulator's loop (its task book is not thread-safe)."""

        async def run() -> Any:
            return fn(self.sim)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql, args).fetchall())


def _done(url: str) -> int:
    try:
        return int(_rows(url, "SELECT count(*) FROM jobs WHERE state = 'done'")[0][0])
    except psycopg.Error:
        return 0


def _counters(admin: Any, db: str) -> tuple[int, int, int, int]:
    calls, bare = admin.execute(
        "SELECT coalesce(sum(calls), 0), coalesce(sum(calls) FILTER (WHERE query NOT IN "
        "('BEGIN', 'COMMIT', 'ROLLBACK')), 0) FROM pg_stat_statements s JOIN pg_database d "
        "ON d.oid = s.dbid WHERE d.datname = %s",
        (db,),
    ).fetchone()
    commits = admin.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,)
    ).fetchone()[0]
    syncs = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0]
    return int(calls), int(bare), int(commits), int(syncs)


def _child(pid: int) -> int:
    """The one child of ``unshare --fork`` (the runner), once it has started."""
    for _ in range(1000):
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise RuntimeError("unshare started no runner")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def campaign(
    cluster: Any, admin: Any, name: str, runners: int, args: argparse.Namespace, kill: bool
) -> dict[str, Any]:
    lite = name.endswith("sqlite")
    url = cluster.new_database(name)
    config = SimConfig(
        api_key=SIM_KEY,
        time_scale=args.scale,
        concurrency_limit=args.slots,
        rpm_limit=10_000,
        balance=1e9,
        file_size=64 << 10,
        seed=33,
    )
    work = Path(tempfile.mkdtemp(prefix=f"pgcli-{name}-"))
    job_file = write_campaign(work, simple_jobs(args.jobs, model="wan-2-5"))
    sim_thread = SimThread(config)
    sim = sim_thread.sim
    assert sim is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIXO_")}
    env.update({"APIXO_API_KEY": SIM_KEY, "APIXO_BASE_URL": sim.base_url, **LEASE_ENV})
    cmd = [sys.executable, "-m", "apixo_batch", "run", str(job_file)]
    if not lite:
        cmd += ["--state", url]
    cmd += ["--time-scale", str(args.scale), "--max-concurrent", str(args.slots), "--json"]
    log = cluster.data.parent / "log"
    log_from = log.stat().st_size
    admin.execute("SELECT pg_stat_statements_reset()")
    admin.execute("SELECT pg_stat_reset_shared('wal')")
    before = _counters(admin, name)
    t0 = time.monotonic()
    procs = []
    wrap = ["unshare", "--pid", "--fork", "--kill-child"] if args.hosts else []
    for i in range(runners):
        with (work / f"r{i}.out").open("wb") as out, (work / f"r{i}.err").open("wb") as err:
            procs.append(subprocess.Popen([*wrap, *cmd], env=env, stdout=out, stderr=err))
    # The runner itself (under unshare, its child) and its PID namespace: how its
    # runners row (node) names it.
    inner = [_child(p.pid) if args.hosts else p.pid for p in procs]
    spaces = {os.stat(f"/proc/{pid}/ns/pid").st_ino: pid for pid in inner}
    killed: dict[str, Any] = {}
    if kill:
        while _done(url) < args.jobs // 4:
            time.sleep(0.05)
        [(rid, pid, node, owned)] = _rows(
            url,
            "SELECT r.id, r.pid, r.node, count(*) FROM jobs j JOIN runners r ON r.id = j.owner "
            "WHERE j.state = 'submitted' GROUP BY r.id ORDER BY 4 DESC LIMIT 1",
        )
        if args.hosts:
            pid = spaces[int(str(node).rsplit("/", 1)[1])]
        [(until,)] = _rows(
            url, "SELECT extract(epoch FROM lease_until)::float8 FROM runners WHERE id = %s", rid
        )
        os.kill(pid, signal.SIGKILL)
        at = time.time()
        while True:
            [(adopter,)] = _rows(url, "SELECT adopted_by FROM runners WHERE id = %s", rid)
            if adopter is not None:
                break
            time.sleep(0.02)
        seen = time.time()
        killed = {
            "running": owned,
            "adopted_after_s": seen - at,
            "after_lease_end_s": seen - float(until),
        }
    cpu = 0.0
    codes = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        codes.append(p.returncode)
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - t0
    calls, bare, commits, syncs = (
        b - a for a, b in zip(before, _counters(admin, name), strict=True)
    )
    top = admin.execute(
        "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY calls DESC LIMIT 10",
        (name,),
    ).fetchall()
    with log.open("rb") as f:
        f.seek(log_from)
        claims = [float(m.group(1)) for m in _CLAIM.finditer(f.read().decode(errors="replace"))]
    timings = sim_thread.call(lambda s: s._book.timings())
    stats = sim_thread.call(lambda s: s.stats())
    if lite:
        sim_thread.close()
        return _lite(work / "out", sim, runners, codes, stats, timings, args, wall, cpu)
    outcome = asyncio.run(Outcome.read(sim, url))
    sim_thread.close()
    lost = outcome.not_journaled()
    return {
        "runners": runners,
        "codes": codes,
        "done": args.jobs - len(outcome.not_done()),
        "submits": outcome.submits,
        "extra": outcome.extra_submits,
        "not_journaled": sum(len(v) for v in lost.values()),
        "not_journaled_unflagged": sum(
            1 for j in lost if not outcome.jobs[j]["possibly_duplicated"]
        ),
        "flagged": sum(1 for r in outcome.jobs.values() if r["possibly_duplicated"]),
        "resubmitted_after_journaled": len(outcome.resubmitted_after_journaled()),
        "unflagged_duplicates": len(outcome.unflagged_duplicates()),
        "peak": stats["max_concurrent_tasks"],
        "429": f"{stats['rate_limited_rpm']} rate, {stats['rate_limited_concurrency']} slots",
        "per_job": (calls / args.jobs, bare / args.jobs, commits / args.jobs, syncs / args.jobs),
        "claims": (len(claims), _pct(claims, 0.5), _pct(claims, 0.99)),
        "busy": busy_and_bound(timings, args.slots, args.scale)["busy"],
        "wall": wall,
        "cpu": cpu,
        "killed": killed,
        "top": [(int(c) / args.jobs, str(q)) for c, q in top],
    }


def _lite(
    out: Path,
    sim: Simulator,
    runners: int,
    codes: list[int],
    stats: dict[str, Any],
    timings: dict[str, Any],
    args: argparse.Namespace,
    wall: float,
    cpu: float,
) -> dict[str, Any]:
    """The figures of a campaign kept in SQLite (the baseline of one runner)."""
    import json

    done = sum(
        1
        for line in (out / "manifest.jsonl").read_text().splitlines()
        if json.loads(line)["state"] == "done"
    )
    nan = float("nan")
    return {
        "runners": runners,
        "codes": codes,
        "done": done,
        "submits": stats["submits_accepted"],
        "extra": stats["submits_accepted"] - args.jobs,
        "not_journaled": "-",
        "not_journaled_unflagged": "-",
        "flagged": "-",
        "resubmitted_after_journaled": "-",
        "unflagged_duplicates": stats["duplicate_submits"],
        "peak": stats["max_concurrent_tasks"],
        "429": f"{stats['rate_limited_rpm']} rate, {stats['rate_limited_concurrency']} slots",
        "per_job": (nan, nan, nan, nan),
        "claims": (0, nan, nan),
        "busy": busy_and_bound(timings, args.slots, args.scale)["busy"],
        "wall": wall,
        "cpu": cpu,
        "killed": {},
        "top": [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--kill-runners", type=int, default=4)
    ap.add_argument("--runners", type=int, default=8)
    ap.add_argument("--slots", type=int, default=100)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--only", default="kill,stats,one")
    ap.add_argument("--top", action="store_true", help="the 10 most called statements")
    ap.add_argument(
        "--hosts",
        action="store_true",
        help="each runner in a PID namespace of its own (another machine to the others): "
        "a dead runner is then found by its lease alone",
    )
    args = ap.parse_args()
    why = pg_missing()
    if why is not None:
        sys.exit(f"pg_runners_cli: {why}")
    # A killed runner's downloads end mid-answer: the simulator's server logs each one.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    cluster = start_cluster(Path(tempfile.gettempdir()), preload="pg_stat_statements")
    try:
        admin = psycopg.connect(cluster.url(), autocommit=True)
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        admin.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        admin.execute("SELECT pg_reload_conf()")
        print(
            f"## {args.jobs} wan-2-5 jobs, {args.slots} slots, scale {args.scale}, "
            f"lease {LEASE_ENV}, {'one PID namespace per runner' if args.hosts else 'one host'}; "
            f"{load()}\n"
        )
        head = (
            "campaign | exit codes | done | submits (extra) | not journaled (unflagged) | "
            "resubmitted after journaled | unflagged dups | peak / slots | 429s | "
            "statements (without BEGIN/COMMIT) / commits / fsyncs per job | "
            "claims, p50 / p99 ms | slots busy | "
            "wall s | CPU s (runners) | kill"
        )
        print("| " + head + " |\n|" + "---|" * (head.count("|") + 1))
        busy: dict[str, float] = {}
        plan = [
            ("kill", args.kill_runners, True),
            ("stats", args.runners, False),
            ("one", 1, False),
            ("sqlite", 1, False),
        ]
        for name, runners, kill in plan:
            if name not in args.only.split(","):
                continue
            r = campaign(cluster, admin, f"b_{name}", runners, args, kill)
            busy[name] = r["busy"]
            k = r["killed"]
            kill_txt = (
                f"{k['running']} running; adopted {k['adopted_after_s']:.2f} s after the kill, "
                f"{k['after_lease_end_s']:.2f} s after its lease ran out"
                if k
                else "-"
            )
            cells = [
                f"{name}: {runners} runner(s)",
                " ".join(map(str, r["codes"])),
                str(r["done"]),
                f"{r['submits']} ({r['extra']})",
                f"{r['not_journaled']} ({r['not_journaled_unflagged']})",
                str(r["resubmitted_after_journaled"]),
                str(r["unflagged_duplicates"]),
                f"{r['peak']} / {args.slots}",
                str(r["429"]),
                "{:.2f} ({:.2f}) / {:.2f} / {:.2f}".format(*r["per_job"]),
                f"{r['claims'][0]}, {r['claims'][1]:.2f} / {r['claims'][2]:.2f}",
                f"{r['busy']:.3f}",
                f"{r['wall']:.1f}",
                f"{r['cpu']:.1f}",
                kill_txt,
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            if args.top:
                for per_job, query in r["top"]:
                    print(f"    {per_job:6.2f} / job  {query}")
        if "one" in busy:
            for name in ("kill", "stats"):
                if name in busy:
                    print(f"\nslots busy, {name} / one runner: {busy[name] / busy['one']:.3f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
