"""The seams through which the account's limits may be held elsewhere (issue 33).

With the journal in PostgreSQL, ``--max-concurrent`` and ``--rpm`` describe the
account, and every runner of it takes its share from the database. This layer
knows nothing of databases: the bucket and the slot limit are given a *source*
that implements these small protocols (``pipeline/shared.py``, over
``journal/pg/shared_limits.py``). Without one, nothing changes.

- :class:`TokenSource`: the request tokens. The local :class:`~.bucket.RequestBucket`
  stays the pacer and the priority queue; a grant also needs a token of the source.
  Tokens carry a global ticket (the account's grant number), so that the 429s of
  one overshoot count as one episode across runners, and a token not used within
  :data:`TOKEN_TTL_S` of its grant is dropped (a late token would overshoot a window).
  A source that cannot be reached (the database is away) says so with a
  ``fallback_per_s``: until it answers again the bucket paces this runner alone, at
  no more than that (its fair share), so that polls of paid tasks go on; it asks the
  source again after the grant's wait, in the background.
- :class:`SlotSource`: told when the slot limit is short of permits (a waiter
  queued at the held limit) and when the account refused a submit for its slots;
  it answers by resizing the limit (:meth:`~.slots.ConcurrencyLimit.resize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ASK_S", "MAX_ASK", "TOKEN_TTL_S", "SlotSource", "TokenGrant", "TokenSource"]

#: a token granted by the source and not used within this is dropped, never sent
TOKEN_TTL_S = 0.15
#: a source that granted nothing is asked again after its wait, and never sooner than this
ASK_S = 0.1
#: tokens asked for at once at most
MAX_ASK = 50


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """Tokens granted: how many, the first one's global ticket, and (none granted) the
    seconds until the source expects one (or, unreachable, until it is asked again)."""

    n: int
    first_ticket: int
    wait_s: float
    #: the source cannot be reached: requests a second this runner may send meanwhile
    #: (its fair share of the account's rate), paced locally; None: it answered
    fallback_per_s: float | None = None


class TokenSource(Protocol):
    async def take(self, want: int) -> TokenGrant:
        """Up to ``want`` tokens now (fewer, or none, when the shared budget is short)."""
        ...

    def rate_limited(self, ticket: int, pause_s: float) -> None:
        """A 429 answered the request of global ``ticket`` (0: a request sent on no
        token of the source's, while it was unreachable), on any route: every holder of
        the account should pause ``pause_s`` and, once per episode, slow down. Must not
        block."""
        ...


class SlotSource(Protocol):
    def short(self) -> None:
        """A permit is wanted beyond the slots held. Must not block."""
        ...

    def refused(self) -> None:
        """The account refused a submit for its slots. Must not block."""
        ...
