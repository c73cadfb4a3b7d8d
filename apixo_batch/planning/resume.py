"""What ``run`` would do NOW, from the job file and the campaign's journal.

``plan`` on a campaign that has run already: the jobs it would submit (and for how
much), the ones done, in flight or waiting for a download, the failed ones, the jobs
the journal holds that the file no longer does (orphaned) and the file's new ids. A
campaign whose ids all changed (a new top-level ``matrix``, a renamed ``id``) shows
as N new and N orphaned: ``run`` would pay for those jobs again. The same rules as
:mod:`apixo_batch.journal.reconcile` and the budget meter, read without writing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from ..jobs import Campaign, Job
from .forecast import expected_generation_s
from .kind import Kind
from .order import longest_first
from .selection import Again

__all__ = ["JournalJob", "Resume", "resume_figures"]

#: ids of jobs that do not fit the budget named (the rest are counted)
SHOWN_UNFIT = 5

#: journal states whose task was (or may have been) paid for
_PAID = frozenset({"submitting", "submitted", "succeeded", "done", "expired"})


class JournalJob(NamedTuple):
    """One journal row, as much as the figures need (one SELECT)."""

    id: str
    state: str
    input_hash: str
    #: a task id is recorded (paid for)
    has_task: bool
    fail_code: str | None
    #: the job's price when it was synced in (None: unknown)
    cost_usd: float | None = None
    #: the job file held it at the last sync
    in_file: bool = True
    kind: Kind | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """The figures; costs are the job file's prices (``None`` counts as unknown)."""

    journal: str
    #: jobs ``run`` would submit now (queued, new, interrupted submits, failed ones
    #: with --retry-failed)
    to_submit: int
    to_submit_usd: float
    to_submit_unknown: int
    #: of ``to_submit``: ids the journal does not know yet
    new: int
    done: int
    in_flight: int
    #: results APIXO holds that are not downloaded yet (no new payment)
    to_download: int
    failed: int
    expired: int
    #: journal ids no longer in the file
    orphaned: int
    #: of ``orphaned``: jobs paid for (or possibly paid for)
    orphaned_paid: int
    #: new ids that look like paid jobs renamed: min(new, orphaned_paid)
    pay_again: int
    pay_again_usd: float
    retry_failed: bool
    #: what the journal counts as already spent (the budget's starting point)
    spent_usd: float
    budget: float | None = None
    #: jobs of ``to_submit`` that fit the budget, in the start order (None: no budget)
    fit_budget: int | None = None
    fit_budget_usd: float | None = None
    #: priced jobs of ``to_submit`` that do not fit it, and the first few of their ids
    unfit_budget: int = 0
    unfit_budget_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.journal,
            "to_submit": {
                "jobs": self.to_submit,
                "known_usd": round(self.to_submit_usd, 4),
                "unknown_jobs": self.to_submit_unknown,
                "new": self.new,
            },
            "done": self.done,
            "in_flight": self.in_flight,
            "to_download": self.to_download,
            "failed": self.failed,
            "expired": self.expired,
            "orphaned": self.orphaned,
            "orphaned_paid": self.orphaned_paid,
            "pay_again": {"jobs": self.pay_again, "usd": round(self.pay_again_usd, 4)},
            "retry_failed": self.retry_failed,
            "spent_usd": round(self.spent_usd, 4),
            "budget": None
            if self.budget is None
            else {
                "usd": self.budget,
                "fit_jobs": self.fit_budget,
                "fit_usd": None if self.fit_budget_usd is None else round(self.fit_budget_usd, 4),
                "unfit_jobs": self.unfit_budget,
                "unfit_ids": list(self.unfit_budget_ids),
            },
        }


