"""Slot turnaround: from a task's end being known to the next submit leaving.

While the account's slots bind, this is time a slot sits idle that no poll or
callback can win back: the follower notes when it learned an end (the status
answer was read, or the callback arrived), the submitter notes each submit as it
leaves, and the two are paired first in, first out. An end that no submit follows
(the campaign's last wave, a budget reached) is never counted.
"""

from __future__ import annotations

import array
import collections
from dataclasses import dataclass

__all__ = ["Turnaround", "TurnaroundStats"]


@dataclass(frozen=True, slots=True)
class TurnaroundStats:
    """Seconds of the run's clock (real seconds: divide by ``--time-scale`` for APIXO's)."""

    count: int
    p50: float | None
    p90: float | None
    max: float | None


class Turnaround:
    """Pairs ends known with the submits that follow them."""

    def __init__(self) -> None:
        self._ends: collections.deque[float] = collections.deque()
        # 8 bytes a sample: a 100,000-job run keeps well under a megabyte
        self._samples = array.array("d")

    def ended(self, at: float) -> None:
        """A task's end became known at ``at`` (monotonic); its slot is free."""
        self._ends.append(at)

    def left(self, at: float) -> None:
        """A submit left at ``at``: it took the oldest free slot, if one was waiting."""
        if self._ends:
            self._samples.append(max(0.0, at - self._ends.popleft()))

    def statistics(self) -> TurnaroundStats:
        if not self._samples:
            return TurnaroundStats(0, None, None, None)
        ordered = sorted(self._samples)

        def q(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

        return TurnaroundStats(len(ordered), q(0.5), q(0.9), ordered[-1])
