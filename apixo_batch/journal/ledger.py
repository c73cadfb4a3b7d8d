"""The ledger: what the stages of a run may ask of the journal, one named method each.

:class:`Ledger` is the interface; it has two backends, a SQLite file
(:class:`~.local.SqliteLedger`, the default) and a PostgreSQL database
(:class:`~.pg.ledger.PgLedger`, ``--state postgresql://…``). Both hold the
journal's invariants the same way:

* every method is stamped with the injected clock's wall time;
* writes are queued when called, not at the first await, and commit even if the
  caller is cancelled; writes queued in one event-loop turn share a transaction,
  and one that fails is run again alone so that it cannot undo another's task id;
* ``mark_submitting`` and ``record_task_id`` are durable and never wait for
  company (invariant 1: a task id is committed as soon as its answer is read);
  the task id and its ``task_history`` row commit together;
* ``hand_back`` and ``fail_submit`` are durable (a job must not be lost between
  queued and failed);
* ``record_success``, ``record_done`` and ``record_partial`` are not: after a
  power loss the task is polled, or the file fetched, again while its URL lives;
* ``reconcile`` is durable, in one transaction of its own; the learned rate and
  the pruning of learned completions are not (an earlier value serves as well);
* a state change applies only from the states :data:`~.states.TRANSITIONS`
  allows, checked in the same statement, and is refused with
  :class:`~apixo_batch.errors.JournalError` otherwise;
* one run at a time holds a SQLite journal (a file lock): a second one is refused
  before it reads. A PostgreSQL journal takes several runs at once, each a *runner*
  with a lease (:class:`RunnerSpec`): a runner marks only the rows it claimed, and
  only while its lease is live (:class:`MarkRefused` otherwise: nothing is sent).
"""

from __future__ import annotations

import asyncio
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, Unpack

from ..errors import JournalError
from ..planning.kind import Kind
from ..planning.selection import Again, Selection
from .clash import Clash
from .decisions import Decision
from .reconcile import NewJob, SyncResult
from .rows import Change, JobRow
from .runs import LastRuns, RunRecord
from .states import JobState
from .store import DoneFiles

__all__ = [
    "Adoption",
    "Landed",
    "Lease",
    "Ledger",
    "MarkRefused",
    "RunnerSpec",
    "StateWrites",
    "Totals",
    "landed_change",
    "this_node",
]

T = TypeVar("T")


