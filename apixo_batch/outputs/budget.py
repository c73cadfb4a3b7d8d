"""The bytes of memory a run's transfers to object storage share.

A request is granted whole or waits, first come first served: no transfer ever
holds part of what it asked for while waiting for the rest, so transfers that
all need more cannot block each other for good.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ByteBudget"]


class ByteBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a budget needs at least one byte")
        self.total = total
        self._free = total
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def free(self) -> int:
        return self._free

    async def take(self, n: int) -> int:
        """Wait for ``n`` bytes (at most the whole budget); how many were taken."""
        n = max(1, min(n, self.total))
        if not self._waiting and self._free >= n:
            self._free -= n
            return n
        granted = asyncio.get_running_loop().create_future()
        entry = (n, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.give(n)  # granted just as the cancel came
            else:
                self._waiting.remove(entry)
                self._wake()  # whoever was behind it may fit now
            raise
        return n

    def give(self, n: int) -> None:
        self._free += n
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._free:
            n, granted = self._waiting.popleft()
            if granted.done():
                continue
            self._free -= n
            granted.set_result(None)
