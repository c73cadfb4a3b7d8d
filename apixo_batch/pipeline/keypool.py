"""A pool of API keys: each key an account of its own, and admission over all of them.

A task belongs to the key that created it (only that key reads its status), so a pool
is not a round-robin of headers: each :class:`KeyAccount` owns its own request bucket
(and the congestion control in it), its own slot window, its learned limits and its
spend, and the journal binds every task to its key's fingerprint. :meth:`KeyPool.take`
gives a job the key with the most free slots, so every key stays busy; a key that is
refused (401/403, an empty balance) is *retired* from submitting while its tasks are
still followed, and the run stops for a key reason only when no key can submit.

With one key the pool is that key: the run is what it was before pools existed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Literal

from ..apixo.client import ApixoClient
from ..apixo.limits import ConcurrencyLimit, RequestBucket, SlotsClosed, SlotsStranded
from ..apixo.secret import KeySpec
from .options import KeyStats

__all__ = ["KeyAccount", "KeyPool", "KeyState", "NoKeyLeft"]

KeyState = Literal["active", "cooling", "retired"]


class NoKeyLeft(SlotsClosed):
    """Every key of the pool is retired (or its slots closed): no submit can leave."""


class KeyAccount:
    """One key of the pool and everything that is per account: its bucket, its slots, its
    learned-limits digest, its spend, and whether it may still submit."""

    def __init__(
        self,
        spec: KeySpec,
        *,
        bucket: RequestBucket,
        slots: ConcurrencyLimit,
        account: str,
    ) -> None:
        self.spec = spec
        self.fingerprint = spec.fingerprint
        self.bucket = bucket
        self.slots = slots
        #: what learned limits are kept under in the journal (key and base URL digested)
        self.account = account
        self.client: ApixoClient | None = None
        self.retired: str | None = None  # why, once it may no longer submit
        self.submitted = 0
        self.spent_usd = 0.0
        #: tasks of earlier runs this key created and still runs
        self.adopted = 0

    @property
    def state(self) -> KeyState:
        if self.retired is not None:
            return "retired"
        return "cooling" if self.bucket.statistics().paused_for > 0 else "active"

    @property
    def can_submit(self) -> bool:
        return self.retired is None

    def free_share(self) -> float:
        """Free slots as a share of its window: the pool gives the next job to the key with
        the largest (so all keys fill at the same pace), ties to the lighter bucket."""
        cap = self.slots.cap
        return (cap - self.slots.in_flight) / cap

    def statistics(self) -> KeyStats:
        slots = self.slots.statistics()
        bucket = self.bucket.statistics()
        return KeyStats(
            fingerprint=self.fingerprint,
            state=self.state,
            in_flight=slots.in_flight,
            max_concurrent=slots.limit,
            slot_window=slots.window,
            requests=bucket.sent,
            requests_last_minute=self.bucket.last_minute(),
            rpm_limit=self.bucket.rpm,
            rate_limited=bucket.rate_limited,
            learned_rpm=bucket.learned_rpm,
            learned_slots=slots.window if slots.shrinks else None,
            submitted=self.submitted,
            spent_usd=self.spent_usd,
            retired=self.retired,
        )


class KeyPool:
    """The run's keys, in the order given; the first is the run's main key."""

    def __init__(self, accounts: Sequence[KeyAccount]) -> None:
        if not accounts:
            raise ValueError("a key pool needs at least one key")
        self.accounts = list(accounts)
        self.by_fingerprint = {a.fingerprint: a for a in self.accounts}
        self._closed = False

    @property
    def pooled(self) -> bool:
        """More than one key: keys are named in events, the progress line and the summary."""
        return len(self.accounts) > 1

    @property
    def main(self) -> KeyAccount:
        return self.accounts[0]

    def get(self, fingerprint: str | None) -> KeyAccount | None:
        """The account of a journaled task's key (None for a task of no recorded key: the
        main key's, as every task was before pools); None if the run lacks that key."""
        if fingerprint is None:
            return self.main
        return self.by_fingerprint.get(fingerprint)

    def submitting(self) -> list[KeyAccount]:
        return [a for a in self.accounts if a.can_submit]

    def retire(self, account: KeyAccount, why: str) -> bool:
        """``account`` submits no more (its tasks are still followed); True the first time.
        Its slots close: a job waiting for one of them goes to another key."""
        if account.retired is not None:
            return False
        account.retired = why
        account.slots.close()
        return True

    def close(self) -> None:
        """The run stops submitting: every wait for a slot ends."""
        self._closed = True
        for a in self.accounts:
            a.slots.close()

    async def take(self) -> KeyAccount:
        """A slot of the key with the most free capacity (waiting for one if all are full).

        Raises :class:`SlotsStranded` when tasks past ``--max-wait`` hold every slot of
        every key that may submit, :class:`NoKeyLeft` (a :class:`SlotsClosed`) when no key
        may submit or the pool is closed."""
        # Keys whose slots are all held by tasks left unfollowed: none will free in this
        # run, so they are passed over (not waited on again and again).
        stranded: set[KeyAccount] = set()
        while True:
            if self._closed:
                raise SlotsClosed()
            live = [a for a in self.submitting() if a not in stranded]
            if not live:
                if stranded:
                    raise SlotsStranded()
                raise NoKeyLeft()
            free = [a for a in live if a.slots.in_flight < a.slots.cap]
            if free:
                best = max(free, key=lambda a: (a.free_share(), -a.bucket.utilization()))
                try:
                    await best.slots.acquire()
                except SlotsStranded:
                    stranded.add(best)
                    continue
                except SlotsClosed:
                    continue  # retired meanwhile: another key
                return best
            won = await self._first_slot(live, stranded)
            if won is not None:
                return won

    async def _first_slot(
        self, live: list[KeyAccount], stranded: set[KeyAccount]
    ) -> KeyAccount | None:
        """Wait on every key's slots at once: the first freed wins, the others are given
        back. None when a key's wait ended without a slot (retired, or added to
        ``stranded``): look again."""
        waits = {asyncio.ensure_future(a.slots.acquire()): a for a in live}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits:
                if not fut.done():
                    fut.cancel()
            for fut in waits:
                with contextlib.suppress(asyncio.CancelledError, SlotsClosed):
                    await fut
        won: KeyAccount | None = None
        for fut, account in waits.items():
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                if won is None:
                    won = account
                else:
                    account.slots.release()  # a second slot in the same turn: not needed
            elif isinstance(exc, SlotsStranded):
                stranded.add(account)
            elif not isinstance(exc, SlotsClosed):
                raise exc
        return won
