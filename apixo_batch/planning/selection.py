"""Which jobs a command acts on (:class:`Selection`: ``--only``, ``--model``, ``--limit``)
and which ended jobs ``run`` sends again (:class:`Again`: ``--retry-failed``,
``--fail-code``, ``--retry-expired``, ``--reroll``). Values only; no I/O.

A job outside the selection is not submitted and not counted against the run's exit
code; what is already paid for (a task in flight, a result to fetch) is still finished
by ``run`` (a task in flight holds one of the account's slots), while ``download``
follows and fetches only the jobs it picks. ``--limit N`` is applied where
jobs start (the first N that ``run`` would submit, in its start order); ``--only``
and ``--model`` wherever jobs are read.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from ..catalog.again import input_refused

__all__ = ["Again", "Selection", "take_filename", "unmatched"]


@dataclass(frozen=True, slots=True)
class Selection:
    """Jobs picked by id (shell-style patterns, any may match), by model, and a count."""

    #: ``fnmatch`` patterns (``hero-*``, ``shot-0[1-3]``); empty: every id
    only: tuple[str, ...] = ()
    #: model names; empty: every model
    models: tuple[str, ...] = ()
    #: at most this many jobs submitted (None: no limit)
    limit: int | None = None

    @property
    def narrowed(self) -> bool:
        """Some job may be left out."""
        return bool(self.only or self.models) or self.limit is not None

    @property
    def filtered(self) -> bool:
        """Jobs are picked by id or model (``limit`` aside)."""
        return bool(self.only or self.models)

    def picks(self, job_id: str, model: str) -> bool:
        """``job_id`` of ``model`` is one of the selected jobs (``limit`` aside)."""
        if self.models and model not in self.models:
            return False
        return not self.only or any(fnmatch.fnmatchcase(job_id, p) for p in self.only)


def unmatched(patterns: Iterable[str], ids: Iterable[str]) -> list[str]:
    """The patterns of ``patterns`` that match none of ``ids`` (one pass over the ids)."""
    left = list(dict.fromkeys(patterns))
    if not left:
        return []
    for job_id in ids:
        left = [p for p in left if not fnmatch.fnmatchcase(job_id, p)]
        if not left:
            break
    return left


@dataclass(frozen=True, slots=True)
class Again:
    """Ended jobs ``run`` queues again (each a new task, paid again), within ``selection``."""

    #: failed jobs (``--retry-failed``)
    failed: bool = False
    #: only failed jobs with one of these fail codes (``--fail-code``); empty: any code.
    #: A code named here is retried even when the input was refused and is unchanged.
    fail_codes: tuple[str, ...] = ()
    #: expired jobs: their result URLs lapsed before the files landed (``--retry-expired``)
    expired: bool = False
    #: done jobs: a new take, the earlier files kept (``--reroll``)
    reroll: bool = False
    selection: Selection = Selection()

    @property
    def any(self) -> bool:
        return self.failed or self.expired or self.reroll

    def failed_again(self, job_id: str, model: str, code: str | None, unchanged: bool) -> str:
        """What becomes of a failed job: ``"retry"``, ``"refused"`` (its input was refused
        and has not changed: skipped, and said) or ``"keep"``."""
        if not self.failed or not self.selection.picks(job_id, model):
            return "keep"
        if self.fail_codes:
            return "retry" if code in self.fail_codes else "keep"
        if unchanged and input_refused(code):
            return "refused"
        return "retry"

    def picks(self, state: str, job_id: str, model: str) -> bool:
        """A done or expired job is queued again."""
        wanted = (state == "done" and self.reroll) or (state == "expired" and self.expired)
        return wanted and self.selection.picks(job_id, model)


def take_filename(filename: str, take: int) -> str:
    """Where take number ``take`` lands: ``hero.mp4`` for the first, then
    ``hero-take2.mp4``, ``hero-take3.mp4``... (a folder in the name stays the folder).
    Here, below the journal, so that ``plan`` names a reroll's take as ``run`` will."""
    if take <= 1:
        return filename
    folder, slash, name = filename.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    named = f"{stem}-take{take}.{suffix}" if dot and stem else f"{name}-take{take}"
    return f"{folder}{slash}{named}"
