"""What a run would do, what it would cost, how long it would take.

No network: everything comes from the job file and the catalog (clocks and
prices). :func:`make_plan` holds the figures, so ``run`` can reuse its cost
and time estimates; ``apixo-batch plan`` prints them (:mod:`apixo_batch.cli.plan`).
Given the jobs a campaign's journal leaves to submit (:mod:`.resume`), the figures
are those of what ``run`` would do now, the whole file's jobs and cost kept beside.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..catalog.models import MODELS, PriceTable
from ..jobs import Campaign, JobGroup
from ..location import Destination
from .forecast import forecast, shapes_in_start_order, task_shape
from .kind import Kind

__all__ = [
    "Plan",
    "PlanRow",
    "WholeFile",
    "estimate_cost",
    "make_plan",
]

Bound = Literal["concurrency", "rate", "longest task"]


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One line of the plan: jobs of one model, mode, duration and price tier."""

    model: str
    mode: str
    duration: int
    #: the price variant ("sound", "1080p", "pro", "default", ...)
    tier: str
    jobs: int
    output_seconds: int
    #: USD per output second, None when nobody knows it
    price_per_second: float | None
    cost_usd: float | None
    #: mean of the model's typical generation time for one task
    mean_task_s: float
    #: the model's longest typical generation time for one task
    max_task_s: float
    #: 1 submit + the polls until its end is seen, as the forecast counts them
    #: (:func:`~.forecast.task_shape`): an expectation, so not always whole
    requests_per_task: float


@dataclass(frozen=True, slots=True)
class WholeFile:
    """The job file's jobs and cost, when a plan covers only what its journal leaves."""

    jobs: int
    known_cost_usd: float
    unknown_cost_jobs: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``plan`` reports, as numbers."""

    name: str
    job_file: Path
    output_dir: Destination
    jobs: int
    rows: tuple[PlanRow, ...]
    output_seconds: int
    #: the estimated cost of the jobs whose price is known
    known_cost_usd: float
    #: jobs whose price nobody knows (kling-2-1 and kling-2-5 until the job file's prices: say)
    unknown_cost_jobs: int
    #: models with jobs of unknown price
    unknown_price_models: tuple[str, ...]
    max_concurrent: int
    rpm: int
    #: estimated API requests of the whole run (submits and polls)
    requests: float
    #: total task time divided by the tasks allowed in flight
    concurrency_bound_s: float
    #: requests divided by the requests allowed per minute
    rate_bound_s: float
    #: no run ends before its slowest task does
    longest_task_s: float
    #: the forecast (:mod:`~.forecast`): jobs started in ``order`` on the first free
    #: slot within the rate, each holding its slot for its generation and detection
    wall_time_s: float
    #: the largest of the three bounds: what sets the wall time
    bound: Bound
    order: str = "longest"
    #: the plan covers the jobs a journal leaves to submit; the whole file's figures
    #: (None: the plan is the whole file's)
    whole: WholeFile | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``plan --json`` prints)."""
        return {
            "name": self.name,
            "job_file": str(self.job_file),
            "output_dir": str(self.output_dir),
            "jobs": self.jobs,
            "file": None
            if self.whole is None
            else {
                "jobs": self.whole.jobs,
                "known_usd": round(self.whole.known_cost_usd, 4),
                "unknown_jobs": self.whole.unknown_cost_jobs,
            },
            "output_seconds": self.output_seconds,
            "cost": {
                "known_usd": round(self.known_cost_usd, 4),
                "unknown_jobs": self.unknown_cost_jobs,
                "unknown_price_models": list(self.unknown_price_models),
                "complete": self.unknown_cost_jobs == 0,
            },
            "groups": [
                {
                    "model": row.model,
                    "mode": row.mode,
                    "duration": row.duration,
                    "tier": row.tier,
                    "jobs": row.jobs,
                    "output_seconds": row.output_seconds,
                    "price_per_second": row.price_per_second,
                    "cost_usd": None if row.cost_usd is None else round(row.cost_usd, 4),
                    "mean_task_s": row.mean_task_s,
                    "requests_per_task": round(row.requests_per_task, 2),
                }
                for row in self.rows
            ],
            "wall_time": {
                "seconds": round(self.wall_time_s, 1),
                "bound": self.bound,
                "concurrency_bound_s": round(self.concurrency_bound_s, 1),
                "rate_bound_s": round(self.rate_bound_s, 1),
                "longest_task_s": self.longest_task_s,
                "requests": round(self.requests),
                "max_concurrent": self.max_concurrent,
                "rpm": self.rpm,
                "order": self.order,
            },
        }


