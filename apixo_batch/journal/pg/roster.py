"""The runners of a campaign as operators see them: ``status``, and the hosts they run on.

Read-only views of the ``runners`` table (:mod:`.lease` writes it). A runner's lease
is told against the database's clock, the one all runners agree on: time left while
it is live, time since it ran out otherwise. The rows each runner owns are counted by
state, so that ``status`` shows who follows what, and which rows a dead runner still
holds (a key nobody alive holds keeps them until a runner with it joins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .executor import PgConn
from .schema import has_table

__all__ = ["RunnerState", "first_campaign", "hosts_of", "roster"]

#: the database's time, or the injected one (seconds since the epoch)
_NOW = "COALESCE(to_timestamp(%(now)s::float8), clock_timestamp())"
#: states a runner owns work in, in the order status tells them
OWNED_STATES = ("queued", "submitting", "submitted", "succeeded")


@dataclass(frozen=True)
class RunnerState:
    """One runner of a campaign, at one moment of the database's clock."""

    id: int
    host: str
    pid: int
    version: str
    started_at: datetime
    #: seconds the lease still runs (negative: how long ago it ran out)
    lease_left_s: float
    #: not adopted, not stopped, lease not run out
    live: bool
    #: left on its own (its work done, or stopped cleanly)
    stopped: bool
    #: the runner that took its rows over, if one did
    adopted_by: int | None
    #: rows it owns, by state (only the states it can own)
    owned: dict[str, int] = field(default_factory=dict)

    def lease(self) -> str:
        """The lease in words: ``"12 s left"``, ``"lost 40 s ago"``."""
        if self.lease_left_s >= 0:
            return f"{_seconds(self.lease_left_s)} left"
        return f"lost {_seconds(-self.lease_left_s)} ago"

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started_at": self.started_at.isoformat(),
            "live": self.live,
            "stopped": self.stopped,
            "adopted_by": self.adopted_by,
            "lease_left_s": round(self.lease_left_s, 1),
            "jobs": dict(self.owned),
        }


def _seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.0f} h"


async def first_campaign(conn: PgConn) -> str | None:
    """The campaign the database's read commands tell (the first made, as
    :func:`~.transfer.export_campaign` copies); None when it holds none yet."""
    if not await has_table(conn, "campaigns"):
        return None
    cur = await conn.execute("SELECT id FROM campaigns ORDER BY created_at, id LIMIT 1")
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def roster(conn: PgConn, campaign: str, now: float | None = None) -> list[RunnerState]:
    """Every runner that has joined ``campaign``, oldest first, with the rows it owns."""
    cur = await conn.execute(
        "SELECT r.id, r.host, r.pid, r.version, r.started_at, "
        f"extract(epoch FROM r.lease_until - {_NOW})::float8, "
        f"(r.adopted_by IS NULL AND NOT r.stopped AND r.lease_until > {_NOW}), "
        "r.stopped, r.adopted_by FROM runners r WHERE r.campaign = %(c)s ORDER BY r.id",
        {"now": now, "c": campaign},
    )
    runners = await cur.fetchall()
    cur = await conn.execute(
        "SELECT owner, state, count(*) FROM jobs WHERE campaign = %(c)s AND owner IS NOT NULL "
        "AND state = ANY(%(owned)s) GROUP BY owner, state",
        {"c": campaign, "owned": list(OWNED_STATES)},
    )
    owned: dict[int, dict[str, int]] = {}
    for owner, state, n in await cur.fetchall():
        owned.setdefault(int(owner), {})[str(state)] = int(n)
    return [
        RunnerState(
            id=int(i),
            host=str(host),
            pid=int(pid),
            version=str(version),
            started_at=started,
            lease_left_s=float(left),
            live=bool(live),
            stopped=bool(stopped),
            adopted_by=None if by is None else int(by),
            owned={s: owned[int(i)][s] for s in OWNED_STATES if s in owned.get(int(i), {})},
        )
        for i, host, pid, version, started, left, live, stopped, by in runners
    ]


async def hosts_of(conn: PgConn, campaign: str, now: float | None = None) -> list[tuple[int, str]]:
    """(runner, host) of the live runners of ``campaign``, oldest first."""
    cur = await conn.execute(
        "SELECT id, host FROM runners WHERE campaign = %(c)s AND adopted_by IS NULL "
        f"AND NOT stopped AND lease_until > {_NOW} ORDER BY id",
        {"now": now, "c": campaign},
    )
    return [(int(i), str(h)) for i, h in await cur.fetchall()]
