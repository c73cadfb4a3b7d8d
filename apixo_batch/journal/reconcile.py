"""Reconciliation: the journal brought in line with the job file, by id and input hash.

A job new to the journal is added ``queued``. A job whose input is unchanged keeps
everything it has. A changed input replaces the old one only if the old one was
never paid for; a paid (or possibly paid) task keeps following the input it was
submitted with, and the sync says so (``changed_after_submit``). A job gone from
the file keeps its row (``in_file=0``): its paid work is still followed.

A run starts with :meth:`Reconcile.reconcile`: what earlier runs left (submits a
crash cut off, submits never answered, and with ``--retry-failed`` the failed jobs)
back to the queue, then the sync, in one transaction. The journal stores what it
is given: the caller prices the jobs (:meth:`~apixo_batch.jobs.Campaign.cost`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING

from ..catalog.again import take_input
from ..planning.selection import Again
from .changes import StateChanges
from .rows import json_list
from .states import JobState

if TYPE_CHECKING:
    from ..jobs import Campaign

__all__ = ["NewJob", "Reconcile", "SyncResult", "jobs_of", "take_json"]

S = JobState


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the job file says about one job (the journal's input for a sync): each field
    is the column of the same name."""

    id: str
    idx: int
    model: str
    provider: str
    input_json: str
    input_hash: str
    filename: str
    cost_usd: float | None


#: no ended job is queued again
_NONE = Again()

_NEW = tuple(f.name for f in fields(NewJob))
_new_values = attrgetter(*_NEW)
_INSERT = (
    f"INSERT INTO jobs({', '.join(_NEW)}, in_file, state, updated_at) "
    f"VALUES ({'?, ' * len(_NEW)}1, '{S.QUEUED.value}', ?)"
)


@dataclass
class SyncResult:
    added: int = 0
    unchanged: int = 0
    updated: int = 0  # input changed before any submit: the new input is used
    changed_after_submit: list[str] | None = None  # ids whose paid task follows the old input
    dropped_from_file: int = 0
    #: of ``changed_after_submit``: the jobs whose task had ended (id -> failed, done or
    #: expired), which only ``--retry-failed``, ``--reroll`` or ``--retry-expired`` send
    ended: dict[str, str] = field(default_factory=dict)
    #: failed jobs --retry-failed left alone: their input was refused and has not changed
    #: since (id -> fail code)
    refused_unchanged: dict[str, str] = field(default_factory=dict)
    #: ended jobs queued again by ``Again`` (state -> how many)
    again: dict[str, int] = field(default_factory=dict)


def jobs_of(campaign: Campaign) -> Iterator[NewJob]:
    """What the job file says of each job, priced by the campaign, in file order (streamed)."""
    for job in campaign.iter_jobs():
        yield NewJob(
            id=job.id,
            idx=job.index,
            model=job.model,
            provider=job.provider,
            input_json=json.dumps(dict(job.input), sort_keys=True, ensure_ascii=False),
            input_hash=job.input_hash,
            filename=job.filename,
            cost_usd=campaign.cost(job),
        )


def take_json(j: NewJob, take: int) -> str:
    """The input a job's take is sent with: the file's, with the take's own seed from the
    second take on (:func:`~apixo_batch.catalog.again.take_input`). Its ``input_hash``
    stays the file's: the file did not change, so no sync calls it changed."""
    if take <= 1:
        return j.input_json
    inp = take_input(j.model, j.id, json.loads(j.input_json), take)
    return json.dumps(inp, sort_keys=True, ensure_ascii=False)


