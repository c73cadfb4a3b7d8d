"""The account's limits held in the database, shared by every runner that holds its key.

- **Slots** (``--max-concurrent``, the tasks in flight): the ``accounts`` row is a pool.
  A runner takes blocks up to its fair share, ``ceil(limit / live runners of the
  account)``, and gives back what it holds beyond that, so a runner that joins gets its
  share as the others renew. The check and the increment are **one UPDATE whose SET
  reads only that row** (a check and an increment split across CTEs over-granted
  under contention: design bug 1); the ``CHECK`` constraint is the backstop.
- **Requests** (``--rpm``): one GCRA row (``account_rate``, UNLOGGED: a server crash
  empties it and it is re-created, costing one burst's pause), changed by one UPDATE.
  Its burst is the local burst less what 0.15 s of drip sends late (design bug 4), and
  a token not used within :data:`TOKEN_TTL_S` of its grant is to be dropped.
- **Congestion control** carries over as SQL on the same row: tickets are global, so a
  429 seen by any runner pauses every runner (``tat`` pushed past the pause) and
  decreases the shared rate once per episode (a 429 on a ticket granted before the
  episode began changes nothing more); the rate probes back up at most once per
  :data:`PROBE_S` for all runners together, never above the ceiling learned last.

Times are the database's unless ``now`` (seconds since the epoch) is given (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .executor import PgConn

__all__ = [
    "CEILING_S",
    "DECREASE",
    "PROBE_S",
    "TOKEN_TTL_S",
    "Grant",
    "RateRow",
    "declare_accounts",
    "ensure_account",
    "fair_share",
    "give_slots",
    "keep_learned_rpm",
    "learned_rpm",
    "live_runners",
    "on_rate_limited",
    "open_session",
    "pool_state",
    "probe_up",
    "reclaim_expired",
    "slots_refused",
    "take_slots",
    "take_tokens",
]

_NOW = "COALESCE(to_timestamp(%(now)s::float8), clock_timestamp())"
#: a granted token older than this is dropped, not sent (it would overshoot a window)
TOKEN_TTL_S = 0.15
#: the rate's factor on a 429 episode (today's RateControl)
DECREASE = 0.8
#: the floor of a decrease, as a share of the top rate
FLOOR_SHARE = 0.05
#: at most one step back up per this many seconds, for all runners together
PROBE_S = 10.0
#: a step back up multiplies the interval by this
PROBE_STEP = 0.95
#: the rpm kept below the account's figure, as a share of it
RPM_MARGIN = 0.005
#: a runner granted nothing asks again after this at the soonest (apixo.limits.shared.ASK_S)
ASK_S = 0.1


@dataclass(frozen=True)
class RateRow:
    """The figures of an account's GCRA row for ``rpm`` and a local ``burst``."""

    interval_s: float
    tau_s: float
    row_burst: int

    @classmethod
    def of(cls, rpm: float, burst: float) -> RateRow:
        drip = max(1e-6, (rpm - burst - RPM_MARGIN * rpm) / 60.0)
        # Design rule 1 (the burst pays for tokens sent up to TOKEN_TTL_S late), but never
        # under one ask's drip: the engine's local burst is only 0.1 s of drip (the
        # experiment's was 0.3 s), and a row holding less than what drips while a runner
        # waits ASK_S would lose the rest, capping the rate near one token per ask.
        row_burst = max(1, math.floor(burst - drip * TOKEN_TTL_S), math.ceil(drip * ASK_S))
        interval = 1.0 / drip
        return cls(interval_s=interval, tau_s=(row_burst - 1) * interval, row_burst=row_burst)


@dataclass(frozen=True)
class Grant:
    """Tokens granted: how many, the first one's ticket, and the wait before asking
    again when none was."""

    n: int
    first_ticket: int
    wait_s: float


#: a transaction of a lazy session that must survive a server crash
_DURABLE = "SET LOCAL synchronous_commit = on"


