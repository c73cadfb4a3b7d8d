"""Several runners on one campaign in PostgreSQL (issue 33), at the journal's level:
prints figures, asserts nothing.

    python bench/pg_runners.py [--jobs 2000] [--runners 8] [--slots 200] [--gen 1.0]

A throwaway cluster (tests/pg.py, ``fsync=on``, ``synchronous_commit=on``,
``pg_stat_statements``). ``--runners`` runners, each with its own two sessions (one,
durable, for its lease, claims and submits: ``journal/pg/lease.py``; one with
``synchronous_commit=off`` for the shared limits and the follower's writes:
``journal/pg/shared_limits.py``), work through ``--jobs`` jobs:
slots taken from the account's pool up to the fair share, claims of up to 25 rows with
SKIP LOCKED, a token from the shared GCRA row per submit, the fenced ``submitting``
mark, the task id with its history, a generation of ``--gen`` s (a sleep: no API), then
``succeeded`` and ``done``; a heartbeat and an adoption sweep per second. Then the same
with one runner. ``--kill``: runner 0 dies (its tasks and sessions dropped, no leave) at
25 % of the jobs done, between a ``submitting`` mark and its task id; the adoptions are
reported with their delay after the kill (lease 3 s + grace 2.5 s + the sweep's period).

Reported per job: client statements (``pg_stat_statements`` calls in the database),
commits (``xact_commit``) and WAL syncs (``pg_stat_wal.wal_sync``: the fsynced
commits); claim latency p50/p99 on the runners; and the share of the account's slots
busy in steady state (between 20 % and 80 % of the jobs done), several runners against
one. The runners are asyncio tasks of one process (2 shared cores here), each with its
own sessions, so the database sees ``--runners`` clients.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from pg import pg_missing, start_cluster  # noqa: E402

from apixo_batch.clock import SystemClock  # noqa: E402
from apixo_batch.journal import NewJob, open_ledger  # noqa: E402
from apixo_batch.journal.pg.lease import RunnerLease  # noqa: E402
from apixo_batch.journal.pg.shared_limits import (  # noqa: E402
    ensure_account,
    fair_share,
    give_slots,
    take_slots,
    take_tokens,
)

ACCOUNT = "bench-account"
CLAIM = 25
BLOCK = 10


def _jobs(n: int) -> list[NewJob]:
    out = []
    for i in range(n):
        text = json.dumps({"prompt": f"bench {i}"})
        out.append(
            NewJob(
                id=f"job-{i:05d}",
                idx=i,
                model="kling-2-6",
                provider="kling",
                input_json=text,
                input_hash=hashlib.sha256(text.encode()).hexdigest(),
                filename=f"job-{i:05d}.mp4",
                cost_usd=0.3,
            )
        )
    return out


class Shared:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.in_flight = 0
        self.claim_ms: list[float] = []
        self.samples: list[tuple[int, int]] = []  # (done, in flight)
        self.kill_at: float | None = None  # --kill: share of the jobs done when runner 0 dies
        self.killed: float | None = None  # perf_counter at the kill
        self.adoptions: list[tuple[float, int, int, int]] = []  # (delay, followed, requeued, freed)


class _Killed(Exception):
    """Runner 0's kill -9 (--kill): it stops dead, between a mark and its task id."""


