"""Output names a queued job must not land on, found before it is paid.

A queued job (in the job file, never submitted) whose output name is held by another
job of the journal (files it landed, or the name of a task still on its way) or is a
file in the output folder that no job of the journal wrote, would lose a result: a
paid one, the user's own file, or its own (the lander refuses to write over another
job's file, after the submit is paid). :func:`output_clashes` finds them, one read of
the journal plus one ``exists`` per queued job; :func:`refuse_clashes` ends them
``failed`` (``OUTPUT_EXISTS``) before anything is submitted. ``plan`` may call
:func:`output_clashes` as it is.

Only the first result's name (the job's ``filename``) is checked: how many results a
task brings is known once it succeeded (the lander still guards ``<stem>-2.mp4``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .states import JobState
from .store import Journal

__all__ = ["OUTPUT_EXISTS", "Clash", "output_clashes", "refuse_clashes"]

#: the fail code of a job refused because its output name is taken
OUTPUT_EXISTS = "OUTPUT_EXISTS"

S = JobState
#: a task on its way: its name is taken even before its file lands
_MAY_LAND = (S.SUBMITTING.value, S.SUBMITTED.value, S.SUCCEEDED.value)


@dataclass(frozen=True, slots=True)
class Clash:
    """A queued job whose output name is taken."""

    job_id: str
    #: the job's output name (relative to the output folder)
    name: str
    #: the journal's job that holds the name; None: a file no job of the journal wrote
    holder: str | None

    def message(self, shown: str) -> str:
        """One line for the user; ``shown``: where the name is (the output's path)."""
        if self.holder is None:
            return (
                f"job {self.job_id}: {shown} exists and was not written by this campaign; "
                f"the job was not submitted (failed, {OUTPUT_EXISTS}). Move the file away, or "
                "give the job another filename, then run again with --retry-failed"
            )
        return (
            f"job {self.job_id}: {shown} is job {self.holder}'s file; the job was not "
            f"submitted (failed, {OUTPUT_EXISTS}). Give it another filename (names from "
            "'{index}' shift when a job is inserted: prefer '{id}'), then run again with "
            "--retry-failed"
        )


def output_clashes(j: Journal, exists: Callable[[str], bool] | None) -> list[Clash]:
    """The queued jobs of the job file whose output name is taken, in file order.

    Taken: another job landed a file of that name, or has a task on its way that will
    land there (names compared case-folded); or ``exists(name)`` (the output folder
    has it) and no job of the journal landed it. ``exists`` None: the journal alone
    (object storage, or a plan without looking at the disk)."""
    landed: dict[str, list[str]] = {}
    coming: dict[str, list[str]] = {}
    queued: list[tuple[str, str]] = []
    for job_id, filename, files, in_file, state in j.output_rows():
        for name in files:
            landed.setdefault(str(name).casefold(), []).append(job_id)
        if state in _MAY_LAND:
            coming.setdefault(filename.casefold(), []).append(job_id)
        elif state == S.QUEUED.value and in_file:
            queued.append((job_id, filename))
    found: list[Clash] = []
    for job_id, filename in queued:
        key = filename.casefold()
        others = [o for o in (*landed.get(key, ()), *coming.get(key, ())) if o != job_id]
        if others:
            found.append(Clash(job_id, filename, others[0]))
        elif key not in landed and exists is not None and exists(filename):
            found.append(Clash(job_id, filename, None))
    return found


def refuse_clashes(
    j: Journal, exists: Callable[[str], bool] | None, now: float, shown: Callable[[str], str]
) -> list[Clash]:
    """Every clash of :func:`output_clashes` ended ``failed`` (``OUTPUT_EXISTS``, never
    submitted, nothing paid), in one transaction; the clashes."""
    found = output_clashes(j, exists)
    for c in found:
        j.transition(
            c.job_id, S.FAILED, now, fail_code=OUTPUT_EXISTS, fail_msg=c.message(shown(c.name))
        )
    return found