async def ensure_account(
    conn: PgConn, account: str, *, slots: int, rpm: float, burst: float, now: float | None = None
) -> None:
    """The account's rows, created by the first runner; a later runner's figures update
    the slot limit (never below what is granted) and the top rate."""
    rate = RateRow.of(rpm, burst)
    args = {
        "a": account,
        "slots": slots,
        "now": now,
        "iv": rate.interval_s,
        "tau": rate.tau_s,
    }
    async with conn.transaction():
        # Durable even on the limits' lazy session: without its row, no slot is granted.
        await conn.execute(_DURABLE)
        await conn.execute(
            "INSERT INTO accounts (id, slots_limit) VALUES (%(a)s, %(slots)s) "
            "ON CONFLICT (id) DO UPDATE SET slots_limit = greatest(EXCLUDED.slots_limit, "
            "accounts.granted)",
            args,
        )
        await conn.execute(
            "INSERT INTO account_rate (account, tat, interval_s, top_interval_s, tau_s) "
            f"VALUES (%(a)s, {_NOW}, %(iv)s, %(iv)s, %(tau)s) ON CONFLICT (account) DO UPDATE "
            "SET top_interval_s = EXCLUDED.top_interval_s, tau_s = EXCLUDED.tau_s, "
            "interval_s = greatest(account_rate.interval_s, EXCLUDED.top_interval_s)",
            args,
        )


def fair_share(limit: int, live_runners: int) -> int:
    """A runner's share of the account's slots."""
    return math.ceil(limit / max(1, live_runners))


async def take_slots(conn: PgConn, runner: int, account: str, want: int) -> int:
    """Up to ``want`` slots from the pool (fewer when it is short), now this runner's."""
    cur = await conn.execute(
        "WITH g AS (UPDATE accounts SET "
        "last_n = greatest(0, least(%(want)s, slots_limit - granted)), "
        "granted = granted + greatest(0, least(%(want)s, slots_limit - granted)) "
        "WHERE id = %(a)s RETURNING last_n) "
        "INSERT INTO slot_grants (runner, account, held) SELECT %(me)s, %(a)s, last_n FROM g "
        "ON CONFLICT (runner, account) DO UPDATE SET held = slot_grants.held + EXCLUDED.held "
        "RETURNING (SELECT last_n FROM g)",
        {"want": want, "a": account, "me": runner},
    )
    row = await cur.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


async def give_slots(conn: PgConn, runner: int, account: str, n: int) -> int:
    """Give back up to ``n`` held slots (lock order: the pool row first)."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT held FROM accounts a JOIN slot_grants g ON g.account = a.id "
            "WHERE a.id = %(a)s AND g.runner = %(me)s FOR UPDATE",
            {"a": account, "me": runner},
        )
        row = await cur.fetchone()
        back = min(n, int(row[0])) if row else 0
        if back > 0:
            await conn.execute(
                "UPDATE accounts SET granted = granted - %(n)s WHERE id = %(a)s",
                {"a": account, "n": back},
            )
            await conn.execute(
                "UPDATE slot_grants SET held = held - %(n)s WHERE runner = %(me)s "
                "AND account = %(a)s",
                {"a": account, "n": back, "me": runner},
            )
        return back


_AVAILABLE = (
    "greatest(0, least(%(want)s, floor((extract(epoch FROM c.now - greatest(r.tat, c.now)) "
    "+ r.tau_s) / r.interval_s)::bigint + 1))"
)


async def take_tokens(conn: PgConn, account: str, want: int, *, now: float | None = None) -> Grant:
    """Up to ``want`` request tokens of the account's shared bucket (GCRA), in one UPDATE."""
    cur = await conn.execute(
        f"UPDATE account_rate r SET last_n = {_AVAILABLE}, "
        f"granted = r.granted + {_AVAILABLE}, "
        f"tat = greatest(r.tat, c.now) + make_interval(secs => {_AVAILABLE} * r.interval_s), "
        f"last_wait = CASE WHEN {_AVAILABLE} = 0 THEN greatest(0, extract(epoch FROM "
        "greatest(r.tat, c.now) - c.now) - r.tau_s) ELSE 0 END "
        f"FROM (SELECT {_NOW} AS now) c WHERE r.account = %(a)s "
        "RETURNING r.last_n, r.granted - r.last_n + 1, r.last_wait",
        {"a": account, "want": want, "now": now},
    )
    row = await cur.fetchone()
    if row is None:
        return Grant(0, 0, 0.0)
    return Grant(int(row[0]), int(row[1]), float(row[2]))


