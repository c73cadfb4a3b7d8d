"""Where a campaign stands, for people: a live rich view on a terminal, plain lines elsewhere.

:class:`Tally` counts from the engine's events (it never asks the journal), so
any front end can use it. :class:`LiveView` draws it with rich when stderr is a
terminal; :class:`PlainView` prints one status line every few seconds when it
is not (cron, CI), with no escape codes at all.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ..clock import human_duration
from ..events import Event

if TYPE_CHECKING:
    # rich is imported by LiveView itself: cron, CI and --json runs never draw it.
    from rich.console import Console, Group

__all__ = ["LiveView", "PlainView", "Tally"]

StatsFn = Callable[[], dict[str, Any]]


@dataclass
class _Row:
    queued: int = 0
    in_flight: int = 0
    downloading: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0
    pending: int = 0


@dataclass
class Tally:
    """Counts per model and overall, kept up to date from events."""

    rows: dict[str, _Row] = field(default_factory=lambda: defaultdict(_Row))
    started_at: float = field(default_factory=time.monotonic)
    first_done_at: float | None = None
    done_this_run: int = 0
    retries: int = 0
    rate_limited: int = 0
    warnings: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        d = event.data
        kind = event.kind
        if kind == "started":
            for model, states in (d.get("per_model") or {}).items():
                row = self.rows[model]
                row.queued = states.get("queued", 0) + states.get("submitting", 0)
                row.in_flight = states.get("submitted", 0)
                row.downloading = states.get("succeeded", 0)
                row.done = states.get("done", 0)
                row.failed = states.get("failed", 0)
                row.expired = states.get("expired", 0)
            return
        model = d.get("model")
        if kind in ("retried",):
            self.retries += 1
        elif kind == "rate-limited":
            self.rate_limited += 1
        elif kind in ("warning", "stopped"):
            self.warnings.append(str(d.get("message") or d.get("reason") or ""))
        if not isinstance(model, str):
            return
        row = self.rows[model]
        if kind == "submitted":
            row.queued = max(0, row.queued - 1)
            row.in_flight += 1
        elif kind == "succeeded":
            row.in_flight = max(0, row.in_flight - 1)
            row.downloading += 1
        elif kind == "downloaded":
            row.downloading = max(0, row.downloading - 1)
            row.done += 1
            self.done_this_run += 1
            if self.first_done_at is None:
                self.first_done_at = time.monotonic()
        elif kind == "failed":
            if "task_id" in d:
                row.in_flight = max(0, row.in_flight - 1)
            else:
                row.queued = max(0, row.queued - 1)
            row.failed += 1
        elif kind == "expired":
            row.downloading = max(0, row.downloading - 1)
            row.expired += 1

    def total(self) -> _Row:
        with self._lock:
            out = _Row()
            for row in self.rows.values():
                for name in vars(out):
                    setattr(out, name, getattr(out, name) + getattr(row, name))
            return out

    def eta_s(self) -> float | None:
        """Seconds left at the pace of this run so far, or None before the first result."""
        t = self.total()
        left = t.queued + t.in_flight + t.downloading
        if not left:
            return 0.0
        if self.first_done_at is None or self.done_this_run < 3:
            return None
        rate = self.done_this_run / max(1e-6, time.monotonic() - self.started_at)
        return left / rate


def _fmt_eta(eta: float | None) -> str:
    # Whole seconds: an estimate that changes every refresh has no use for tenths.
    return "ETA --" if eta is None else f"ETA {human_duration(int(eta))}"


def status_line(tally: Tally, stats: dict[str, Any]) -> str:
    """One plain line: the whole campaign at a glance."""
    t = tally.total()
    # Requests in the last minute, as the account counts them: an average since the start
    # would show the first second's burst as a rate above the limit.
    rpm = float(stats.get("requests_last_minute", 0))
    learned = stats.get("learned_rpm")
    account = f" (account ~{learned:,.0f})" if learned else ""
    window, limit = stats.get("slot_window"), stats.get("max_concurrent")
    slots = f" of {window:,} slots" if window and limit and window < limit else ""
    return (
        f"done {t.done}, failed {t.failed + t.expired}, in flight {t.in_flight}{slots}, "
        f"downloading {t.downloading}, queued {t.queued} | {_fmt_eta(tally.eta_s())} | "
        f"{rpm:,.0f}/{stats.get('rpm_limit', 0):,} rpm{account} | "
        f"429s {stats.get('rate_limited', 0)} | spent ~${stats.get('spent_usd', 0.0):,.2f}"
    )


class _Ticker:
    """Calls ``tick`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


class PlainView:
    """For cron and CI: a status line every ``interval`` seconds, nothing fancy."""

    def __init__(self, tally: Tally, stats: StatsFn, out: IO[str], interval: float = 10.0) -> None:
        self.tally = tally
        self.stats = stats
        self.out = out
        self._ticker = _Ticker(interval, self.print_line)

    def print_line(self) -> None:
        print(f"apixo-batch: {status_line(self.tally, self.stats())}", file=self.out, flush=True)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()


class LiveView:
    """For a person at a terminal: bars per model, requests against the limit, spend."""

    def __init__(self, tally: Tally, stats: StatsFn, console: Console) -> None:
        self.tally = tally
        self.stats = stats
        from rich.live import Live

        self.console = console
        self._live = Live(
            get_renderable=self.render, console=console, refresh_per_second=4, transient=False
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
        with self.tally._lock:
            rows = sorted(self.tally.rows.items())
        for model, r in rows:
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

    def stop(self) -> None:
        self._live.stop()
