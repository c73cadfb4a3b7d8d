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
                file_jobs.append((row.id, row, row.input_hash, row.cost_usd, row.kind))
            else:
                known[row.id] = row
        figures = _figures(file_jobs, again)
    else:
        known = {row.id: row for row in rows}
        figures = _figures(
            (
                (job.id, known.pop(job.id, None), job.input_hash, campaign.cost(job),
                 _kind_of(job))
                for job in campaign.iter_jobs()
            ),
            again,
        )  # fmt: skip
    submit, counts, new, new_usd, new_unknown = figures
    limit = again.selection.limit
    if limit is not None and len(submit) > limit:
        submit = _in_start_order(submit, order)[:limit]
        new = min(new, limit)
    orphaned = len(known)
    orphaned_paid = sum(1 for row in known.values() if row.state in _PAID or row.has_task)
    pay_again = min(new, orphaned_paid)
    # The new jobs' mean price: the renamed ones cost what the new ones do.
    priced_new = new - new_unknown
    pay_again_usd = new_usd / priced_new * min(pay_again, priced_new) if priced_new else 0.0
    fit = fit_usd = None
    if budget is not None:
        fit, fit_usd = _fit(submit, budget, spent_usd, order)
    return Resume(
        journal=journal,
        to_submit=len(submit),
        to_submit_usd=sum(cost for _, cost in submit if cost is not None),
        to_submit_unknown=sum(1 for _, cost in submit if cost is None),
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
    )


def _kind_of(job: Job) -> Kind:
    return Kind.of(job.model, job.input)


#: one job of the file: (id, its journal row if any, input hash, cost, kind)
_FileJob = tuple[str, JournalJob | None, str, float | None, Kind]


def _figures(
    file_jobs: Iterable[_FileJob], again: Again
) -> tuple[list[tuple[Kind, float | None]], dict[str, int], int, float, int]:
    """(jobs to submit as (kind, cost) in file order, jobs per state left alone, new jobs,
    their known USD, new jobs of unknown price): the reconcile's rules, nothing written."""
    submit: list[tuple[Kind, float | None]] = []
    counts = dict.fromkeys(("done", "submitted", "succeeded", "failed", "expired"), 0)
    new = new_unknown = 0
    new_usd = 0.0
    selection = again.selection
    for job_id, row, input_hash, cost, kind in file_jobs:
        if selection.filtered and not selection.picks(job_id, kind.model):
            continue
        if row is None:
            new += 1
            if cost is None:
                new_unknown += 1
            else:
                new_usd += cost
            submit.append((kind, cost))
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
            submit.append((kind, cost))
        elif state in counts:
            counts[state] += 1
    return submit, counts, new, new_usd, new_unknown


def _in_start_order(
    submit: list[tuple[Kind, float | None]], order: str
) -> list[tuple[Kind, float | None]]:
    """``submit`` (in file order) in the order ``run`` starts them (``--order``)."""
    if order != "longest":
        return submit
    ranked = longest_first(
        dict.fromkeys(kind for kind, _ in submit), partial(expected_generation_s, None)
    )
    rank = {kind: i for i, kind in enumerate(ranked)}
    return sorted(submit, key=lambda item: rank[item[0]])


def _fit(
    submit: list[tuple[Kind, float | None]], budget: float, spent: float, order: str
) -> tuple[int, float]:
    """The budget meter's rule: jobs in start order, the first that would take the spend
    past the budget ends admission; jobs of unknown price are skipped."""
    submit = _in_start_order(submit, order)
    committed, jobs = spent, 0
    for _, cost in submit:
        if cost is None:
            continue
        if committed + cost > budget + 1e-9:
            break
        committed += cost
        jobs += 1
    return jobs, committed - spent