def estimate_cost(campaign: Campaign) -> tuple[float, int]:
    """(USD for the jobs whose price is known, number of jobs whose price is not)."""
    known, unknown = 0.0, 0
    for group in campaign.groups:
        cost = _group_cost(group, campaign.prices)
        if cost is None:
            unknown += group.count
        else:
            known += cost
    return known, unknown


def _group_cost(group: JobGroup, prices: PriceTable) -> float | None:
    cost = MODELS[group.model].cost(group.sample_input, prices)
    return None if cost is None else cost * group.count


def make_plan(
    campaign: Campaign,
    *,
    max_concurrent: int,
    rpm: int,
    order: str = "longest",
    now: tuple[Sequence[JobGroup], Iterable[tuple[Kind, int]]] | None = None,
) -> Plan:
    """The plan's figures for ``max_concurrent`` tasks in flight and ``rpm`` requests a minute,
    jobs started in ``order`` (``longest`` or ``file``).

    ``now``: (groups, runs in file order) of the jobs the journal leaves to submit
    (:class:`~.resume.Resume`): the figures are theirs, the whole file's in ``whole``."""
    groups: Sequence[JobGroup] = campaign.groups if now is None else now[0]
    whole = None
    if now is not None:
        known, unknown = estimate_cost(campaign)
        whole = WholeFile(campaign.job_count, known, unknown)
    rows = tuple(_row(group, campaign.prices) for group in _catalog_order(groups))
    task_seconds = sum(row.mean_task_s * row.jobs for row in rows)
    requests = sum(row.requests_per_task * row.jobs for row in rows)
    concurrency_s = task_seconds / max_concurrent
    rate_s = requests / rpm * 60.0
    longest_s = max((row.max_task_s for row in rows), default=0.0)
    bounds: dict[Bound, float] = {
        "concurrency": concurrency_s,
        "rate": rate_s,
        "longest task": longest_s,
    }
    bound = max(bounds, key=lambda name: bounds[name])
    unknown_models = sorted({row.model for row in rows if row.cost_usd is None})
    return Plan(
        name=campaign.name,
        job_file=campaign.path,
        output_dir=campaign.output_dir,
        jobs=campaign.job_count if now is None else sum(g.count for g in groups),
        rows=rows,
        output_seconds=sum(row.output_seconds for row in rows),
        known_cost_usd=sum(row.cost_usd for row in rows if row.cost_usd is not None),
        unknown_cost_jobs=sum(row.jobs for row in rows if row.cost_usd is None),
        unknown_price_models=tuple(unknown_models),
        max_concurrent=max_concurrent,
        rpm=rpm,
        requests=requests,
        concurrency_bound_s=concurrency_s,
        rate_bound_s=rate_s,
        longest_task_s=longest_s,
        wall_time_s=forecast(
            shapes_in_start_order(
                _runs(campaign, order) if now is None else now[1], None, order=order
            ),
            slots=max_concurrent,
            rpm=rpm,
        ).wall_s,
        bound=bound,
        order=order,
        whole=whole,
    )


def _runs(campaign: Campaign, order: str) -> Iterable[tuple[Kind, int]]:
    """The campaign's jobs as (kind, jobs in a row) in file order: by group when the order
    does not depend on the file's (a group's jobs are alike), else job by job."""
    if order == "longest":
        return [(Kind.of(g.model, g.sample_input), g.count) for g in campaign.groups]
    return ((Kind.of(job.model, job.input), 1) for job in campaign.iter_jobs())


def _catalog_order(groups: Iterable[JobGroup]) -> list[JobGroup]:
    models = list(MODELS)

    def key(group: JobGroup) -> tuple[int, int, int, int, str]:
        spec = MODELS[group.model]
        modes = list(spec.modes)
        # Published tiers in the catalog's order (silent before sound, 720p before 1080p).
        tiers = list(spec.prices)
        tier = tiers.index(group.tier) if group.tier in tiers else len(tiers)
        return (
            models.index(group.model),
            modes.index(group.mode),
            group.duration,
            tier,
            group.tier,
        )

    return sorted(groups, key=key)


def _row(group: JobGroup, prices: PriceTable) -> PlanRow:
    spec = MODELS[group.model]
    # The forecast's figures for one task, so the rows and the wall time say the same.
    shape = task_shape(None, Kind.of(group.model, group.sample_input), callback=False)
    return PlanRow(
        model=group.model,
        mode=group.mode,
        duration=group.duration,
        tier=group.tier,
        jobs=group.count,
        output_seconds=group.duration * group.count,
        price_per_second=spec.price_per_second(group.sample_input, prices),
        cost_usd=_group_cost(group, prices),
        mean_task_s=shape.generation_s,
        max_task_s=float(group.clock.typical_max),
        requests_per_task=shape.requests,
    )
