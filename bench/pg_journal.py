"""The journal in PostgreSQL against SQLite, one runner (issue 33): prints figures, asserts
nothing.

    python bench/pg_journal.py [--jobs 2000] [--repeat 1]

One campaign of ``--jobs`` kling-2-6 jobs against the simulator (a subprocess), slot-bound
(--max-concurrent 200, generations of 15-21 s at --time-scale 0.3), run to the end with
the journal in a SQLite file and then in a fresh PostgreSQL database on a throwaway
cluster (tests/pg.py, ``fsync=on``, ``synchronous_commit=on``). Per job:

* statements the engine sent to its journal: for PostgreSQL ``pg_stat_statements``' calls
  in the campaign's database; for SQLite every statement but PRAGMA/BEGIN/COMMIT/
  SAVEPOINT/RELEASE, counted by a trace callback in a separate, traced run;
* commits, and of them the fsynced ones: PostgreSQL's ``xact_commit`` of the database and
  its WAL syncs (``pg_stat_wal.wal_sync``, cluster-wide: nothing else runs on it); for
  SQLite the COMMITs, and of them those made with ``synchronous=FULL``;
* the wall time of each untraced run (slot-bound: the two should be within noise).
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

from _harness import KEY, Sim, campaign, run_engine, simulator, workdir  # noqa: E402
from pg import pg_missing, start_cluster  # noqa: E402

FLAGS = ("--max-concurrent", "200", "--rpm", "9999", "--time-scale", "0.3")

# Runs the CLI with a trace callback on the journal's SQLite connection; writes
# "statements commits fsynced" to the file named by APIXO_BENCH_COUNTS at exit.
_TRACED = r"""
import atexit, os, sys
from apixo_batch.journal import connection
counts = [0, 0, 0]
real = connection.Connection.__init__
def init(self, *a, **k):
    real(self, *a, **k)
    def trace(sql):
        word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if word == "COMMIT":
            counts[1] += 1
            counts[2] += bool(self._synchronous_full)
        elif word not in ("PRAGMA", "BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK"):
            counts[0] += 1
    self._db.set_trace_callback(trace)
connection.Connection.__init__ = init
atexit.register(lambda: open(os.environ["APIXO_BENCH_COUNTS"], "w").write(
    " ".join(map(str, counts))))
from apixo_batch.cli.entry import main
sys.exit(main(sys.argv[1:]))
"""


def _sqlite_counts(sim: Sim, job_file: Path, wd: Path) -> tuple[int, int, int]:
    counts = wd / "counts.txt"
    env = {
        **os.environ,
        "APIXO_API_KEY": KEY,
        "APIXO_BASE_URL": sim.base_url,
        "APIXO_BENCH_COUNTS": str(counts),
    }
    subprocess.run(
        [sys.executable, "-c", _TRACED, "run", str(job_file), "--json", *FLAGS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    statements, commits, fsynced = (int(x) for x in counts.read_text().split())
    return statements, commits, fsynced


def _pg_stats(admin: Any, db: str) -> tuple[int, int, int]:
    with admin.cursor() as cur:
        cur.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (db,),
        )
        statements = int(cur.fetchone()[0])
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,))
        commits = int(cur.fetchone()[0])
        cur.execute("SELECT wal_sync FROM pg_stat_wal")
        syncs = int(cur.fetchone()[0])
    return statements, commits, syncs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    why = pg_missing()
    if why is not None:
        raise SystemExit(f"pg_journal: {why}")
    import psycopg

    n = args.jobs
    cluster = start_cluster(Path(tempfile.gettempdir()), preload="pg_stat_statements")
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            walls: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
            figures: dict[str, tuple[int, int, int]] = {}
            for rep in range(args.repeat):
                with workdir() as wd:
                    job_file = campaign(wd, n)
                    with simulator(
                        wd, time_scale=0.3, file_size=16 * 1024, balance=n * 10.0
                    ) as sim:
                        m = run_engine(sim, job_file, *FLAGS)
                        assert m.code == 0, m.summary
                        walls["sqlite"].append(m.wall_s)
                        if rep == 0:
                            # The traced run: a fresh campaign beside the first.
                            traced = wd / "traced"
                            traced.mkdir()
                            figures["sqlite"] = _sqlite_counts(sim, campaign(traced, n), traced)
                        db = f"bench_{rep}"
                        url = cluster.new_database(db)
                        admin.execute("SELECT pg_stat_statements_reset()")
                        admin.execute("SELECT pg_stat_reset_shared('wal')")
                        before = _pg_stats(admin, db)
                        pg_dir = wd / "pg"
                        pg_dir.mkdir()
                        m = run_engine(sim, campaign(pg_dir, n), "--state", url, *FLAGS)
                        assert m.code == 0, m.summary
                        walls["postgresql"].append(m.wall_s)
                        time.sleep(0.6)  # the statistics collector's flush
                        after = _pg_stats(admin, db)
                        if rep == 0:
                            figures["postgresql"] = (
                                after[0] - before[0],
                                after[1] - before[1],
                                after[2],
                            )
    finally:
        cluster.stop()
    print(f"pg_journal    {n} jobs, one runner, --max-concurrent 200, generations 15-21 s")
    for name in ("sqlite", "postgresql"):
        statements, commits, fsynced = figures[name]
        wall = statistics.median(walls[name])
        print(
            f"  {name:<10}  {statements / n:5.2f} statements/job  {commits / n:5.2f} "
            f"commits/job  {fsynced / n:5.2f} fsynced/job  wall {wall:6.1f} s "
            f"(median of {len(walls[name])})"
        )
    ratio = statistics.median(walls["postgresql"]) / statistics.median(walls["sqlite"])
    print(f"  wall PostgreSQL / SQLite = {ratio:.3f}")


if __name__ == "__main__":
    main()
