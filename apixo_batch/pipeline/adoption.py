"""A run's start-up adopts the paid task ids an earlier run could not journal.

They were kept in the journal's side file (:mod:`apixo_batch.journal.unrecorded`) by
the submitter when the journal refused them. Each is journaled as its job's task
(``submitted``: followed and downloaded like any other, never submitted again), then
the side file is removed, once the journal holds them durably. A run that submits
creates the side file up front, while there is room.
"""

from __future__ import annotations

from ..events import Emitter, Warned
from ..journal import Ledger
from ..journal.unrecorded import AdoptRefused, SideFile

__all__ = ["adopt_unrecorded"]


async def adopt_unrecorded(ledger: Ledger, emit: Emitter, *, reserve: bool) -> int:
    """Adopt every id kept beside the journal; how many were adopted. A refusal (the job
    has another task) is a warning naming the task; the journal refusing the write (its
    disk still full) is raised, the side file kept for the next run. ``reserve``: then
    create the (empty) side file for this run."""
    side = SideFile(ledger.path)
    adopted = 0
    for kept in side.read():
        try:
            if await ledger.adopt(kept.job_id, kept.task_id, kept.request_type):
                adopted += 1
        except AdoptRefused as exc:
            emit(
                Warned(
                    kept.job_id,
                    task_id=kept.task_id,
                    message=f"job {kept.job_id}: task {kept.task_id} kept in {side.path} "
                    f"was not adopted: {exc}; the task is paid",
                )
            )
    if adopted:
        emit(
            Warned(
                message=f"{adopted} paid task(s) the journal could not record last time were "
                f"adopted from {side.path}: followed, not submitted again",
            )
        )
    if side.path.exists() and (not reserve or not side.empty()):
        side.remove()  # its ids are journaled (durable writes, each awaited)
    if reserve:
        side.reserve()
    return adopted
