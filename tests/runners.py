"""Several runners on one PostgreSQL campaign (issue 33), end to end: start N real
``apixo-batch run JOBFILE --state URL`` processes against one in-process simulator,
disturb them (``kill -9``, ``SIGSTOP``/``SIGCONT``, a database restart), then read what
happened from the two ground truths: the simulator (every task it created, per job)
and the database (``jobs``, ``task_history``, ``runners``).

::

    fleet = Fleet(sim, job_file, url, FAST)
    await fleet.start(4)
    victim = await fleet.kill_at(0, lambda c: c.done >= 50)
    results = await fleet.finish()
    outcome = await Outcome.read(sim, url)
    outcome.assert_paid_once()

A runner's lease and grace are shortened for tests through the environment the core
reads (:data:`LEASE_ENV`), so an adoption comes seconds, not a minute, after a death.

``Fleet(..., hosts=True)`` starts each runner in a PID namespace of its own
(``unshare --pid --fork``): to the runners they are on different machines, so a dead
one is found by its lease alone (on one machine a runner sees at once that another's
process is gone). :func:`hosts_missing` says where that cannot be had.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from e2e import CliResult, cli_env

from apixo_batch.simulator import Simulator

__all__ = [
    "LEASE_ENV",
    "Counts",
    "Fleet",
    "Outcome",
    "Partition",
    "counts",
    "hosts_missing",
    "job_of_prompt",
    "wait_for",
]

#: a short lease for tests: (lease seconds, grace seconds); the sweep runs every lease/3
LEASE_S, GRACE_S = 2.0, 1.0
LEASE_ENV = {"APIXO_BATCH_LEASE_S": f"{LEASE_S:g}", "APIXO_BATCH_GRACE_S": f"{GRACE_S:g}"}
#: the one line of a runner whose lease was taken (exit 75)
TAKEN_OVER = "another runner took over; nothing lost"


def job_of_prompt(prompt: str) -> str:
    """The job id of e2e.simple_jobs' prompt ``scene number N``."""
    return f"job-{int(prompt.rsplit(' ', 1)[1]):04d}"


@dataclass(frozen=True)
class Counts:
    """The campaign's rows by state now, and how many jobs hold a task id."""

    states: dict[str, int]
    journaled: int

    @property
    def done(self) -> int:
        return self.states.get("done", 0)

    @property
    def total(self) -> int:
        return sum(self.states.values())


async def counts(url: str) -> Counts:
    """:class:`Counts` read beside the running runners (empty before the first made
    the tables, or while the database is down)."""
    try:
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=2) as conn:
            cur = await conn.execute("SELECT to_regclass('jobs') IS NOT NULL")
            made = await cur.fetchone()
            if made is None or not made[0]:
                return Counts({}, 0)
            cur = await conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")
            states = {str(s): int(n) for s, n in await cur.fetchall()}
            cur = await conn.execute("SELECT count(*) FROM jobs WHERE task_id IS NOT NULL")
            row = await cur.fetchone()
    except psycopg.Error:
        return Counts({}, 0)
    return Counts(states, 0 if row is None else int(row[0]))


