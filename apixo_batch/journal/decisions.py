"""What people decided on the review page: keep or reject a job's take, with a note.

One row per job in the ``decisions`` table (a schema step of its own): the latest
decision, who made it and when, and for which take. An undo is a decision too
(``decision`` NULL: undecided again), so every page open on the campaign learns of it
through the same cursor: ``seq`` grows by one with every decision written, and a page
asks for what came after the last one it saw.

A decision is a short write transaction of its own (one UPSERT) on the review server's
connection: the run's journal thread waits for it at most as long as one commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import JournalError
from .connection import Connection

__all__ = ["KEEP", "REJECT", "VERDICTS", "Decision", "Decisions"]

KEEP = "keep"
REJECT = "reject"
#: what a decision may say (None: undecided, an undo)
VERDICTS = (KEEP, REJECT)

#: the longest note kept (a note is a line for a colleague, not a document)
NOTE_MAX = 2000


@dataclass(frozen=True, slots=True)
class Decision:
    job_id: str
    #: ``keep``, ``reject``, or None (undecided: undone)
    decision: str | None
    note: str | None
    reviewer: str | None
    #: wall-clock time it was made (seconds since the epoch)
    at: float
    #: the take it was made on (``run --reroll`` makes a job's next take)
    take: int
    seq: int

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "note": self.note,
            "reviewer": self.reviewer,
            "at": self.at,
            "take": self.take,
        }


_COLUMNS = "job_id, decision, note, reviewer, at, take, seq"


def _read(row: tuple[Any, ...]) -> Decision:
    job_id, decision, note, reviewer, at, take, seq = row
    return Decision(str(job_id), decision, note, reviewer, float(at), int(take), int(seq))


class Decisions(Connection):
    """The journal's decisions (see the module docstring)."""

    def decide(
        self,
        job_id: str,
        decision: str | None,
        *,
        note: str | None,
        reviewer: str | None,
        at: float,
    ) -> Decision:
        """Keep, reject, or (``None``) undecide ``job_id``'s take, in one short transaction;
        the decision as stored. Refuses a job the journal does not hold."""
        if decision is not None and decision not in VERDICTS:
            raise JournalError(f"job {job_id!r}: a decision is keep or reject, not {decision!r}")
        note = (note or "").strip()[:NOTE_MAX] or None
        with self.transaction() as db:
            row = db.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JournalError(f"job {job_id!r} is not in the journal")
            take = self._take_of(job_id)
            (seq,) = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM decisions").fetchone()
            db.execute(
                f"INSERT OR REPLACE INTO decisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, decision, note, reviewer, at, take, seq),
            )
        return Decision(job_id, decision, note, reviewer, at, take, int(seq))

    def _take_of(self, job_id: str) -> int:
        """The take the job is on now (``run --reroll`` makes the next one)."""
        row = self._db.execute("SELECT take FROM jobs WHERE id=?", (job_id,)).fetchone()
        return int(row[0]) if row is not None else 1

    def decisions(self) -> dict[str, Decision]:
        """Every job's latest decision, undone ones included (decision None)."""
        return {
            d.job_id: d for d in map(_read, self._db.execute(f"SELECT {_COLUMNS} FROM decisions"))
        }

    def decisions_since(self, seq: int) -> list[Decision]:
        """The decisions written after cursor ``seq``, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE seq > ? ORDER BY seq", (seq,)
        )
        return [_read(r) for r in rows]

    def decision_counts(self) -> dict[str, int]:
        """{keep: n, reject: n} over the jobs whose decision is on the take they are on (a
        rerolled job is undecided again)."""
        return {
            str(d): int(n)
            for d, n in self._db.execute(
                "SELECT d.decision, count(*) FROM decisions d JOIN jobs j ON j.id = d.job_id "
                "WHERE d.decision IS NOT NULL AND d.take = j.take GROUP BY d.decision"
            )
        }