async def on_rate_limited(
    conn: PgConn, account: str, ticket: int, retry_after_s: float, *, now: float | None = None
) -> bool:
    """A 429 on the request of ``ticket``: every runner pauses for ``retry_after_s`` (the
    burst gone after it too), and the shared rate decreases if this 429 opens a new
    episode (its ticket was granted after the last episode's end). True when it did."""
    args = {
        "a": account,
        "t": ticket,
        "ra": retry_after_s,
        "dec": DECREASE,
        "floor": FLOOR_SHARE,
        "probe": PROBE_S,
        "now": now,
    }
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT %(t)s > episode_end FROM account_rate WHERE account = %(a)s FOR UPDATE", args
        )
        row = await cur.fetchone()
        if row is None:
            return False
        opened = bool(row[0])
        pause = f"tat = greatest(tat, {_NOW} + make_interval(secs => %(ra)s + tau_s))"
        if not opened:
            await conn.execute(f"UPDATE account_rate SET {pause} WHERE account = %(a)s", args)
            return False
        await conn.execute(
            f"UPDATE account_rate SET {pause}, "
            "interval_s = least(interval_s / %(dec)s, top_interval_s / %(floor)s), "
            f"ceiling_interval_s = interval_s, ceiling_at = {_NOW}, "
            f"next_probe = {_NOW} + make_interval(secs => %(probe)s), episode_end = granted "
            "WHERE account = %(a)s",
            args,
        )
        return True


#: how long the rate learned at a 429 bounds the probes
CEILING_S = 60.0


async def probe_up(conn: PgConn, account: str, *, now: float | None = None) -> bool:
    """One step back toward the top rate, at most once per :data:`PROBE_S` for all
    runners, and for :data:`CEILING_S` after a 429 never past the rate it came at
    (True when it stepped)."""
    cur = await conn.execute(
        "UPDATE account_rate SET interval_s = greatest(top_interval_s, interval_s * %(step)s, "
        f"CASE WHEN ceiling_at > {_NOW} - make_interval(secs => %(ceil)s) "
        "THEN ceiling_interval_s ELSE 0 END), "
        f"next_probe = {_NOW} + make_interval(secs => %(probe)s) "
        "WHERE account = %(a)s AND interval_s > top_interval_s "
        f"AND (next_probe IS NULL OR next_probe <= {_NOW})",
        {"a": account, "step": PROBE_STEP, "probe": PROBE_S, "ceil": CEILING_S, "now": now},
    )
    return cur.rowcount > 0


async def pool_state(conn: PgConn, runner: int, account: str) -> tuple[int, int]:
    """The account's slot limit now (lowered by slot 429s), and the slots ``runner``
    holds (an adopter may have moved some to itself, a refusal taken some back)."""
    cur = await conn.execute(
        "SELECT a.slots_limit, coalesce((SELECT held FROM slot_grants g WHERE g.account = a.id "
        "AND g.runner = %(me)s), 0) FROM accounts a WHERE a.id = %(a)s",
        {"a": account, "me": runner},
    )
    row = await cur.fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