async def _runner(i: int, url: str, args: argparse.Namespace, live: int, sh: Shared) -> None:
    clock = SystemClock()
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    # Lazy, as PgLedger commits them: slot grants, succeeded, done (a lost one is polled
    # or fetched again); the lease's session stays durable (marks, task ids, heartbeats).
    side = await psycopg.AsyncConnection.connect(
        url, autocommit=True, options="-c synchronous_commit=off"
    )
    lease = RunnerLease(conn, "bench", clock)
    me = await lease.register("bench-host", 10_000 + i, "bench", [ACCOUNT])
    held, mine = 0, 0
    gens: set[asyncio.Task[None]] = set()

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(1.0)
            await lease.renew()
            # The adoption sweep, every heartbeat: a dead runner's paid rows are followed
            # (here: generated to the end), never submitted again.
            adopted = await lease.adopt()
            if adopted is None:
                continue
            nonlocal held, mine
            delay = time.perf_counter() - sh.killed if sh.killed is not None else float("nan")
            sh.adoptions.append((delay, len(adopted.followed), adopted.requeued, adopted.released))
            for row in adopted.followed:
                held += 1  # its slot moved with it
                mine += 1
                sh.in_flight += 1
                task = asyncio.create_task(generate(row.id))
                gens.add(task)
                task.add_done_callback(gens.discard)

    async def generate(job_id: str) -> None:
        nonlocal mine
        await asyncio.sleep(args.gen)
        await side.execute(
            "UPDATE jobs SET state='succeeded', result_urls='[\"u\"]' WHERE campaign='bench' "
            "AND id=%s AND state='submitted'",
            (job_id,),
        )
        await side.execute(
            "UPDATE jobs SET state='done' WHERE campaign='bench' AND id=%s AND state='succeeded'",
            (job_id,),
        )
        mine -= 1
        sh.in_flight -= 1
        sh.done += 1

    beat = asyncio.create_task(heartbeat())
    try:
        while True:
            # The fair share as of the last renewal: a runner that joins, leaves or dies
            # moves everybody's share; what is held beyond it and idle goes back.
            share = fair_share(args.slots, lease.live_runners if lease.live_runners else live)
            if held > share and held > mine:
                held -= await give_slots(side, me, ACCOUNT, min(held - share, held - mine))
            while held < share:
                got = await take_slots(side, me, ACCOUNT, min(BLOCK, share - held))
                if not got:
                    break
                held += got
            free = held - mine
            if free <= 0:
                await asyncio.sleep(0.02)
                continue
            t0 = time.perf_counter()
            rows = await lease.claim(min(CLAIM, free))
            sh.claim_ms.append((time.perf_counter() - t0) * 1000)
            if not rows:
                if mine == 0 and await lease.work_elsewhere() == 0:
                    break
                await asyncio.sleep(0.05)
                continue
            need = len(rows)
            while need:
                grant = await take_tokens(side, ACCOUNT, need)
                need -= grant.n
                if need:
                    await asyncio.sleep(max(grant.wait_s, 0.01))
            for row in rows:
                await lease.mark_submitting(row.id, 1, ACCOUNT)
                if i == 0 and sh.kill_at is not None and sh.done >= sh.kill_at * sh.total:
                    raise _Killed
                await lease.record_task_id(row.id, f"task-{row.id}", "bench", 1, key_id=ACCOUNT)
                mine += 1
                sh.in_flight += 1
                task = asyncio.create_task(generate(row.id))
                gens.add(task)
                task.add_done_callback(gens.discard)
        await give_slots(side, me, ACCOUNT, held)
        await lease.leave()
    except _Killed:
        sh.killed = time.perf_counter()
        sh.in_flight -= mine  # its tasks run on at the API; the adopter counts them again
    finally:
        beat.cancel()
        for task in list(gens):
            task.cancel()
        await conn.close()
        await side.close()


async def _sample(sh: Shared) -> None:
    while True:
        sh.samples.append((sh.done, sh.in_flight))
        await asyncio.sleep(0.05)


def _stats(admin: Any, db: str) -> tuple[int, int, int]:
    cur = admin.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
        "ON d.oid = s.dbid WHERE d.datname = %s",
        (db,),
    )
    calls = int(cur.fetchone()[0])
    commits = int(
        admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()[0]
    )
    syncs = int(admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0])
    return calls, commits, syncs


async def _setup(url: str, args: argparse.Namespace) -> None:
    ledger = await open_ledger(url, "bench", SystemClock(), anchor=Path(tempfile.mkdtemp()))
    await ledger.reconcile(_jobs(args.jobs), retry_failed=False)
    await ledger.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await ensure_account(conn, ACCOUNT, slots=args.slots, rpm=args.rpm, burst=50)


