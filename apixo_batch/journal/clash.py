"""Output names a queued job must not land on, found before it is paid.

A queued job (in the job file, never submitted) whose output name is held by another
job of the journal (files it landed, or the name of a task still on its way) or is a
file in the output folder that no job of the journal wrote, would lose a result: a
paid one, the user's own file, or its own (the lander refuses to write over another
job's file, after the submit is paid). :func:`output_clashes` finds them, one read of
the journal plus one ``exists`` per queued job; :func:`refuse_clashes` ends them
``failed`` (``OUTPUT_EXISTS``) before anything is submitted. ``plan`` may call
:func:`output_clashes` as it is.

Every name a job's results would take is checked: ``<filename>``, then ``<stem>-2.mp4``,
``<stem>-3.mp4``... for as many results as a task of this journal has brought at most
(one until a task has succeeded: APIXO's models bring one video a task). Two queued jobs
whose names would meet (job ``a``'s second result is job ``a-2``'s file) are settled in
file order: the first keeps its names, the later one is refused. How many results a
task really brings is known once it succeeded; a task that brings more than any before
it still meets the lander's guard, after the submit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .naming import result_names
from .states import JobState
from .store import Journal

__all__ = ["OUTPUT_EXISTS", "Clash", "find_clashes", "output_clashes", "refuse_clashes"]

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
    #: which of the job's results would take the name (1: its ``filename``)
    result: int = 1

    def message(self, shown: str) -> str:
        """One line for the user; ``shown``: where the name is (the output's path)."""
        if self.result > 1:
            whose = (
                "a file no job of this campaign wrote"
                if self.holder is None
                else (f"job {self.holder}'s file")
            )
            return (
                f"job {self.job_id}: its result {self.result} would land on {shown}, "
                f"{whose}; the job was not submitted (failed, {OUTPUT_EXISTS}). Give it "
                "another filename, then run again with --retry-failed"
            )
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
    """The queued jobs of the job file whose output names are taken, in file order.

    Taken: another job landed a file of that name, or has a task on its way that will
    land there, or an earlier queued job will (names compared case-folded); or
    ``exists(name)`` (the output folder has it) and no job of the journal landed it.
    ``exists`` None: the journal alone (object storage, or a plan without looking at
    the disk)."""
    queued: list[tuple[str, str]] = []
    rows = []
    for row in j.output_rows():
        if row[4] == S.QUEUED.value and row[3]:
            queued.append((row[0], row[1]))
        rows.append(row)
    return find_clashes(rows, queued, exists)


def find_clashes(
    rows: Iterable[tuple[str, str, tuple[str, ...], int, str, int | None]],
    candidates: Iterable[tuple[str, str]],
    exists: Callable[[str], bool] | None,
) -> list[Clash]:
    """Of ``candidates`` ((id, filename) of the jobs about to be submitted, in file order),
    those whose result names are taken, against the journal's ``rows``
    (:meth:`Journal.output_rows`): what ``run`` refuses, and what ``plan`` lists."""
    # Who holds each name (case-folded): files landed, then names of tasks on their way,
    # then the earlier candidates' names; and which names are landed files.
    holders: dict[str, list[str]] = {}
    landed: set[str] = set()
    on_way: list[tuple[str, str, str, int | None]] = []
    most = 1  # results a task has brought at most: the names a new task may take
    for job_id, filename, files, _, state, results in rows:
        for name in files:
            key = str(name).casefold()
            landed.add(key)
            holders.setdefault(key, []).append(job_id)
        if results:
            most = max(most, results)
        if state in _MAY_LAND:
            on_way.append((job_id, filename, state, results))
    for job_id, filename, state, results in on_way:
        count = results if state == S.SUCCEEDED.value and results else most
        for name in result_names(filename, count):
            holders.setdefault(name.casefold(), []).append(job_id)
    found: list[Clash] = []
    for job_id, filename in candidates:
        names = (filename,) if most == 1 else tuple(result_names(filename, most))
        clash = _clash(job_id, names, holders, landed, exists)
        if clash is not None:
            found.append(clash)
        elif most > 1:
            # One name each, the job file's names never meet (the loader refuses two
            # alike); with several, job a's second may be job a-2's first.
            for name in names:
                holders.setdefault(name.casefold(), []).append(job_id)
    return found


def _clash(
    job_id: str,
    names: tuple[str, ...],
    holders: dict[str, list[str]],
    landed: set[str],
    exists: Callable[[str], bool] | None,
) -> Clash | None:
    for n, name in enumerate(names, 1):
        key = name.casefold()
        held = holders.get(key)
        if held is not None:
            for other in held:
                if other != job_id:
                    return Clash(job_id, name, other, n)
        if key not in landed and exists is not None and exists(name):
            return Clash(job_id, name, None, n)
    return None


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