async def wait_for(
    what: str,
    ready: Callable[[], Awaitable[bool]],
    *,
    limit: float = 60.0,
    every: float = 0.05,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll ``ready()`` until true; the loop time it became so. ``alive()`` false (the
    processes it waits on all ended) or ``limit`` seconds: an AssertionError naming
    ``what``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not await ready():
        if loop.time() > end or not alive():
            raise AssertionError(f"{what}: never came")
        await asyncio.sleep(every)
    return loop.time()


class Partition:
    """A TCP relay to the database that the test can cut: the runners given
    :meth:`url` lose it (their connections reset, new ones refused) while the others
    and the API do not, as a network partition of one machine.

    ::

        async with Partition(url) as part:
            runner = Fleet(sim, job_file, part.url(url), FAST)
            ...
            part.cut(); ...; part.heal()
    """

    def __init__(self, url: str) -> None:
        self._target = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        self.cut_off = False
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Partition:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def url(self, url: str) -> str:
        return url.replace(f":{self._target}/", f":{self.port}/")

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def heal(self) -> None:
        self.cut_off = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


_UNSHARE = ("unshare", "--pid", "--fork", "--kill-child")


def hosts_missing() -> str | None:
    """One line saying why runners cannot be put on "other machines" here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare (util-linux) to give each runner a PID namespace of its own"
    done = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        return f"unshare --pid refused here: {done.stderr.decode().strip()[:200]}"
    return None


@dataclass
class Fleet:
    """N runner processes of one campaign: started, signalled, and waited for."""

    sim: Simulator
    job_file: Path
    url: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: each runner in a PID namespace of its own: a machine of its own to the runners
    hosts: bool = False
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    #: wall time (time.time) of each SIGKILL sent, by runner index
    killed_at: dict[int, float] = field(default_factory=dict)
    _runner_pids: list[int] = field(default_factory=list)
    _pid_ns: list[int] = field(default_factory=list)

    async def start(self, n: int) -> None:
        """Start ``n`` more runners (they register, sync the job file and claim)."""
        env = {**cli_env(self.sim), **LEASE_ENV, **self.env}
        argv = [sys.executable, "-m", "apixo_batch", "run", str(self.job_file)]
        argv += ["--state", self.url, *self.args]
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                *(_UNSHARE if self.hosts else ()),
                *argv,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
            )
            self.procs.append(proc)
            pid = await self._runner_pid(proc) if self.hosts else proc.pid
            self._runner_pids.append(pid)
            self._pid_ns.append(os.stat(f"/proc/{pid}/ns/pid").st_ino)

    @staticmethod
    async def _runner_pid(proc: asyncio.subprocess.Process) -> int:
        """The runner under ``unshare --fork``: its one child, by the pid we see."""
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for _ in range(500):
            found = children.read_text().split()  # noqa: ASYNC240 (procfs: no disk I/O)
            if found:
                return int(found[0])
            await asyncio.sleep(0.01)
        raise AssertionError("unshare started no runner")

    def alive(self) -> bool:
        return any(p.returncode is None for p in self.procs)

    def signal(self, i: int, sig: int) -> None:
        """``sig`` to runner ``i`` itself (not to an unshare around it)."""
        if self.procs[i].returncode is None:
            os.kill(self._runner_pids[i], sig)
        if sig == signal.SIGKILL:
            self.killed_at[i] = time.time()

    def stop_all(self) -> None:
        """SIGSTOP every runner still running (a stall of every machine at once)."""
        for i in range(len(self.procs)):
            self.signal(i, signal.SIGSTOP)

    def cont_all(self) -> None:
        for i in range(len(self.procs)):
            self.signal(i, signal.SIGCONT)

    async def runner_id(self, i: int) -> int:
        """The ``runners`` row of our process ``i`` (by its pid, or its PID namespace)."""
        where, arg = (
            ("node LIKE %s", f"%/{self._pid_ns[i]}")
            if self.hosts
            else ("pid = %s", self._runner_pids[i])
        )
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = await conn.execute(f"SELECT id FROM runners WHERE {where}", (arg,))
            row = await cur.fetchone()
        assert row is not None, f"runner {i} is not registered"
        return int(row[0])

    async def index_of(self, runner_id: int) -> int:
        """Which of our processes is the ``runners`` row ``runner_id``."""
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = await conn.execute("SELECT pid, node FROM runners WHERE id = %s", (runner_id,))
            row = await cur.fetchone()
        assert row is not None, runner_id
        pid, node = int(row[0]), str(row[1] or "")
        for i, ns in enumerate(self._pid_ns):
            if (self.hosts and node.endswith(f"/{ns}")) or (
                not self.hosts and pid == self._runner_pids[i]
            ):
                return i
        raise AssertionError(f"runner {runner_id} (pid {pid}, node {node}) is none of ours")

    async def finish(self, limit: float = 90.0) -> list[CliResult]:
        """Every runner's result (a killed one's too), in start order. A runner still
        running after ``limit`` seconds fails the test with what it and the database
        said at that moment (the last events, the rows of runners, jobs and slots)."""
        reads = [
            (asyncio.ensure_future(_drain(p.stdout)), asyncio.ensure_future(_drain(p.stderr)))
            for p in self.procs
        ]
        waits = [asyncio.ensure_future(p.wait()) for p in self.procs]
        _, pending = await asyncio.wait(waits, timeout=limit)
        stuck = [i for i, w in enumerate(waits) if w in pending]
        said = await self._database_said() if stuck else ""
        for i in stuck:
            # SIGINT first: an interrupted run says what it still waits for.
            self.signal(i, signal.SIGINT)
        if stuck:
            await asyncio.wait(waits, timeout=5.0)
            for i in stuck:
                self.signal(i, signal.SIGKILL)
        await asyncio.gather(*waits)
        outs = [(await out, await err) for out, err in reads]
        codes = [await w for w in waits]
        results = [CliResult(c, out, err) for c, (out, err) in zip(codes, outs, strict=True)]
        if stuck:
            lines = [
                f"runners {stuck} did not finish in {limit:g} s (exits {codes}, pids "
                f"{self._runner_pids}); the database said:",
                said,
            ]
            for i in stuck:
                tail = "\n".join(results[i].stdout.splitlines()[-6:])
                lines += [f"--- runner {i} stdout (last lines):", tail]
                lines += [f"--- runner {i} stderr:", results[i].stderr[-2000:]]
            lines.append("--- the events of jobs not done, by runner:")
            for job in sorted(set(re.findall(r"'(job-[^']+)', '(?!done)", said))):
                for i, res in enumerate(results):
                    lines += [f"{i}: {e}" for e in res.events if e.get("job") == job]
            raise AssertionError("\n".join(lines))
        return results

    async def _database_said(self) -> str:
        """The rows that tell where a campaign is stuck (for a failure's message)."""
        queries = {
            "runners": "SELECT id, pid, stopped, adopted_by, lease_until - clock_timestamp() "
            "FROM runners ORDER BY id",
            "jobs by state and owner": "SELECT state, owner, count(*) FROM jobs "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            "jobs not done": "SELECT id, state, owner, task_id, attempts FROM jobs "
            "WHERE state <> 'done' ORDER BY id LIMIT 20",
            "accounts": "SELECT id, slots_limit, granted FROM accounts",
            "slot_grants": "SELECT runner, account, held FROM slot_grants ORDER BY 1",
        }
        lines = []
        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                for name, query in queries.items():
                    try:
                        cur = await conn.execute(query)
                        lines.append(f"{name}: {await cur.fetchall()}")
                    except psycopg.Error as exc:
                        lines.append(f"{name}: {exc}")
        except psycopg.Error as exc:
            lines.append(f"the database: {exc}")
        return "\n".join(lines)


async def _drain(stream: asyncio.StreamReader | None) -> str:
    return "" if stream is None else (await stream.read()).decode()


@dataclass(frozen=True)
class SimTaskSeen:
    task_id: str
    created: float  # wall seconds at the simulator


@dataclass(frozen=True)
class Journaled:
    task_id: str
    at: float  # wall seconds the database committed it (task_history.submitted_at)
    runner: int | None


@dataclass
class Outcome:
    """What a campaign of several runners left: the simulator's tasks per job, the
    journal's rows, task history and runners."""

    jobs: dict[str, dict[str, Any]]
    history: dict[str, list[Journaled]]
    created: dict[str, list[SimTaskSeen]]
    runners: list[dict[str, Any]]

    @classmethod
    async def read(cls, sim: Simulator, url: str) -> Outcome:
        created: dict[str, list[SimTaskSeen]] = defaultdict(list)
        for task in sim.tasks.values():
            created[job_of_prompt(str(task.input["prompt"]))].append(
                SimTaskSeen(task.task_id, task.create_ms / 1000.0)
            )
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute(
                "SELECT id, state, task_id, possibly_duplicated, owner, files, sha256 FROM jobs"
            )
            jobs = {
                str(r[0]): {
                    "state": r[1],
                    "task_id": r[2],
                    "possibly_duplicated": bool(r[3]),
                    "owner": r[4],
                    "files": r[5],
                    "sha256": r[6],
                }
                for r in await cur.fetchall()
            }
            cur = await conn.execute(
                "SELECT job_id, task_id, submitted_at, runner FROM task_history "
                "ORDER BY submitted_at"
            )
            history: dict[str, list[Journaled]] = defaultdict(list)
            for job_id, task_id, at, runner in await cur.fetchall():
                history[str(job_id)].append(Journaled(str(task_id), float(at), runner))
            cur = await conn.execute(
                "SELECT id, pid, host, adopted_by, stopped, "
                "extract(epoch FROM lease_until)::float8 FROM runners ORDER BY id"
            )
            names = ("id", "pid", "host", "adopted_by", "stopped", "lease_until")
            runners = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
        return cls(jobs, dict(history), dict(created), runners)

    # --- the two sins, in figures ----------------------------------------------------

    @property
    def submits(self) -> int:
        return sum(len(t) for t in self.created.values())

    @property
    def extra_submits(self) -> int:
        """Tasks created beyond one per job."""
        return sum(len(t) - 1 for t in self.created.values() if t)

    def not_journaled(self) -> dict[str, list[str]]:
        """Per job, the tasks the simulator created whose id no journal write kept."""
        out = {}
        for job, tasks in self.created.items():
            kept = {h.task_id for h in self.history.get(job, [])}
            lost = [t.task_id for t in tasks if t.task_id not in kept]
            if lost:
                out[job] = lost
        return out

    def strays(self) -> dict[str, list[str]]:
        """Per job, task ids journaled only in ``task_history`` by a runner that was adopted
        meanwhile (its answer came after its ``submitting`` row went back to the queue
        flagged): paid twice by design, never silently (design 3.5, "stray")."""
        adopted = {r["id"] for r in self.runners if r["adopted_by"] is not None}
        out: dict[str, list[str]] = {}
        for job, hs in self.history.items():
            final = self.jobs.get(job, {}).get("task_id")
            late = [h.task_id for h in hs if h.runner in adopted and h.task_id != final]
            if late:
                out[job] = late
        return out

    def resubmitted_after_journaled(self, *, strays_ok: bool = False) -> list[tuple[str, str]]:
        """(job, task) of every task created after another task id of its job was already
        durable in the journal: the sin this whole design exists to prevent.
        ``strays_ok``: a stray's late id does not count (its row was requeued before it
        arrived)."""
        strays = {t for ts in self.strays().values() for t in ts} if strays_ok else set()
        sins = []
        for job, tasks in self.created.items():
            for t in tasks:
                earlier = [
                    h
                    for h in self.history.get(job, [])
                    if h.task_id != t.task_id and h.at < t.created and h.task_id not in strays
                ]
                if earlier:
                    sins.append((job, t.task_id))
        return sins

    def unflagged_duplicates(self) -> list[str]:
        """Jobs the simulator created more than one task for that the journal does not
        flag ``possibly_duplicated``."""
        return sorted(
            job
            for job, tasks in self.created.items()
            if len(tasks) > 1 and not self.jobs.get(job, {}).get("possibly_duplicated")
        )

    def not_done(self) -> dict[str, str]:
        return {j: str(r["state"]) for j, r in self.jobs.items() if r["state"] != "done"}

    def mutual_adoptions(self) -> list[tuple[int, int]]:
        by_id = {r["id"]: r for r in self.runners}
        return sorted(
            (r["id"], r["adopted_by"])
            for r in self.runners
            if r["adopted_by"] is not None
            and by_id.get(r["adopted_by"], {}).get("adopted_by") == r["id"]
        )

    def runner(self, runner_id: int) -> dict[str, Any]:
        [row] = [r for r in self.runners if r["id"] == runner_id]
        return row

    def assert_paid_once(self, *, strays_ok: bool = False) -> None:
        """Every job done; each extra task the simulator created is one whose id never
        reached the journal (or, with ``strays_ok``, a stray), on a job flagged
        possibly_duplicated; no job submitted again after its task id was journaled."""
        assert not self.not_done(), f"jobs not done: {self.not_done()}"
        sins = self.resubmitted_after_journaled(strays_ok=strays_ok)
        assert not sins, f"submitted again after the task id was journaled: {sins}"
        lost = self.not_journaled()
        strays = self.strays() if strays_ok else {}
        # A job's extra tasks are exactly its tasks that never reached the journal (the
        # one it ended with was journaled), and strays where a runner was cut off.
        paid_extra = sum(len(v) for v in lost.values()) + sum(len(v) for v in strays.values())
        assert self.extra_submits <= paid_extra, (self.extra_submits, lost, strays)
        unflagged = [j for j in {*lost, *strays} if not self.jobs[j]["possibly_duplicated"]]
        assert not unflagged, f"extra tasks on jobs not flagged: {unflagged}"
        assert not self.unflagged_duplicates(), self.unflagged_duplicates()


async def adoption_of(url: str, runner_id: int, *, limit: float = 60.0) -> tuple[float, int]:
    """Wait until runner ``runner_id`` is adopted; (wall time seen, adopter's id)."""
    found: list[int] = []

    async def adopted() -> bool:
        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=2) as conn:
                cur = await conn.execute(
                    "SELECT adopted_by FROM runners WHERE id = %s", (runner_id,)
                )
                row = await cur.fetchone()
        except psycopg.Error:
            return False
        if row is None or row[0] is None:
            return False
        found.append(int(row[0]))
        return True

    await wait_for(f"adoption of runner {runner_id}", adopted, limit=limit, every=0.02)
    return time.time(), found[0]