async def _campaign(url: str, args: argparse.Namespace, runners: int) -> Shared:
    sh = Shared(args.jobs)
    if args.kill and runners > 1:
        sh.kill_at = 0.25
    sampler = asyncio.create_task(_sample(sh))
    await asyncio.gather(*(_runner(i, url, args, runners, sh) for i in range(runners)))
    sampler.cancel()
    return sh


def _busy(sh: Shared, slots: int) -> float:
    lo, hi = 0.2 * sh.total, 0.8 * sh.total
    steady = [f for d, f in sh.samples if lo <= d <= hi]
    return statistics.fmean(steady) / slots if steady else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runners", type=int, default=8)
    ap.add_argument("--slots", type=int, default=200)
    ap.add_argument("--rpm", type=float, default=60_000)
    ap.add_argument("--gen", type=float, default=1.0)
    ap.add_argument(
        "--kill",
        action="store_true",
        help="runner 0 dies at 25 %% of the jobs done, between a mark and its task id",
    )
    args = ap.parse_args()
    why = pg_missing()
    if why is not None:
        sys.exit(f"pg_runners: {why}")
    cluster = start_cluster(Path(tempfile.gettempdir()), preload="pg_stat_statements")
    try:
        admin = psycopg.connect(cluster.url(), autocommit=True)
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        results = {}
        for runners in (args.runners, 1):
            db = f"bench_{runners}"
            url = cluster.new_database(db)
            asyncio.run(_setup(url, args))  # the jobs and the account, before counting
            admin.execute("SELECT pg_stat_statements_reset()")
            admin.execute("SELECT pg_stat_reset_shared('wal')")
            before = _stats(admin, db)
            t0 = time.perf_counter()
            sh = asyncio.run(_campaign(url, args, runners))
            wall = time.perf_counter() - t0
            after = _stats(admin, db)
            calls, commits, syncs = (b - a for a, b in zip(before, after, strict=True))
            with psycopg.connect(url, autocommit=True) as c:
                done, granted = c.execute(
                    "SELECT (SELECT count(*) FROM jobs WHERE state = 'done'), "
                    "(SELECT granted FROM accounts)"
                ).fetchone()
            with psycopg.connect(url, autocommit=True) as c:
                twice, flagged, attempts = c.execute(
                    "SELECT (SELECT count(*) FROM (SELECT job_id FROM task_history "
                    "GROUP BY job_id HAVING count(*) > 1) t), "
                    "(SELECT count(*) FROM jobs WHERE possibly_duplicated), "
                    "(SELECT count(*) FROM task_history)"
                ).fetchone()
            if sh.killed is not None:
                print(
                    f"kill at 25 %: adoptions (delay s, followed, requeued flagged, freed) "
                    f"{[(round(d, 2), f, r, x) for d, f, r, x in sh.adoptions]}; "
                    f"task ids {attempts} for {args.jobs} jobs, jobs with two task ids "
                    f"{twice}, jobs flagged possibly_duplicated {flagged}"
                )
            cl = sorted(sh.claim_ms)
            results[runners] = _busy(sh, args.slots)
            print(
                f"{runners} runner(s), {args.jobs} jobs: done {done}, pool granted at the end "
                f"{granted}; per job: statements {calls / args.jobs:.2f}, "
                f"commits {commits / args.jobs:.2f}, WAL syncs {syncs / args.jobs:.2f}; "
                f"claims {len(cl)}, p50 {cl[len(cl) // 2]:.2f} ms, "
                f"p99 {cl[int(len(cl) * 0.99)]:.2f} ms; slots busy (steady) "
                f"{results[runners]:.3f}; wall {wall:.1f} s"
            )
        print(
            f"slots busy, {args.runners} runners / 1 runner: "
            f"{results[args.runners] / results[1]:.3f}"
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
