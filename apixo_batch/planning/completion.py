"""How long a task takes, per kind (:attr:`~.kind.Kind.key`): the documented window first,
learned times later.

The follower's poll timers (:mod:`apixo_batch.pipeline.scheduler`) and the forecast
(:mod:`.forecast`) read the same model, so a plan and a run agree on what to expect.
"""

from __future__ import annotations

import bisect
import collections

from ..catalog.models import Clock as ModelClock

__all__ = ["CompletionModel", "poll_step"]


def poll_step(width: float, interval: float) -> float:
    """The share of a completion-time distribution ``width`` seconds wide between two polls.

    The docs' cadence (wait the earliest typical completion, then poll every
    ``interval``) spends about ``width / interval + 2`` polls on a task whose end falls
    anywhere in the window, one of them wasted at its start: the same number of polls
    at equal steps of probability sees each end sooner (mean delay
    ``width / (2 (width / interval + 2))`` instead of ``interval / 2``)."""
    return 1.0 / (max(0.0, width) / interval + 2.0)


class CompletionModel:
    """Completion times (unscaled seconds) per kind's key: documented first, learned later."""

    def __init__(self, min_samples: int = 20, keep: int = 500) -> None:
        self._samples: dict[str, collections.deque[float]] = {}
        self._sorted: dict[str, list[float]] = {}
        self.min_samples = min_samples
        self.keep = keep

    def add(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        dq = self._samples.setdefault(key, collections.deque(maxlen=self.keep))
        if len(dq) == dq.maxlen:
            old = dq[0]
            lst = self._sorted[key]
            del lst[bisect.bisect_left(lst, old)]
        dq.append(seconds)
        bisect.insort(self._sorted.setdefault(key, []), seconds)

    def samples(self, key: str) -> int:
        return len(self._samples.get(key, ()))

    def quantile(self, key: str, q: float, fallback: ModelClock) -> float:
        """The q-quantile of completion time; the documented range until enough is learned."""
        lst = self._sorted.get(key)
        if not lst or len(lst) < self.min_samples:
            return fallback.typical_min + q * (fallback.typical_max - fallback.typical_min)
        pos = min(len(lst) - 1, max(0, round(q * (len(lst) - 1))))
        return lst[pos]