async def slots_refused(conn: PgConn, runner: int, account: str, in_use: int) -> int:
    """The account refused a submit of ``runner`` for its slots while it had ``in_use``
    tasks: what it holds beyond them goes back, and the account's limit comes down to
    what is granted, at least 1 (every runner's fair share shrinks with it; each gives
    back what it holds beyond at its next heartbeat). The new limit."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT g.held FROM accounts a LEFT JOIN slot_grants g ON g.account = a.id "
            "AND g.runner = %(me)s WHERE a.id = %(a)s FOR UPDATE OF a",
            {"a": account, "me": runner},
        )
        row = await cur.fetchone()
        if row is None:
            return 0
        back = max(0, int(row[0] or 0) - max(0, in_use))
        args = {"a": account, "me": runner, "n": back}
        if back:
            await conn.execute(
                "UPDATE slot_grants SET held = held - %(n)s WHERE runner = %(me)s "
                "AND account = %(a)s",
                args,
            )
        cur = await conn.execute(
            "UPDATE accounts SET granted = granted - %(n)s, "
            "slots_limit = greatest(1, granted - %(n)s) WHERE id = %(a)s RETURNING slots_limit",
            args,
        )
        got = await cur.fetchone()
        return int(got[0]) if got else 0


async def learned_rpm(conn: PgConn, account: str) -> float | None:
    """The account's rate as the last run that learned one left it (shared by every
    runner and campaign of the account)."""
    cur = await conn.execute("SELECT learned_rpm FROM accounts WHERE id = %(a)s", {"a": account})
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def keep_learned_rpm(conn: PgConn, account: str, rpm: float | None) -> None:
    """Keep what a run learned of the account's rate (None: it met no limit)."""
    await conn.execute(
        "UPDATE accounts SET learned_rpm = %(r)s WHERE id = %(a)s", {"a": account, "r": rpm}
    )


async def open_session(url: str, *, lazy: bool = False) -> PgConn:
    """A session of its own for the limits' statements (autocommit): a transaction of
    the journal's must never hold a limit's row, nor wait behind one. ``lazy``: its
    commits do not wait for the WAL's flush (design 3.3: slot grants and the bucket
    row; a server crash loses at most the last few, like transactions that aborted:
    the account's rows are made again, grants re-shared at the next heartbeat)."""
    import psycopg

    from .executor import database_failed

    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        if lazy:
            await conn.execute("SET synchronous_commit = off")
        return conn
    except psycopg.Error as exc:
        raise database_failed(url, exc, "cannot be reached") from None


async def live_runners(
    conn: PgConn, runner: int, accounts: list[str], *, now: float | None = None
) -> int:
    """Live runners sharing an account with ``runner`` (itself included): the fair
    share's divisor. A runner registered without its accounts counts by campaign."""
    cur = await conn.execute(
        "SELECT count(*) FROM runners o, runners m WHERE m.id = %(me)s AND (o.id = m.id OR "
        "((o.accounts && %(accts)s::text[] OR (cardinality(o.accounts) = 0 "
        "AND o.campaign = m.campaign)) AND o.adopted_by IS NULL AND NOT o.stopped "
        f"AND o.lease_until > {_NOW}))",
        {"me": runner, "accts": accounts, "now": now},
    )
    row = await cur.fetchone()
    return max(1, int(row[0])) if row else 1


async def reclaim_expired(
    conn: PgConn, runner: int, accounts: list[str], *, now: float | None = None
) -> int:
    """The slots held by runners of these accounts whose lease has run out, back to the
    pools; how many. Only for a runner that knows it is the one live runner (the
    campaign's run lock): with several, adoption moves a dead runner's slots."""
    cur = await conn.execute(
        "SELECT g.runner, g.account, g.held FROM slot_grants g JOIN runners r ON r.id = g.runner "
        f"WHERE g.held > 0 AND g.account = ANY(%(accts)s) AND r.id <> %(me)s AND "
        f"(r.lease_until <= {_NOW} OR r.stopped OR r.adopted_by IS NOT NULL) "
        "ORDER BY g.account, g.runner",
        {"me": runner, "accts": accounts, "now": now},
    )
    back = 0
    for dead, account, held in await cur.fetchall():
        back += await give_slots(conn, int(dead), str(account), int(held))
    return back


async def declare_accounts(conn: PgConn, runner: int, accounts: list[str]) -> None:
    """Record the accounts ``runner`` holds keys of: fair shares count the live runners
    of an account, and adoption locks their pools first (the lock order)."""
    async with conn.transaction():
        # Durable (once a run): adoption's lock order and the fair share rest on it.
        await conn.execute(_DURABLE)
        await conn.execute(
            "UPDATE runners SET accounts = ARRAY(SELECT DISTINCT a FROM "
            "unnest(accounts || %(accts)s::text[]) a ORDER BY a) WHERE id = %(me)s",
            {"me": runner, "accts": accounts},
        )