class MarkRefused(JournalError):
    """A submit may not leave: the row is not this runner's (another runner took it), or
    this runner's lease is not live. Nothing was sent; the run goes on."""

    #: True when the refusal may lift (the lease renews, the database answers again): the
    #: same mark is worth trying later; False: the row is someone else's, drop it
    retry = False


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """One ``run`` process as a runner of a shared (PostgreSQL) campaign: its lease is
    renewed every ``lease_s / 3``; a runner silent for ``lease_s + grace_s`` is adopted."""

    lease_s: float
    grace_s: float
    host: str
    pid: int
    version: str
    #: where a pid means this process: host, boot and pid namespace (None: unknown)
    node: str | None = None
    #: the jobs it may submit (``--only``, ``--model``): it claims no other
    selection: Selection = field(default_factory=Selection)
    #: the account (``learned.account_of`` digest, never the key) of each key it holds, by
    #: the fingerprint its tasks are journaled under (None: the run's one key)
    accounts: Mapping[str | None, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Adoption:
    """What one adoption took from one dead runner."""

    dead: int
    #: the paid rows now this runner's, to follow (submitted) or land (succeeded)
    followed: list[JobRow]
    #: its submits in doubt, back in the queue flagged possibly_duplicated
    requeued: int
    #: its claims that never reached a submit, free again
    released: int


class Lease(Protocol):
    """A runner's lease as the run keeps it (:class:`~.pg.lease.RunnerLease`)."""

    lease_s: float
    grace_s: float
    #: the lease was taken over, or given up: never live again
    lost: bool

    async def renew(self) -> bool: ...

    def fenced(self) -> bool: ...

    def past_term(self) -> bool: ...

    async def adopt(self, skip: Sequence[int] = ()) -> Adoption | None: ...

    async def next_adoption_s(self) -> float | None: ...

    async def claim_paid(self, states: Sequence[str], *, mine_too: bool = True) -> list[JobRow]: ...

    async def remaining(self) -> tuple[int, int]: ...

    async def release(self, job_ids: Sequence[str]) -> None: ...

    async def foreign_paid(self) -> int: ...

    async def not_done_unheld(self) -> int: ...

    async def strays(self) -> list[tuple[str, str, str, str | None]]: ...

    async def settle_stray(
        self, task_id: str, state: str, result_urls: Sequence[str], fail_code: str | None
    ) -> None: ...

    async def leave(self) -> None: ...


def this_node() -> str | None:
    """Where a pid names this process: the host, its boot and the pid namespace (two
    containers of one host name differ). None when the system does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{pid_ns}"


def landed_change(landed: Landed) -> Change:
    """The change that journals ``landed`` as a job's files (none: nothing to change)."""
    # Results that landed before a later one failed or expired stay journaled as the
    # job's files: they are paid for, and no other job may write over them.
    if not landed.files:
        return {}
    return {"files": list(landed.files), "bytes": landed.bytes, "sha256": list(landed.sha256)}


class Landed:
    """The files of one job that are on disk so far (paths relative to the output folder)."""

    __slots__ = ("bytes", "files", "sha256")

    def __init__(self) -> None:
        self.files: list[str] = []
        self.sha256: list[str] = []
        self.bytes = 0

    def add(self, file: str, sha256: str, size: int) -> None:
        self.files.append(file)
        self.sha256.append(sha256)
        self.bytes += size


class Totals:
    """Spend and doubt over the whole journal (this run and every one before)."""

    __slots__ = ("jobs", "possibly_duplicated", "spent_known_usd", "spent_unknown_jobs")

    def __init__(self, raw: dict[str, float]) -> None:
        self.jobs = int(raw["jobs"])
        self.possibly_duplicated = int(raw["possibly_duplicated"])
        self.spent_known_usd = raw["spent_known_usd"]
        self.spent_unknown_jobs = int(raw["spent_unknown_jobs"])


class StateWrites(ABC):
    """The writes that are one state change each, worded once for every backend: a
    backend gives ``_change`` (one transition, in its own transaction)."""

    changes: int

    async def strays(self) -> dict[str, list[dict[str, Any]]]:
        """Stray tasks by job: task ids that came back to a runner after its row was
        adopted (several runners on PostgreSQL only; a journal file has none)."""
        return {}

    @abstractmethod
    def _change(
        self, job_id: str, new: JobState, *, durable: bool = True, **change: Unpack[Change]
    ) -> asyncio.Future[None]: ...

    def fail_submit(
        self, job_id: str, code: str, message: str, possibly_duplicated: bool
    ) -> asyncio.Future[None]:
        return self._change(
            job_id,
            JobState.FAILED,
            fail_code=code,
            fail_msg=message,
            possibly_duplicated=possibly_duplicated,
        )

    def record_failure(
        self, job_id: str, *, fail_code: str, fail_msg: str, completed_at: float, via: str
    ) -> asyncio.Future[None]:
        return self._change(
            job_id,
            JobState.FAILED,
            fail_code=fail_code,
            fail_msg=fail_msg,
            completed_at=completed_at,
            arrived_via=via,
        )

    def record_done(self, job_id: str, landed: Landed) -> asyncio.Future[None]:
        return self._change(
            job_id,
            JobState.DONE,
            durable=False,
            files=landed.files,
            bytes=landed.bytes,
            sha256=landed.sha256,
        )

    def record_partial(self, job_id: str, landed: Landed) -> asyncio.Future[None] | None:
        """Some results landed, a later one did not (left for ``download``); None if none."""
        if not landed.files:
            return None
        return self._change(job_id, JobState.SUCCEEDED, durable=False, **landed_change(landed))

    def record_expired(self, job_id: str, message: str, landed: Landed) -> asyncio.Future[None]:
        change: Change = {
            "fail_code": "RESULT_EXPIRED",
            "fail_msg": message,
            **landed_change(landed),
        }
        return self._change(job_id, JobState.EXPIRED, **change)


class Ledger(Protocol):
    """Typed access to the journal for the stages of a run (see the module docstring)."""

    #: job changes past the queue this run asked for (a task id, an end, a file): a run
    #: that made none did no work, and the review page's "last run" skips it
    changes: int

    async def strays(self) -> dict[str, list[dict[str, Any]]]: ...

    @property
    def path(self) -> Path:
        """A local file the run keeps beside the journal: the side file of task ids the
        journal refused is ``<path>.unrecorded`` (for a database, a path in the output's
        journal folder that holds no journal)."""
        ...

    @property
    def where(self) -> str:
        """The journal as messages name it (a database URL without its password)."""
        ...

    @property
    def runner(self) -> Lease | None:
        """This run as one of several runners of a shared campaign (its lease), or None:
        the only run of its journal (SQLite, or a database opened without a runner)."""
        ...

    async def close(self) -> None: ...

    # -- the start of a run -------------------------------------------------
    async def reconcile(
        self,
        jobs: Iterable[NewJob] | None,
        *,
        retry_failed: bool = False,
        again: Again | None = None,
    ) -> tuple[int, SyncResult]:
        """Crash leftovers back to the queue, then the job file synced in (the input edited
        meanwhile is the one sent; None: no job file, the jobs left as they are), the ended
        jobs ``again`` picks queued again (a done one on a new take; ``retry_failed``
        alone: every failed file job). Returns (submits cut off by a crash, the sync)."""
        ...

    async def read_done(self, consume: Callable[[Iterator[DoneFiles]], T]) -> T:
        """``consume(jobs)`` off the event loop over every ``done`` job's files, file jobs
        first, in file order: how they are checked against the disk."""
        ...

    async def refetch(self, job_ids: Sequence[str]) -> None:
        """``done`` jobs whose files are not on disk as journaled go back to ``succeeded``
        (names kept, sizes and hashes forgotten), in one durable transaction: the lander
        fetches them again."""
        ...

    async def totals(self) -> Totals: ...

    async def learned_completions(self) -> dict[str, list[float]]:
        """The completion times earlier runs saw (older ones pruned as they are read)."""
        ...

    async def in_flight(self) -> list[JobRow]:
        """Every job with a task that may still be running (adopted from an earlier run)."""
        ...

    async def queued_cost(self) -> tuple[float, int, int]: ...

    async def keep_run(self, record: RunRecord) -> None:
        """This run, kept for the review page (:mod:`.runs`)."""
        ...

    async def last_runs(self) -> LastRuns: ...

    async def counts(self) -> dict[str, int]: ...

    async def queued_cut_off(self) -> int:
        """Queued jobs whose last submit was cut off before its answer was journaled."""
        ...

    async def counts_by_model(self) -> dict[str, dict[str, int]]: ...

    async def callback_token(self, new: str) -> str:
        """The campaign's callback token: made once (``new``), kept for every later run."""
        ...

    async def output(self) -> str | None:
        """Where this journal's results land, once a run found that output usable."""
        ...

    async def keep_file_stamp(self, stamp: str) -> None:
        """The job file this journal was last synced from (``Campaign.stamp``)."""
        ...

    async def keep_output(self, where: str) -> None: ...

    async def identity(self) -> str:
        """The journal's identity: a random id made once, kept for every later run (an
        output folder names the journal it belongs to by it)."""
        ...

    async def known_task_ids(self, task_ids: Collection[str]) -> set[str]:
        """Those of ``task_ids`` this journal holds (a job's task, now or before)."""
        ...

    async def keep_campaign(self, name: str) -> str:
        """The campaign this journal is for: the first run's name, kept."""
        ...

    async def learned_rpm(self, account: str) -> float | None:
        """The request rate an earlier run learned for this key and base URL (a digest)."""
        ...

    def remember_rpm(self, account: str, rpm: float | None) -> asyncio.Future[None]:
        """Keep (or, with None, forget) the rate this run learned, for the next run."""
        ...

    # -- reads during the run -----------------------------------------------
    def rows(self, state: JobState, *, page: int, file_only: bool) -> AsyncIterator[JobRow]:
        """Jobs in ``state``, in file order, read a page at a time."""
        ...

    def queued_by_kind(
        self, order: Callable[[list[Kind]], Iterable[Kind]], *, page: int
    ) -> AsyncIterator[JobRow]:
        """Queued file jobs kind by kind, the kinds as ``order`` ranks them (given in the
        file order of each kind's first job), in file order within a kind; a page at a
        time (bounded memory)."""
        ...

    async def queued_brief(self) -> list[tuple[str, str, float | None, Kind]]:
        """(id, model, cost, kind) of every queued file job, in file order: what a selected
        run's estimate needs (``--only``, ``--model``, ``--limit``)."""
        ...

    async def queued_runs(self) -> list[tuple[Kind, int]]: ...

    def by_task(self, task_id: str) -> asyncio.Future[JobRow | None]: ...

    def file_owners(self) -> asyncio.Future[dict[str, tuple[str, ...]]]: ...

    def refuse_clashes(
        self, exists: Callable[[str], bool] | None, shown: Callable[[str], str]
    ) -> asyncio.Future[list[Clash]]:
        """Queued jobs whose output name is taken, ended ``failed`` before any submit
        (see :mod:`.clash`; ``exists`` runs off the event loop)."""
        ...

    # -- the submitter's writes ---------------------------------------------
    def mark_submitting(self, job_id: str, attempts: int) -> asyncio.Future[None]:
        """The request is about to leave: from here a crash leaves doubt."""
        ...

    def record_task_id(
        self,
        job_id: str,
        task_id: str,
        request_type: str,
        possibly_duplicated: bool,
        key_fp: str | None = None,
    ) -> asyncio.Future[None]:
        """The paid task's id: committed at once, alone if need be (invariant 1), with the
        fingerprint of the key that created it (only that key reads it)."""
        ...

    def adopt(self, job_id: str, task_id: str, request_type: str) -> asyncio.Future[bool]:
        """A paid task id kept outside the journal, journaled (durable) as the job's task;
        False if the job already has it (see :func:`~.unrecorded.adopt_task`)."""
        ...

    def hand_back(self, job_id: str, possibly_duplicated: bool) -> asyncio.Future[None]:
        """A marked job goes back to the queue unsent (or sent with no task id known).

        A job still ``queued`` is left as it is: its mark never landed, so nothing was
        sent and nothing is to undo. Any other refusal is raised."""
        ...

    def fail_submit(
        self, job_id: str, code: str, message: str, possibly_duplicated: bool
    ) -> asyncio.Future[None]: ...

    # -- the follower's writes ----------------------------------------------
    def record_success(
        self,
        job_id: str,
        *,
        result_urls: Sequence[str],
        completed_at: float,
        expires_at: float,
        cost_time_ms: int | None,
        via: str,
        clock_key: str,
        seconds: float,
    ) -> asyncio.Future[None]:
        """Result URLs known, with the completion time learned (one transaction)."""
        ...

    def record_failure(
        self, job_id: str, *, fail_code: str, fail_msg: str, completed_at: float, via: str
    ) -> asyncio.Future[None]: ...

    # -- the lander's writes ------------------------------------------------
    def record_done(self, job_id: str, landed: Landed) -> asyncio.Future[None]: ...

    def record_partial(self, job_id: str, landed: Landed) -> asyncio.Future[None] | None:
        """Some results landed, a later one did not (left for ``download``); None if none."""
        ...

    def record_expired(self, job_id: str, message: str, landed: Landed) -> asyncio.Future[None]: ...

    # -- the end ------------------------------------------------------------
    async def read_rows(self, consume: Callable[[Iterable[JobRow]], T]) -> T:
        """``consume(rows)`` off the event loop, the rows in file order (file jobs first):
        how the manifest and the review page are written without a copy of the journal."""
        ...

    async def read_reviewed(
        self, consume: Callable[[Iterable[JobRow], Mapping[str, Decision]], T]
    ) -> T:
        """``consume(rows, decisions)``: :meth:`read_rows` with the review page's decisions
        by job id (only the decided jobs are held in memory)."""
        ...
