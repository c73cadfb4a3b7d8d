"""State changes, of one job or in bulk, each only as :data:`~.states.TRANSITIONS` allows.

Every UPDATE that sets a job's state is here: a change of one job checks its
from-state in the same UPDATE (``WHERE state IN`` the states the new one may be
entered from); a bulk change names its from-state, checked against the table
before any row is touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Unpack

from ..errors import JournalError
from .connection import Connection
from .rows import CHANGES, Change
from .states import LEGAL_FROM_SQL, TRANSITIONS, JobState, illegal_change

__all__ = ["StateChanges"]

S = JobState


class StateChanges(Connection):
    """The journal's state changes (see the module docstring)."""

    def transition(self, job_id: str, new: JobState, now: float, **change: Unpack[Change]) -> None:
        """Move one job to ``new``, setting ``change``; refuse an illegal change.

        One UPDATE restricted to the states ``new`` may be entered from (plus, for the
        task id of a submit, its ``task_history`` row); the current state is read only
        to explain a refusal."""
        try:
            assignments, values = _assignments(change)
        except JournalError:
            self._check_transition(job_id, new)  # the same error precedence as ever
            raise
        values = [new.value, now, *values, job_id]
        if new is S.SUBMITTED and "task_id" in change:
            # The first answer of a submit: the paid task also goes to task_history.
            cur = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id=? AND state='submitting'", values
            )
            if cur.rowcount:
                self._db.execute(
                    "INSERT OR IGNORE INTO task_history(task_id, job_id, input_hash, "
                    "submitted_at) SELECT ?, id, input_hash, ? FROM jobs WHERE id=?",
                    (change["task_id"], now, job_id),
                )
                return
        cur = self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id=? AND state IN ({LEGAL_FROM_SQL[new]})",
            values,
        )
        if cur.rowcount == 0:
            self._check_transition(job_id, new)
            raise JournalError(f"job {job_id!r}: the change to {new} did not apply")

    def refetch(self, job_ids: Iterable[str], now: float) -> None:
        """``done`` jobs whose files are not on disk as journaled back to ``succeeded``:
        the lander fetches them again from their journaled URLs (or journals them
        ``expired``). Their names are kept, their sizes and hashes forgotten: the names
        stay the job's own, so the lander writes over what is there (the damaged file
        the journal wrote), and a row without ``bytes`` claims no file on disk
        (:attr:`JobRow.landed_files`). In the caller's transaction."""
        for job_id in job_ids:
            self.transition(job_id, S.SUCCEEDED, now, bytes=None, sha256=[])

    def move_all(
        self,
        old: JobState,
        new: JobState,
        now: float,
        *,
        where: str = "1",
        **change: Unpack[Change],
    ) -> int:
        """Move every job in ``old`` (and matching the SQL condition ``where``) to ``new``,
        setting ``change``, in one UPDATE; how many moved. Refused, touching nothing, if
        the table does not allow ``old`` -> ``new``."""
        if new not in TRANSITIONS[old]:
            raise JournalError(f"illegal state change {old} -> {new} (of every {old} job)")
        assignments, values = _assignments(change)
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE jobs SET {assignments} WHERE state=? AND ({where})",
                (new.value, now, *values, old.value),
            )
            return cur.rowcount

    def _check_transition(self, job_id: str, new: JobState) -> None:
        """Raise the JournalError that refuses moving ``job_id`` to ``new``, if any."""
        row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JournalError(f"job {job_id!r} is not in the journal")
        refusal = illegal_change(job_id, JobState(row[0]), new)
        if refusal is not None:
            raise JournalError(refusal)


def _assignments(change: Change) -> tuple[str, list[Any]]:
    """The SET clause of a change (state and updated_at first) and its values after them."""
    sets = ["state=?", "updated_at=?"]
    values: list[Any] = []
    for key, value in change.items():
        if key not in CHANGES:  # a caller mypy did not check
            raise JournalError(f"unknown journal column {key!r}")
        write = CHANGES[key]
        sets.append(f"{key}=?")
        values.append(value if write is None or value is None else write(value))
    return ", ".join(sets), values
