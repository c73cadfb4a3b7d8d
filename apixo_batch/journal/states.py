"""The states of a job and the one table of legal changes between them.

States (stored as text in the journal)::

    queued ─▶ submitting ─▶ submitted ─▶ succeeded ◀─▶ done
                 │  │            │            └──────▶ expired ─(--retry-expired)─▶ queued
                 │  └─▶ queued   └──▶ failed ─(--retry-failed)─▶ queued
                 └─────▶ failed (input rejected)        done ─(--reroll)─▶ queued

``submitting`` marks the only window where a crash leaves doubt (request sent,
answer not journaled): on restart those jobs go back to ``queued`` flagged
*possibly duplicated*. ``done`` goes back to ``succeeded`` when its files are
no longer on disk as journaled (gone, another size, another hash): the result is
fetched again from its journaled URLs, never submitted again. The journal
applies a change only from the states :data:`TRANSITIONS` allows: a job's, in
the same UPDATE (:data:`LEGAL_FROM_SQL`); a bulk change's from-state, checked
against the table first (:mod:`.changes`).
"""

from __future__ import annotations

import enum

__all__ = ["LEGAL_FROM_SQL", "STATES", "TRANSITIONS", "JobState", "illegal_change"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # Refused before its submit (its output name is taken: journal/clash.py): never paid.
    S.QUEUED: frozenset({S.SUBMITTING, S.FAILED}),
    S.SUBMITTING: frozenset({S.SUBMITTED, S.QUEUED, S.FAILED}),
    S.SUBMITTED: frozenset({S.SUBMITTED, S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset({S.SUCCEEDED, S.DONE, S.EXPIRED}),
    S.FAILED: frozenset({S.QUEUED}),
    # A done job's files deleted or damaged after the run: fetched again, not paid again;
    # queued again only by --reroll (a new take, its earlier files kept).
    S.DONE: frozenset({S.SUCCEEDED, S.QUEUED}),
    # Queued again only by --retry-expired: a new task (the old results are gone).
    S.EXPIRED: frozenset({S.QUEUED}),
}

# The reverse of TRANSITIONS, as SQL: the states from which each state may be entered
# (one UPDATE ... WHERE state IN (...) checks and applies a transition at once).
LEGAL_FROM_SQL: dict[JobState, str] = {
    new: ", ".join(f"'{old.value}'" for old in JobState if new in TRANSITIONS[old])
    for new in JobState
}

STATES = {s.value: s for s in JobState}


def illegal_change(job_id: str, old: JobState, new: JobState) -> str | None:
    """Why moving ``job_id`` from ``old`` to ``new`` is refused, or None if it is legal."""
    if new in TRANSITIONS[old]:
        return None
    return f"job {job_id!r}: illegal state change {old} -> {new}"
