"""Where a campaign stands, for people: a live rich view on a terminal, plain lines elsewhere.

:class:`Tally` counts from the engine's events (it never asks the journal), so
any front end can use it. :class:`LiveView` draws it with rich when stderr is a
terminal; :class:`PlainView` prints one status line every few seconds when it
is not (cron, CI), with no escape codes at all.

Both are drawn by :func:`shown`, a task on the run's own loop that redraws on the
run's clock: the engine's state is read only on the thread that changes it (rich's
own refresh thread once iterated the request bucket's deque while the loop appended
to it, and died of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

from ..clock import Clock, SystemClock, human_duration
from ..events import (
    Downloaded,
    Event,
    Expired,
    Failed,
    Retried,
    Started,
    Stopped,
    Submitted,
    Succeeded,
    Throttled,
    Warned,
)

if TYPE_CHECKING:
    # rich is imported by LiveView itself: cron, CI and --json runs never draw it.
    from rich.console import Console, Group

    from ..pipeline import RunStatistics

__all__ = ["LiveView", "PlainView", "Tally", "View", "shown"]

StatsFn = Callable[[], "RunStatistics"]


@dataclass
class _Row:
    queued: int = 0
    in_flight: int = 0
    downloading: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0
    pending: int = 0


#: Results that must end before an ETA is shown: one gives no pace, two a noisy one.
ETA_AFTER = 3
#: How far each new end moves the time left towards its own estimate, and by how much of
#: itself at most: a burst of results (or a lull) nudges the ETA rather than throwing it.
ETA_SMOOTHING = 0.3
ETA_MAX_STEP = 0.25
#: The pace is that of the last ends (this many), so a lull long past stops weighing on it.
ETA_WINDOW = 20


@dataclass
class Tally:
    """Counts per model and overall, kept up to date from events.

    The ETA is a predicted end on ``clock`` (the run's own: virtual in tests), moved only
    when a job ends and counted down between ends: while submits take every request and
    nothing ends, it counts down instead of growing with the wait."""

    rows: dict[str, _Row] = field(default_factory=lambda: defaultdict(_Row))
    clock: Clock = field(default_factory=SystemClock)
    first_done_at: float | None = None
    done_this_run: int = 0
    #: jobs that ended this run (done, failed after a submit, expired)
    ended_this_run: int = 0
    #: when the last ends came (``clock.monotonic()``): the pace
    ends: deque[float] = field(default_factory=lambda: deque(maxlen=ETA_WINDOW + 1))
    #: the predicted end (``clock.monotonic()``), once it can be estimated
    predicted_end: float | None = None
    retries: int = 0
    rate_limited: int = 0
    warnings: list[str] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        match event:
            case Started(per_model=per_model):
                for model, states in per_model.items():
                    row = self.rows[model]
                    row.queued = states.get("queued", 0) + states.get("submitting", 0)
                    row.in_flight = states.get("submitted", 0)
                    row.downloading = states.get("succeeded", 0)
                    row.done = states.get("done", 0)
                    row.failed = states.get("failed", 0)
                    row.expired = states.get("expired", 0)
            case Retried():
                self.retries += 1
            case Throttled():
                self.rate_limited += 1
            case Warned(message=message) | Stopped(reason=message):
                self.warnings.append(message)
            case Submitted(model=model):
                row = self.rows[model]
                row.queued = max(0, row.queued - 1)
                row.in_flight += 1
            case Succeeded(model=model):
                row = self.rows[model]
                row.in_flight = max(0, row.in_flight - 1)
                row.downloading += 1
            case Downloaded(model=model):
                row = self.rows[model]
                row.downloading = max(0, row.downloading - 1)
                row.done += 1
                self.done_this_run += 1
                if self.first_done_at is None:
                    self.first_done_at = self.clock.monotonic()
                self._ended()
            case Failed(model=model, task_id=task_id):
                row = self.rows[model]
                if task_id is not None:
                    row.in_flight = max(0, row.in_flight - 1)
                else:
                    row.queued = max(0, row.queued - 1)
                row.failed += 1
                if task_id is not None:  # a refused submit ends at once: no pace of results
                    self._ended()
            case Expired(model=model):
                row = self.rows[model]
                row.downloading = max(0, row.downloading - 1)
                row.expired += 1
                self._ended()

    def _ended(self) -> None:
        """A job ended: the pace of the last ends predicts when the rest will."""
        now = self.clock.monotonic()
        self.ended_this_run += 1
        self.ends.append(now)
        # The pace between ends, not since the start: the first results come only after a
        # whole generation, and that wait says nothing about how fast the rest follow.
        spent = now - self.ends[0]
        if len(self.ends) < ETA_AFTER or spent <= 0:
            return
        t = self.total()
        left = t.queued + t.in_flight + t.downloading
        estimate = left * spent / (len(self.ends) - 1)
        shown = None if self.predicted_end is None else self.predicted_end - now
        if shown is None or shown <= 0:
            self.predicted_end = now + estimate  # the first pace, or the last one overdue
            return
        moved = shown + (estimate - shown) * ETA_SMOOTHING
        low, high = shown * (1 - ETA_MAX_STEP), shown * (1 + ETA_MAX_STEP)
        self.predicted_end = now + min(max(moved, low), high)

    def total(self) -> _Row:
        out = _Row()
        for row in self.rows.values():
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(row, name))
        return out

    def eta_s(self) -> float | None:
        """Seconds left at the pace of this run's ends, or None until it can be estimated
        (fewer than :data:`ETA_AFTER` ends) and once the predicted end has passed."""
        t = self.total()
        if not self.rows:
            return None  # nothing known yet: before ``started``
        if not t.queued + t.in_flight + t.downloading:
            return 0.0
        if self.predicted_end is None:
            return None
        left = self.predicted_end - self.clock.monotonic()
        return left if left > 0 else None


def _fmt_eta(eta: float | None) -> str:
    # Whole seconds: an estimate that changes every refresh has no use for tenths.
    return "ETA --" if eta is None else f"ETA {human_duration(int(eta))}"


def status_line(tally: Tally, stats: RunStatistics) -> str:
    """One plain line: the whole campaign at a glance."""
    t = tally.total()
    learned = stats.learned_rpm
    account = f" (account ~{learned:,.0f})" if learned else ""
    window, limit = stats.slot_window, stats.max_concurrent
    slots = f" of {window:,} slots" if window and limit and window < limit else ""
    # Requests in the last minute, as the account counts them: an average since the start
    # would show the first second's burst as a rate above the limit.
    return (
        f"done {t.done}, failed {t.failed + t.expired}, in flight {t.in_flight}{slots}, "
        f"downloading {t.downloading}, queued {t.queued} | {_fmt_eta(tally.eta_s())} | "
        f"{stats.requests_last_minute:,}/{stats.rpm_limit:,} rpm{account} | "
        f"429s {stats.rate_limited} | spent ~${stats.spent_usd:,.2f}" + keys_part(stats)
    )


def keys_part(stats: RunStatistics) -> str:
    """A pool's keys, each by fingerprint: state, tasks in flight against its limit,
    requests in the last minute against its own, learned limits, spend."""
    parts = []
    for k in stats.keys:
        learned = f" ~{k.learned_rpm:,.0f}" if k.learned_rpm else ""
        slots = f" of {k.slot_window:,}" if k.slot_window < k.max_concurrent else ""
        parts.append(
            f"{k.fingerprint} {k.state} {k.in_flight}/{k.max_concurrent}{slots} "
            f"{k.requests_last_minute:,}/{k.rpm_limit:,}{learned} rpm ${k.spent_usd:,.2f}"
        )
    return " | keys: " + "; ".join(parts) if parts else ""


class View(Protocol):
    """A progress display: started, redrawn every ``interval`` seconds, stopped."""

    interval: float

    def start(self) -> None: ...

    def refresh(self) -> None: ...

    def stop(self) -> None: ...


@asynccontextmanager
async def shown(view: View, clock: Clock) -> AsyncIterator[None]:
    """Show ``view`` while the body runs, redrawn on ``clock`` by a task of this loop.

    The view stops (its last frame drawn) however the body ends: done, interrupted,
    failed or cancelled. A view that breaks (its terminal gone, a pipe closed, a bug of
    its own) is told once the run is over and never changes the run's outcome: CI
    scripts read the exit code, and the run's work is whole without its picture."""
    view.start()
    redraws = asyncio.create_task(_redraw(view, clock), name="progress")
    try:
        yield
    finally:
        redraws.cancel()
        await asyncio.wait({redraws})  # not `await redraws`: its cancellation is not ours
        broke = None if redraws.cancelled() else redraws.exception()
        try:
            view.stop()
        except Exception as exc:
            broke = broke or exc
        if broke is not None:
            _told(f"apixo-batch: warning: the progress view stopped: {broke!r}")


def _told(line: str) -> None:
    """One line on stderr, if stderr still takes it (the view's failure may be its own)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr)


async def _redraw(view: View, clock: Clock) -> None:
    while True:
        await clock.sleep(view.interval)
        view.refresh()


class PlainView:
    """For cron and CI: a status line every ``interval`` seconds, nothing fancy."""

    def __init__(self, tally: Tally, stats: StatsFn, out: IO[str], interval: float = 10.0) -> None:
        self.tally = tally
        self.stats = stats
        self.out = out
        self.interval = interval

    def refresh(self) -> None:
        print(f"apixo-batch: {status_line(self.tally, self.stats())}", file=self.out, flush=True)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class LiveView:
    """For a person at a terminal: bars per model, requests against the limit, spend."""

    def __init__(self, tally: Tally, stats: StatsFn, console: Console) -> None:
        self.tally = tally
        self.stats = stats
        from rich.live import Live

        self.console = console
        self.interval = 0.25
        # No refresh thread of rich's own: shown() redraws from the loop.
        self._live = Live(
            get_renderable=self.render, console=console, auto_refresh=False, transient=False
        )

    def render(self) -> Group:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        stats = self.stats()
        table = Table(box=None, pad_edge=False, expand=False)
        for col in ("model", "", "done", "failed", "in flight", "downloading", "queued"):
            table.add_column(col, justify="left" if col in ("model", "") else "right")
        for model, r in sorted(self.tally.rows.items()):
            total = r.queued + r.in_flight + r.downloading + r.done + r.failed + r.expired
            bar = ProgressBar(
                total=max(total, 1), completed=r.done + r.failed + r.expired, width=24
            )
            table.add_row(
                model,
                bar,
                str(r.done),
                str(r.failed + r.expired),
                str(r.in_flight),
                str(r.downloading),
                str(r.queued),
            )
        head = Text(status_line(self.tally, stats))
        notes = [Text(w, style="yellow") for w in self.tally.warnings[-3:]]
        return Group(head, table, *notes)

    def start(self) -> None:
        self._live.start()

    def refresh(self) -> None:
        self._live.refresh()

    def stop(self) -> None:
        self._live.stop()