def resume_figures(
    campaign: Campaign,
    rows: Iterable[JournalJob],
    *,
    journal: str,
    spent_usd: float,
    synced: bool = False,
    retry_failed: bool = False,
    budget: float | None = None,
    order: str = "longest",
    again: Again | None = None,
) -> Resume:
    """The figures for ``campaign`` against the journal ``rows`` (see the module docstring).

    ``synced``: the journal was last synced from this very job file (same stamp), so its
    ``in_file`` rows, in file order, are the file's jobs and the file is not read again.
    ``again``: the ended jobs sent again and the selection (``--only``, ``--model``,
    ``--limit``); jobs outside it are neither submitted nor counted."""
    if again is None:
        again = Again(failed=retry_failed)
    retry_failed = again.failed
    known: dict[str, JournalJob] = {}
    file_jobs: list[_FileJob] = []
    if synced:
        for row in rows:
            if row.in_file:
                assert row.kind is not None
                file_jobs.append((row, row.id, row.input_hash, row.cost_usd, row.kind))
            else:
                known[row.id] = row
        figures = _figures(file_jobs, again)
    else:
        known = {row.id: row for row in rows}
        figures = _figures(
            (
                (
                    known.pop(job.id, None),
                    job.id,
                    job.input_hash,
                    campaign.cost(job),
                    _kind_of(job),
                )
                for job in campaign.iter_jobs()
            ),
            again,
        )
    submit, counts, new, new_usd, new_unknown = figures
    limit = again.selection.limit
    if limit is not None and len(submit) > limit:
        first = {job_id for job_id, _, _ in _in_start_order(submit, order)[:limit]}
        submit = [item for item in submit if item[0] in first]
        new = min(new, limit)
    orphaned = len(known)
    orphaned_paid = sum(1 for row in known.values() if row.state in _PAID or row.has_task)
    pay_again = min(new, orphaned_paid)
    # The new jobs' mean price: the renamed ones cost what the new ones do.
    priced_new = new - new_unknown
    pay_again_usd = new_usd / priced_new * min(pay_again, priced_new) if priced_new else 0.0
    fit = fit_usd = None
    unfit: list[str] = []
    if budget is not None:
        fit, fit_usd, unfit = _fit(submit, budget, spent_usd, order)
    return Resume(
        journal=journal,
        to_submit=len(submit),
        to_submit_usd=sum(cost for _, _, cost in submit if cost is not None),
        to_submit_unknown=sum(1 for _, _, cost in submit if cost is None),
        new=new,
        done=counts["done"],
        in_flight=counts["submitted"],
        to_download=counts["succeeded"],
        failed=counts["failed"],
        expired=counts["expired"],
        orphaned=orphaned,
        orphaned_paid=orphaned_paid,
        pay_again=pay_again,
        pay_again_usd=pay_again_usd,
        retry_failed=retry_failed,
        spent_usd=spent_usd,
        budget=budget,
        fit_budget=fit,
        fit_budget_usd=fit_usd,
        unfit_budget=len(unfit),
        unfit_budget_ids=tuple(unfit[:SHOWN_UNFIT]),
    )


def _kind_of(job: Job) -> Kind:
    return Kind.of(job.model, job.input)


#: one job of the file: (its journal row if any, id, input hash, cost, kind)
_FileJob = tuple[JournalJob | None, str, str, float | None, Kind]


def _figures(
    file_jobs: Iterable[_FileJob], again: Again
) -> tuple[list[tuple[str, Kind, float | None]], dict[str, int], int, float, int]:
    """(jobs to submit as (id, kind, cost) in file order, jobs per state left alone, new jobs,
    their known USD, new jobs of unknown price): the reconcile's rules, nothing written."""
    submit: list[tuple[str, Kind, float | None]] = []
    counts = dict.fromkeys(("done", "submitted", "succeeded", "failed", "expired"), 0)
    new = new_unknown = 0
    new_usd = 0.0
    selection = again.selection
    for row, job_id, input_hash, cost, kind in file_jobs:
        if selection.filtered and not selection.picks(job_id, kind.model):
            continue
        if row is None:
            new += 1
            if cost is None:
                new_unknown += 1
            else:
                new_usd += cost
            submit.append((job_id, kind, cost))
            continue
        state = row.state
        if (
            state == "failed"
            and not row.has_task
            and (row.fail_code == "SUBMIT_ERROR" or row.input_hash != input_hash)
        ):
            state = "queued"  # a submit never answered, or an input fixed: queued again
        elif state == "failed":
            unchanged = row.input_hash == input_hash
            if again.failed_again(job_id, kind.model, row.fail_code, unchanged) == "retry":
                state = "queued"
        elif again.picks(state, job_id, kind.model):
            state = "queued"  # --reroll, --retry-expired
        if state in ("queued", "submitting"):
            submit.append((job_id, kind, cost))
        elif state in counts:
            counts[state] += 1
    return submit, counts, new, new_usd, new_unknown


def _in_start_order(
    submit: list[tuple[str, Kind, float | None]], order: str
) -> list[tuple[str, Kind, float | None]]:
    """``submit`` (in file order) in the order ``run`` starts them (``--order``)."""
    if order != "longest":
        return submit
    ranked = longest_first(
        dict.fromkeys(kind for _, kind, _ in submit), partial(expected_generation_s, None)
    )
    rank = {kind: i for i, kind in enumerate(ranked)}
    return sorted(submit, key=lambda item: rank[item[1]])


def _fit(
    submit: list[tuple[str, Kind, float | None]], budget: float, spent: float, order: str
) -> tuple[int, float, list[str]]:
    """The budget meter's rule: jobs in start order, each admitted when it fits what is left
    of the budget and skipped when it does not (the next ones are still weighed); jobs of
    unknown price are skipped. (jobs that fit, their USD, ids of the priced ones that do not)"""
    submit = _in_start_order(submit, order)
    committed, jobs = spent, 0
    unfit: list[str] = []
    for job_id, _, cost in submit:
        if cost is None:
            continue
        if committed + cost > budget + 1e-9:
            unfit.append(job_id)
            continue
        committed += cost
        jobs += 1
    return jobs, committed - spent, unfit