class Reconcile(StateChanges):
    """The journal's half that follows the job file (see the module docstring)."""

    def reconcile(
        self,
        jobs: Iterable[NewJob] | None,
        now: float,
        *,
        retry_failed: bool = False,
        again: Again | None = None,
    ) -> tuple[int, SyncResult]:
        """The start of a run, in one transaction: crash leftovers back to the queue, then
        the job file synced in (the input edited meanwhile is the one sent), the ended jobs
        ``again`` picks queued again as they are met (``retry_failed``: every failed job).
        Returns (submits cut off by a crash, the sync). Consumes ``jobs``: run it once."""
        if again is None:
            again = Again(failed=retry_failed)
        with self.transaction():
            recovered = self.recover_interrupted_submits(now)
            self.requeue_unanswered_submits(now)
            if jobs is None:  # no job file: the journal's jobs stay as they are
                return recovered, SyncResult(changed_after_submit=[])
            return recovered, self.sync(jobs, now, again=again)

    # -- sync with the job file -----------------------------------------------
    def sync(
        self, jobs: Iterable[NewJob], now: float, batch: int = 2000, *, again: Again = _NONE
    ) -> SyncResult:
        """Bring the journal in line with the job file, in one transaction; the file is
        read ``batch`` jobs at a time (bounded memory). Ended jobs ``again`` picks are
        queued again with the file's input (a new task: paid again)."""
        result = SyncResult(changed_after_submit=[])
        with self.transaction() as db:
            db.execute("UPDATE jobs SET in_file=0")
            chunk: list[NewJob] = []
            for job in jobs:
                chunk.append(job)
                if len(chunk) >= batch:
                    self._sync_chunk(chunk, now, result, again)
                    chunk = []
            if chunk:
                self._sync_chunk(chunk, now, result, again)
            row = db.execute("SELECT count(*) FROM jobs WHERE in_file=0").fetchone()
        result.dropped_from_file = int(row[0])
        return result

    def _sync_chunk(
        self, chunk: list[NewJob], now: float, result: SyncResult, again: Again
    ) -> None:
        db = self._db
        ids = [j.id for j in chunk]
        known: dict[str, tuple[str, str, str | None, str | None, int]] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for jid, h, state, task, code, take in db.execute(
                "SELECT id, input_hash, state, task_id, fail_code, take FROM jobs "
                f"WHERE id IN ({marks})",
                part,
            ):
                known[jid] = (h, state, task, code, int(take))
        for j in chunk:
            old = known.get(j.id)
            if old is None:
                db.execute(_INSERT, (*_new_values(j), now))
                result.added += 1
                continue
            old_hash, state, task_id, code, take = old
            if again.any and self._queued_again(
                j, state, code, old_hash == j.input_hash, now, result, again
            ):
                continue
            if old_hash == j.input_hash:
                db.execute(
                    "UPDATE jobs SET idx=?, filename=?, cost_usd=?, in_file=1, "
                    "changed_input_hash=NULL WHERE id=?",
                    (j.idx, j.filename, j.cost_usd, j.id),
                )
                result.unchanged += 1
            elif task_id is None and state in (S.QUEUED.value, S.FAILED.value):
                # Never paid for under the old input: the new input simply replaces it
                # (and an input the API rejected gets its chance once it is fixed).
                db.execute(
                    "UPDATE jobs SET idx=?, model=?, provider=?, input_json=?, input_hash=?, "
                    "filename=?, cost_usd=?, in_file=1, changed_input_hash=NULL, "
                    "fail_code=NULL, fail_msg=NULL, updated_at=? WHERE id=?",
                    (j.idx, j.model, j.provider, take_json(j, take), j.input_hash, j.filename,
                     j.cost_usd, now, j.id),
                )  # fmt: skip
                if state == S.FAILED.value:
                    self.transition(j.id, S.QUEUED, now)
                result.updated += 1
            else:
                # Paid (or possibly paid) under the old input: keep following that task,
                # and say so; resubmitting silently would pay twice.
                db.execute(
                    "UPDATE jobs SET idx=?, filename=?, in_file=1, changed_input_hash=? WHERE id=?",
                    (j.idx, j.filename, j.input_hash, j.id),
                )
                assert result.changed_after_submit is not None
                result.changed_after_submit.append(j.id)
                if state in (S.FAILED.value, S.DONE.value, S.EXPIRED.value):
                    result.ended[j.id] = state

    def _queued_again(
        self, j: NewJob, state: str, code: str | None, unchanged: bool, now: float,
        result: SyncResult, again: Again,
    ) -> bool:  # fmt: skip
        """An ended job ``again`` picks, queued again with the file's input (a new take
        for a done one); True if it was."""
        if state == S.FAILED.value:
            verdict = again.failed_again(j.id, j.model, code, unchanged)
            if verdict == "refused":
                result.refused_unchanged[j.id] = code or ""
            if verdict != "retry":
                return False
        elif state not in (S.DONE.value, S.EXPIRED.value) or not again.picks(state, j.id, j.model):
            return False
        take, files, earlier = self._db.execute(
            "SELECT take, files, earlier_files FROM jobs WHERE id=?", (j.id,)
        ).fetchone()
        kept = json_list(earlier)
        if state == S.DONE.value:
            # A new take: the earlier take's files stay on disk, held by the job.
            take, kept = int(take) + 1, (*kept, *json_list(files))
        self._db.execute(
            "UPDATE jobs SET idx=?, model=?, provider=?, input_json=?, input_hash=?, "
            "filename=?, cost_usd=?, in_file=1, changed_input_hash=NULL, take=?, "
            "earlier_files=?, task_id=NULL, request_type=NULL, submitted_at=NULL, "
            "completed_at=NULL, result_urls='[]', expires_at=NULL, files='[]', bytes=NULL, "
            "sha256='[]', fail_code=NULL, fail_msg=NULL, cost_time_ms=NULL, arrived_via=NULL "
            "WHERE id=?",
            (j.idx, j.model, j.provider, take_json(j, int(take)), j.input_hash, j.filename,
             j.cost_usd, take, json.dumps(list(kept)), j.id),
        )  # fmt: skip
        self.transition(j.id, S.QUEUED, now)
        result.again[state] = result.again.get(state, 0) + 1
        return True

    # -- what earlier runs left ---------------------------------------------
    def requeue_unanswered_submits(self, now: float) -> int:
        """Jobs an earlier version failed only because their submit never got an answer
        (``SUBMIT_ERROR``, no task id): a transient reason, so they are queued again, their
        doubt kept (``possibly_duplicated``), without --retry-failed."""
        return self.move_all(
            S.FAILED,
            S.QUEUED,
            now,
            where="fail_code='SUBMIT_ERROR' AND task_id IS NULL",
            fail_code=None,
            fail_msg=None,
        )

    def recover_interrupted_submits(self, now: float) -> int:
        """Jobs left ``submitting`` by a crash: back to ``queued``, flagged possibly duplicated."""
        return self.move_all(S.SUBMITTING, S.QUEUED, now, possibly_duplicated=True)

    def requeue_failed(self, now: float) -> int:
        """``--retry-failed``: failed jobs become submittable again (it costs money again)."""
        return self.move_all(
            S.FAILED, S.QUEUED, now, where="in_file=1", task_id=None, fail_code=None, fail_msg=None
        )
