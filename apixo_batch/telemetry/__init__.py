"""What a run tells outside itself while nobody watches: notifications (Apprise) and
Prometheus metrics. Both are consumers of the event stream, above the pipeline:
they read its events and statistics and never hold it up.

==============  ==============================================================
module          what it holds
==============  ==============================================================
``notify``      :class:`Notifier`: end, stop, stall and recover as short
                messages, each sent on a thread of its own
``metrics``     :class:`RunMetrics`: counters, gauges and histograms of one run;
                the ``/metrics`` server and the atomic textfile
==============  ==============================================================

:class:`Telemetry` joins them for the command line: one event sink, one task on the
run's loop that refreshes the gauges and rewrites the textfile, one close.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..events import Event
from ..pipeline import RunStatistics
from .metrics import MetricsServer, RunMetrics, serve_metrics, write_textfile
from .notify import Notifier

__all__ = [
    "TEXTFILE_EVERY_S",
    "MetricsServer",
    "Notifier",
    "RunMetrics",
    "Telemetry",
    "serve_metrics",
    "write_textfile",
]

#: seconds between two refreshes of the gauges read from the run's statistics
REFRESH_EVERY_S = 1.0
#: seconds between two writes of --metrics-textfile (node_exporter reads it when scraped)
TEXTFILE_EVERY_S = 5.0


def _stderr(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


class Telemetry:
    """The notifier and the metrics of one run, as the command line wires them."""

    def __init__(
        self,
        *,
        notifier: Notifier | None = None,
        metrics: RunMetrics | None = None,
        server: MetricsServer | None = None,
        textfile: Path | None = None,
        warn: Callable[[str], None] = _stderr,
    ) -> None:
        self.notifier = notifier
        self.metrics = metrics
        self.server = server
        self.textfile = textfile
        self._warn = warn
        self._textfile_failed = False

    def __call__(self, event: Event) -> None:
        if self.metrics is not None:
            self.metrics(event)
        if self.notifier is not None:
            self.notifier(event)

    async def keep_fresh(
        self,
        stats: Callable[[], RunStatistics],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Until cancelled: the gauges from ``stats`` every second, the textfile every
        few seconds (written off the loop: a slow disk must not slow the run)."""
        if self.metrics is None:
            return
        since_write = 0.0
        while True:
            self.metrics.refresh(stats())
            since_write += REFRESH_EVERY_S
            if self.textfile is not None and since_write >= TEXTFILE_EVERY_S:
                since_write = 0.0
                await asyncio.to_thread(self.write_textfile)
            await sleep(REFRESH_EVERY_S)

    def write_textfile(self) -> None:
        """Rewrite the textfile; a failure is told once, the run goes on."""
        if self.metrics is None or self.textfile is None:
            return
        try:
            write_textfile(self.metrics, self.textfile)
        except OSError as exc:
            if not self._textfile_failed:
                self._textfile_failed = True
                self._warn(
                    f"WARNING: cannot write --metrics-textfile {self.textfile}: "
                    f"{exc.strerror or exc}; the run goes on without it"
                )

    def close(self, stats: RunStatistics | None = None) -> None:
        """The last figures written, the server closed, then the notifications still on
        their way waited for (at most the notifier's grace)."""
        if self.metrics is not None and stats is not None:
            self.metrics.refresh(stats)
        self.write_textfile()
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.close()
            self.server = None
        if self.notifier is not None:
            self.notifier.close()
