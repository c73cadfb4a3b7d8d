"""Reconciliation: the journal brought in line with the job file, by id and input hash.

A job new to the journal is added ``queued``. A job whose input is unchanged keeps
everything it has. A changed input replaces the old one only if the old one was
never paid for; a paid (or possibly paid) task keeps following the input it was
submitted with, and the sync says so (``changed_after_submit``). A job gone from
the file keeps its row (``in_file=0``): its paid work is still followed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..catalog.models import get_model
from .connection import Connection
from .states import JobState

if TYPE_CHECKING:
    from ..jobs import Campaign

__all__ = ["NewJob", "Reconcile", "SyncResult", "jobs_of"]

S = JobState


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the job file says about one job (the journal's input for a sync)."""

    id: str
    idx: int
    model: str
    provider: str
    input_json: str
    input_hash: str
    filename: str
    cost_usd: float | None


@dataclass
class SyncResult:
    added: int = 0
    unchanged: int = 0
    updated: int = 0  # input changed before any submit: the new input is used
    changed_after_submit: list[str] | None = None  # ids whose paid task follows the old input
    dropped_from_file: int = 0


def jobs_of(campaign: Campaign) -> Iterator[NewJob]:
    """What the job file says of each job, priced, in file order (streamed)."""
    for job in campaign.iter_jobs():
        spec = get_model(job.model)
        yield NewJob(
            id=job.id,
            idx=job.index,
            model=job.model,
            provider=job.provider,
            input_json=json.dumps(dict(job.input), sort_keys=True, ensure_ascii=False),
            input_hash=job.input_hash,
            filename=job.filename,
            cost_usd=spec.cost(job.input, campaign.prices) if spec else None,
        )


class Reconcile(Connection):
    """The journal's half that follows the job file (see the module docstring)."""

    # -- sync with the job file -----------------------------------------------
    def sync(self, jobs: Iterable[NewJob], now: float, batch: int = 2000) -> SyncResult:
        """Bring the journal in line with the job file, in batches (bounded memory)."""
        result = SyncResult(changed_after_submit=[])
        with self.transaction() as db:
            db.execute("UPDATE jobs SET in_file=0")
        chunk: list[NewJob] = []
        for job in jobs:
            chunk.append(job)
            if len(chunk) >= batch:
                self._sync_chunk(chunk, now, result)
                chunk = []
        if chunk:
            self._sync_chunk(chunk, now, result)
        row = self._db.execute("SELECT count(*) FROM jobs WHERE in_file=0").fetchone()
        result.dropped_from_file = int(row[0])
        return result

    def _sync_chunk(self, chunk: list[NewJob], now: float, result: SyncResult) -> None:
        ids = [j.id for j in chunk]
        known: dict[str, tuple[str, str, str | None]] = {}
        with self.transaction() as db:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for jid, h, state, task in db.execute(
                    f"SELECT id, input_hash, state, task_id FROM jobs WHERE id IN ({marks})", part
                ):
                    known[jid] = (h, state, task)
            for j in chunk:
                old = known.get(j.id)
                if old is None:
                    db.execute(
                        "INSERT INTO jobs(id, idx, model, provider, input_json, input_hash, "
                        "filename, cost_usd, in_file, state, updated_at) "
                        "VALUES (?,?,?,?,?,?,?,?,1,?,?)",
                        (
                            j.id,
                            j.idx,
                            j.model,
                            j.provider,
                            j.input_json,
                            j.input_hash,
                            j.filename,
                            j.cost_usd,
                            S.QUEUED.value,
                            now,
                        ),
                    )
                    result.added += 1
                    continue
                old_hash, state, task_id = old
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
                        "state='queued', fail_code=NULL, fail_msg=NULL, "
                        "updated_at=? WHERE id=?",
                        (
                            j.idx,
                            j.model,
                            j.provider,
                            j.input_json,
                            j.input_hash,
                            j.filename,
                            j.cost_usd,
                            now,
                            j.id,
                        ),
                    )
                    result.updated += 1
                else:
                    # Paid (or possibly paid) under the old input: keep following that task,
                    # and say so; resubmitting silently would pay twice.
                    db.execute(
                        "UPDATE jobs SET idx=?, filename=?, in_file=1, changed_input_hash=? "
                        "WHERE id=?",
                        (j.idx, j.filename, j.input_hash, j.id),
                    )
                    assert result.changed_after_submit is not None
                    result.changed_after_submit.append(j.id)

    def requeue_unanswered_submits(self, now: float) -> int:
        """Jobs an earlier version failed only because their submit never got an answer
        (``SUBMIT_ERROR``, no task id): a transient reason, so they are queued again, their
        doubt kept (``possibly_duplicated``), without --retry-failed."""
        return self._requeue(
            "fail_code=NULL, fail_msg=NULL",
            "state='failed' AND fail_code='SUBMIT_ERROR' AND task_id IS NULL",
            now,
        )

    def recover_interrupted_submits(self, now: float) -> int:
        """Jobs left ``submitting`` by a crash: back to ``queued``, flagged possibly duplicated."""
        return self._requeue("possibly_duplicated=1", "state='submitting'", now)

    def requeue_failed(self, now: float) -> int:
        """``--retry-failed``: failed jobs become submittable again (it costs money again)."""
        return self._requeue(
            "task_id=NULL, fail_code=NULL, fail_msg=NULL", "state='failed' AND in_file=1", now
        )

    def _requeue(self, sets: str, where: str, now: float) -> int:
        """Jobs matching ``where`` back to ``queued`` with ``sets``; how many."""
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE jobs SET state='queued', {sets}, updated_at=? WHERE {where}", (now,)
            )
            return cur.rowcount
