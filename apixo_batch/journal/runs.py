"""What the journal keeps of the runs themselves: the latest run, and the latest one that
did work (submitted a task, learned a task's end, landed or lost a result).

The review page reads both: "last run" must be a run that did something (a rerun with
nothing left to do takes no time and would say "took 0.0 s"), while why a job is still
queued is the latest run's story (it stopped at the budget, say). Each is one JSON
value in the ``meta`` table, so no schema step is needed and an older journal simply
has none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from .connection import Connection

__all__ = ["LAST_RUN", "LAST_WORK_RUN", "LastRuns", "RunRecord", "keep_run", "last_runs"]

#: the meta key of the latest run's record
LAST_RUN = "last_run"
#: the meta key of the latest record of a run that changed a job
LAST_WORK_RUN = "last_work_run"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run, as the review page tells it."""

    #: wall-clock time the run ended (seconds since the epoch)
    ended_at: float
    wall_s: float
    #: tasks submitted (paid) by this run
    submitted: int
    #: job changes this run journaled past the queue: a task id, an end, a file, an expiry
    changed: int
    #: the labels of the stops the run met ("budget", "interrupted", ...), in order
    stops: tuple[str, ...] = ()
    #: why it stopped submitting, as the summary told it
    stop_reason: str | None = None
    #: the ``--budget`` it ran under
    budget_usd: float | None = None
    #: other keys a later version wrote, kept as read
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        value = asdict(self)
        value.update(value.pop("extra"))
        return json.dumps(value)

    @classmethod
    def from_json(cls, text: str | None) -> RunRecord | None:
        """A record as kept; None for none, or for one this version cannot read."""
        if not text:
            return None
        try:
            value = json.loads(text)
            return cls(
                ended_at=float(value.pop("ended_at")),
                wall_s=float(value.pop("wall_s")),
                submitted=int(value.pop("submitted")),
                changed=int(value.pop("changed")),
                stops=tuple(str(s) for s in value.pop("stops", ())),
                stop_reason=value.pop("stop_reason", None),
                budget_usd=value.pop("budget_usd", None),
                extra=value,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    @property
    def did_work(self) -> bool:
        return self.submitted > 0 or self.changed > 0


class LastRuns(NamedTuple):
    #: the latest run, whatever it did
    latest: RunRecord | None = None
    #: the latest run that did work (the same record when the latest did)
    work: RunRecord | None = None


def keep_run(journal: Connection, record: RunRecord) -> None:
    """Keep ``record`` as the latest run, and as the latest that did work if it did (inside
    a transaction the caller holds)."""
    text = record.to_json()
    journal.set_meta_in_tx(LAST_RUN, text)
    if record.did_work:
        journal.set_meta_in_tx(LAST_WORK_RUN, text)


def last_runs(journal: Connection) -> LastRuns:
    return LastRuns(
        RunRecord.from_json(journal.get_meta(LAST_RUN)),
        RunRecord.from_json(journal.get_meta(LAST_WORK_RUN)),
    )
