"""What a run can be told (:class:`RunOptions`), what it shows while it goes on
(:class:`RunStatistics`) and what it tells back (:class:`RunResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..apixo.limits import MAX_CONCURRENT_CAP, RPM_CAP
from ..defaults import (
    DEFAULT_BASE_URL,
    GRACE_S,
    LEASE_S,
    MAX_CONCURRENT,
    MAX_WAIT_MIN,
    ORDERS,
    RPM,
)
from ..events import Summary
from ..exitcodes import ExitCode
from ..journal.pg import is_database
from ..location import Destination
from ..planning.selection import Again, Selection
from ..retry import Patience
from .turnaround import TurnaroundStats

__all__ = ["Mode", "Order", "RunOptions", "RunResult", "RunStatistics", "summary_dict"]

Mode = Literal["run", "download"]
Order = Literal["longest", "file"]


@dataclass(frozen=True)
class RunOptions:
    """Everything a run can be told (the CLI maps its flags onto this).

    Values the CLI would refuse are refused here too (ValueError naming the
    field), so an embedder cannot run above the API's limits by accident.
    """

    base_url: str = DEFAULT_BASE_URL
    state_path: Path | None = None
    #: the journal in PostgreSQL (``postgresql://…``) instead of a file; never shown with
    #: its password (see journal/pg/url.py)
    state_url: str | None = field(default=None, repr=False)
    max_concurrent: int = MAX_CONCURRENT
    rpm: int = RPM
    time_scale: float = 1.0
    callback_url: str | None = None
    #: (host, port) of the built-in callback receiver; required with callback_url
    listen: tuple[str, int] | None = None
    budget: float | None = None
    allow_partial: bool = False
    max_wait_min: float = MAX_WAIT_MIN
    retry_failed: bool = False
    #: with ``retry_failed``: only failed jobs of these fail codes, retried even when the
    #: input was refused and is unchanged (``--fail-code``)
    fail_codes: tuple[str, ...] = ()
    #: submit expired jobs again (``--retry-expired``)
    retry_expired: bool = False
    #: a new take of done jobs, the earlier files kept (``--reroll``)
    reroll: bool = False
    #: with ``reroll``: only the jobs whose decision on the review page is reject
    #: (``--reroll rejected``)
    reroll_rejected: bool = False
    #: act only on jobs whose id matches one of these shell-style patterns (``--only``)
    only: tuple[str, ...] = ()
    #: act only on jobs of these models (``--model``)
    models: tuple[str, ...] = ()
    #: submit at most this many jobs, the first in the start order (``--limit``)
    limit: int | None = None
    download_concurrency: int = 16
    #: seconds an interrupted run waits for submit answers already on the wire
    stop_grace_s: float = 3.0
    mode: Mode = "run"
    #: which queued jobs start first (``defaults.ORDERS``)
    order: Order = "longest"
    #: write ``<out>/review.html`` at the end (``--no-review`` turns it off)
    review: bool = True
    #: several runners on one PostgreSQL campaign: seconds a runner's lease lasts (it is
    #: renewed every third of it), and how much longer a silent runner is given before
    #: another adopts its work (``APIXO_BATCH_LEASE_S``, ``APIXO_BATCH_GRACE_S``)
    lease_s: float = LEASE_S
    grace_s: float = GRACE_S
    #: leave once every unfinished job is another live runner's (``--leave-early``)
    leave_early: bool = False
    #: the local output folder is one mount shared by every runner (``--shared-out``):
    #: runners on several hosts may write to it (else a second host is refused)
    shared_out: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.state_path, str) and is_database(self.state_path):
            # A database URL given where a path is expected: what it means is plain.
            object.__setattr__(self, "state_url", self.state_path)
            object.__setattr__(self, "state_path", None)
        if self.state_url is not None and not is_database(self.state_url):
            raise ValueError("RunOptions.state_url: a postgresql:// URL is needed")
        if isinstance(self.state_path, str):
            # A path given as text, as the old keyword options took it: still a path.
            object.__setattr__(self, "state_path", Path(self.state_path))
        elif self.state_path is not None and not isinstance(self.state_path, Path):
            raise ValueError(f"RunOptions.state_path: {self.state_path!r} is not a path")

        def whole(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"RunOptions.{name}: a whole number is needed, not {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"from {low} to {high:,}" if high is not None else f"at least {low}"
                raise ValueError(f"RunOptions.{name}: {value:,} is out of range ({bound})")

        def positive(name: str, *, zero: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
                need = "zero or more" if zero else "more than zero"
                raise ValueError(f"RunOptions.{name}: {value!r} is not a finite number {need}")

        whole("max_concurrent", 1, MAX_CONCURRENT_CAP)
        whole("rpm", 1, RPM_CAP)
        whole("download_concurrency", 1)
        positive("time_scale")
        positive("max_wait_min")
        positive("stop_grace_s", zero=True)
        positive("lease_s")
        positive("grace_s", zero=True)
        if self.budget is not None:
            positive("budget")
        if self.limit is not None:
            whole("limit", 1)
        for name in ("only", "models", "fail_codes"):
            value = getattr(self, name)
            if isinstance(value, str):
                # One pattern given as text, as a keyword argument would: still one.
                object.__setattr__(self, name, (value,))
            elif not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"RunOptions.{name}: {value!r} is not a tuple of names")
            else:
                object.__setattr__(self, name, tuple(value))
        if self.reroll_rejected and not self.reroll:
            raise ValueError("RunOptions.reroll_rejected narrows reroll: set reroll too")
        if self.fail_codes and not self.retry_failed:
            raise ValueError("RunOptions.fail_codes narrows retry_failed: set retry_failed too")
        if self.order not in ORDERS:
            raise ValueError(f"RunOptions.order: {self.order!r} is neither 'longest' nor 'file'")
        if self.mode not in ("run", "download"):
            raise ValueError(f"RunOptions.mode: {self.mode!r} is neither 'run' nor 'download'")

    @property
    def selection(self) -> Selection:
        """The jobs this run acts on (``only``, ``models``, ``limit``)."""
        return Selection(self.only, self.models, self.limit)

    @property
    def again(self) -> Again:
        """The ended jobs this run queues again (only ``mode="run"`` does)."""
        run = self.mode == "run"
        return Again(
            failed=self.retry_failed and run,
            fail_codes=self.fail_codes,
            expired=self.retry_expired and run,
            reroll=self.reroll and run,
            rejected=self.reroll_rejected,
            selection=self.selection,
        )

    @property
    def patience(self) -> Patience:
        """``max_wait_min`` as what the stages wait through: a task, an outage."""
        return Patience.minutes(self.max_wait_min)


@dataclass(frozen=True, slots=True)
class KeyStats:
    """One key of a pool, named by its fingerprint: a snapshot for progress and summary."""

    fingerprint: str
    #: ``active``, ``cooling`` (paused after a 429) or ``retired`` (submits no more)
    state: str
    in_flight: int
    max_concurrent: int
    slot_window: int
    requests: int
    requests_last_minute: int
    rpm_limit: int
    rate_limited: int
    learned_rpm: float | None
    #: the slot window the account allowed once a submit was refused for slots
    learned_slots: int | None
    submitted: int
    spent_usd: float
    #: why it submits no more
    retired: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.fingerprint,
            "state": self.state,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "requests": self.requests,
            "rpm": self.requests_last_minute,
            "rpm_limit": self.rpm_limit,
            "rate_limited": self.rate_limited,
            "learned_rpm": round(self.learned_rpm) if self.learned_rpm is not None else None,
            "learned_slots": self.learned_slots,
            "submitted": self.submitted,
            "spent_usd": round(self.spent_usd, 4),
            "retired": self.retired,
        }


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """A snapshot of a run under way, for progress displays (``Engine.statistics()``)."""

    #: requests that left so far
    requests: int
    #: requests granted in the last 60 seconds: what the account's per-minute limit counts
    requests_last_minute: int
    #: the ``--rpm`` asked for
    rpm_limit: int
    rate_limited: int
    #: the rate the request bucket paces to now (below ``rpm_limit`` after 429s)
    effective_rpm: float
    #: the account's request rate (a minute's worth), as learned
    learned_rpm: float | None
    in_flight: int
    max_concurrent: int
    #: the slot window the account allows so far (``max_concurrent`` until a refusal)
    slot_window: int
    peak_in_flight: int
    #: results being downloaded or waiting for a download's turn
    downloading: int
    #: known spend, earlier runs of the campaign included
    spent_usd: float
    budget_usd: float | None
    #: why submitting stopped, once it has
    stop_reason: str | None
    #: polls answered so far, by outcome (``follower.POLL_OUTCOMES``)
    polls: dict[str, int] = field(default_factory=dict)
    #: each key of a pool (empty with one key)
    keys: tuple[KeyStats, ...] = ()


@dataclass
class RunResult:
    """What a run did and how it ended."""

    exit_code: ExitCode
    counts: dict[str, int]
    submitted: int = 0
    #: None (as the two below) when the journal's totals could not be read at the end
    possibly_duplicated: int | None = 0
    requests: int = 0
    rate_limited: int = 0
    #: the account's request rate (a minute's worth): what it accepted over its window
    learned_rpm: float | None = None
    #: how it limits, when this run's answers told ("450 per 10 s (sliding)")
    learned_limit: str | None = None
    #: the slot window the account allowed (a submit was refused for slots), if smaller
    learned_slots: int | None = None
    #: end known to the next submit leaving (seconds of the run's clock)
    slot_turnaround: TurnaroundStats | None = None
    #: the wall time predicted at the start for the jobs queued then (``plan``'s model)
    planned_wall_s: float | None = None
    retries: int = 0
    wall_s: float = 0.0
    #: None when the journal's totals could not be read at the end: unknown, not $0
    spent_usd: float | None = 0.0
    unknown_price_jobs: int | None = 0
    fatal: str | None = None
    stop_reason: str | None = None
    interrupted: bool = False
    input_changed: list[str] = field(default_factory=list)
    arrived: dict[str, int] = field(default_factory=dict)
    fail_codes: dict[str, list[str]] = field(default_factory=dict)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    #: jobs still queued at the end (counted as pending) that no submit ever reached
    never_submitted: int | None = 0
    #: jobs still queued whose submit was cut off on the wire: a task may exist
    submit_cut_off: int | None = 0
    #: the one thing to do next (from the stop that chose the exit code)
    next_step: str | None = None
    #: a path, or an ``s3://`` URL when the output is object storage
    manifest: Path | str | None = None
    review: Path | str | None = None
    output_dir: Destination | None = None
    #: requests made to the output's object store, by call (empty for a folder)
    store_requests: dict[str, int] = field(default_factory=dict)
    #: each key of a pool, by fingerprint (empty with one key)
    keys: list[KeyStats] = field(default_factory=list)

    def summary(self) -> Summary:
        """The final summary (the ``summary`` event), figures rounded as the JSON shows them."""
        return Summary(
            exit_code=int(self.exit_code),
            counts=self.counts,
            jobs=sum(self.counts.values()),
            submitted=self.submitted,
            possibly_duplicated=self.possibly_duplicated,
            requests=self.requests,
            requests_per_task=(
                round(self.requests / self.submitted, 3) if self.submitted else None
            ),
            rate_limited=self.rate_limited,
            learned_rpm=round(self.learned_rpm) if self.learned_rpm is not None else None,
            learned_limit=self.learned_limit,
            learned_slots=self.learned_slots,
            slot_turnaround_s=_turnaround(self.slot_turnaround),
            retries=self.retries,
            wall_s=round(self.wall_s, 3),
            planned_wall_s=(
                round(self.planned_wall_s, 1) if self.planned_wall_s is not None else None
            ),
            spent_usd=round(self.spent_usd, 4) if self.spent_usd is not None else None,
            unknown_price_jobs=self.unknown_price_jobs,
            fatal=self.fatal,
            stop_reason=self.stop_reason,
            interrupted=self.interrupted,
            input_changed=self.input_changed,
            arrived=self.arrived,
            fail_codes={k: v[:5] for k, v in self.fail_codes.items()},
            fail_counts={k: len(v) for k, v in self.fail_codes.items()},
            per_model=self.per_model,
            never_submitted=self.never_submitted,
            manifest=str(self.manifest) if self.manifest else None,
            review=str(self.review) if self.review else None,
            output_dir=str(self.output_dir) if self.output_dir else None,
            store_requests=self.store_requests or None,
            next_step=self.next_step,
            submit_cut_off=self.submit_cut_off,
            keys=[k.as_dict() for k in self.keys] or None,
        )


def summary_dict(r: RunResult) -> dict[str, Any]:
    """The final summary as plain JSON-able data (``--json`` and embedders)."""
    return r.summary().data


def _turnaround(t: TurnaroundStats | None) -> dict[str, float] | None:
    if t is None or not t.count:
        return None
    return {
        "count": t.count,
        "p50": round(t.p50 or 0.0, 4),
        "p90": round(t.p90 or 0.0, 4),
        "max": round(t.max or 0.0, 4),
    }
