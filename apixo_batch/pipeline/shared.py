"""The account's limits shared by every runner of a PostgreSQL journal (issue 33).

With ``--state postgresql://…``, ``--max-concurrent`` and ``--rpm`` describe the
*account*, held in its rows (``journal/pg/shared_limits.py``), so that N runners
never exceed them together. Each key of the run (:class:`~.keypool.KeyAccount`)
gets an :class:`AccountShare`, which is the token source of its request bucket
and the slot source of its slot limit (``apixo/limits/shared.py``):

- **slots**: the runner holds a number of the account's slots; its
  :class:`~..apixo.limits.ConcurrencyLimit` uses at most those (``resize``),
  keeping its slow start and learned window. When admission waits at the held
  number, a block is taken, up to the fair share ``ceil(limit / live runners)``;
  at each heartbeat what is held beyond the fair share (and, once admission has
  ended, what no task uses) goes back; everything goes back when the run ends.
  A submit refused for slots gives back what this runner does not use and lowers
  the account's limit to what is granted: every fair share shrinks.
- **requests**: every grant of the local bucket also takes a token of the shared
  GCRA row, asked for as many callers as wait; a 429 seen here pauses every
  runner and, once per episode, slows the shared rate; the heartbeat probes it
  back up (at most once per ``PROBE_S`` for all runners together). While the
  database cannot be reached the bucket paces this runner alone at its fair share
  (``rpm / live runners`` last seen, or less: what it was granted of late), so polls
  and downloads of paid tasks go on; it goes back to the row once the row answers.

The runner is the journal's (``PgLedger.runner``, several runners on one campaign)
when it has one, else one registered here, on its own session, renewed by the
heartbeat. All the statements here run on a session of their own, one at a time.
Without a PostgreSQL journal none of this exists: the SQLite path is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import socket
from collections.abc import Callable, Sequence

import psycopg

from ..apixo.limits.shared import ASK_S, TokenGrant
from ..clock import Clock
from ..journal import Ledger
from ..journal.pg import shared_limits as sql
from ..journal.pg.executor import DatabaseFailed, PgConn
from ..journal.pg.lease import RunnerLease
from ..journal.pg.ledger import PgLedger
from .keypool import KeyAccount, KeyPool

__all__ = ["BLOCK", "HEARTBEAT_S", "AccountShare", "SharedLimits", "share_limits"]

#: what a database that cannot be reached raises (the session is opened again later)
_DOWN = (psycopg.Error, OSError, DatabaseFailed)
#: slots taken at once at least, when admission waits at the number held
BLOCK = 10
#: seconds between two heartbeats: fair shares, give-backs, the rate's probe, the lease
HEARTBEAT_S = 1.0


class AccountShare:
    """One account's share: the token source of its bucket, the slot source of its
    slots (both only note what happened; :class:`SharedLimits` talks to the database)."""

    def __init__(self, owner: SharedLimits, key: KeyAccount, rpm: int) -> None:
        self._owner = owner
        self.key = key
        self.account = key.account
        self.rpm = rpm
        #: slots this runner holds of the account
        self.held = 0
        #: the account's slot limit as last read
        self.limit = key.slots.top
        self.reports: list[tuple[int, float]] = []
        self.refusals = 0
        #: tokens asked for and granted, and the statements that asked
        self.asked = 0
        self.granted = 0

    async def take(self, want: int) -> TokenGrant:
        grant = await self._owner.tokens(self, want)
        self.asked += 1
        self.granted += grant.n
        return grant

    def rate_limited(self, ticket: int, pause_s: float) -> None:
        self.reports.append((ticket, pause_s))
        self._owner.wake()

    def short(self) -> None:
        self._owner.wake()

    def refused(self) -> None:
        self.refusals += 1
        self._owner.wake()


class SharedLimits:
    """This runner's shares of its accounts' limits, and the task that keeps them."""

    def __init__(
        self,
        url: str,
        conn: PgConn,
        runner: RunnerLease,
        keys: Sequence[tuple[KeyAccount, int]],
        clock: Clock,
        *,
        lease_conn: PgConn | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        db_now: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._url = url
        self._conn = conn
        #: the session of a runner registered here (None: the journal's runner)
        self._lease_conn = lease_conn
        self.runner = runner
        self._own_lease = lease_conn is not None
        self._clock = clock
        self.heartbeat_s = heartbeat_s
        #: seconds since the epoch for every statement (tests on an injected clock)
        self._db_now = db_now
        self.shares = [AccountShare(self, key, rpm) for key, rpm in keys]
        self._accounts = sorted({s.account for s in self.shares})
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_beat = 0.0
        self.live = 1

    def _now(self) -> float | None:
        return self._db_now()

    async def _session(self) -> PgConn:
        """The limits' session, opened again if the server dropped it (a restart)."""
        if self._conn.closed or self._conn.broken:
            self._conn = await sql.open_session(self._url, lazy=True)
        return self._conn

    # -- the sources' calls ---------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def tokens(self, share: AccountShare, want: int) -> TokenGrant:
        """Tokens of the shared row. While the database cannot be reached, none, but this
        runner's fair share of the row's top rate (``rpm / live runners`` as last seen):
        its bucket paces itself at that (or less, what it was granted of late), so that
        polls of paid tasks go on while submits wait behind the fence; every runner
        doing the same keeps the account's total under its rpm."""
        try:
            async with self._lock:
                conn = await self._session()
                grant = await sql.take_tokens(conn, share.account, want, now=self._now())
                if grant.first_ticket == 0:
                    # The row is gone (UNLOGGED: emptied by a server crash): made again.
                    await self._ensure(share)
                    grant = await sql.take_tokens(conn, share.account, want, now=self._now())
        except _DOWN:
            return TokenGrant(0, 0, self.heartbeat_s, fallback_per_s=self.fair_per_s(share))
        return TokenGrant(grant.n, grant.first_ticket, max(grant.wait_s, ASK_S))

    def fair_per_s(self, share: AccountShare) -> float:
        """Requests a second that are this runner's share of the account's top rate."""
        row = sql.RateRow.of(share.rpm, share.key.bucket.burst)
        return 1.0 / row.interval_s / max(1, self.live)

    # -- the lifetime -----------------------------------------------------------
    async def start(self) -> None:
        """The accounts' rows, the first grants, the sources attached, the heartbeat on."""
        async with self._lock:
            for share in self.shares:
                await self._ensure(share)
            await sql.declare_accounts(self._conn, self.runner.me, self._accounts)
            with contextlib.suppress(psycopg.errors.DeadlockDetected):
                # An adoption of this runner's, under way, holds the pools (the heartbeat
                # takes the first grants then).
                await self._beat()
        for share in self.shares:
            share.key.slots.source = share
            share.key.bucket.share(share)
        self._task = asyncio.ensure_future(self._keep())

    async def _ensure(self, share: AccountShare) -> None:
        await sql.ensure_account(
            self._conn,
            share.account,
            slots=share.key.slots.top,
            rpm=share.rpm,
            burst=share.key.bucket.burst,
            now=self._now(),
        )

    async def close(self) -> None:
        """The heartbeat stopped, every slot held given back (and the runner row left,
        if it is this module's)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*_DOWN):
            async with self._lock:
                conn = await self._session()
                for share in self.shares:
                    if share.held:
                        share.held -= await sql.give_slots(
                            conn, self.runner.me, share.account, share.held
                        )
        if self._lease_conn is not None:
            with contextlib.suppress(*_DOWN):
                await self.runner.leave()
            await self._lease_conn.close()
        await self._conn.close()

    async def _keep(self) -> None:
        """Answer the sources at once; beat every ``heartbeat_s``. A database that fails
        a statement is tried again at the next beat: meanwhile the runner keeps what it
        holds, and its bucket asks again as it always does."""
        while True:
            await self._wait()
            try:
                if self._clock.monotonic() >= self._next_beat:
                    await self.beat()
                else:
                    async with self._lock:
                        await self._session()
                        await self._answer()
            except _DOWN:
                # An outage: the next beat tries again.
                self._next_beat = self._clock.monotonic() + self.heartbeat_s

    async def _wait(self) -> None:
        delay = self._next_beat - self._clock.monotonic()
        if delay <= 0 or self._wake.is_set():
            self._wake.clear()
            return
        woken = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()
        self._wake.clear()

    async def _answer(self) -> None:
        """The 429s to tell, the refusals to share, the slots admission waits for."""
        me, now = self.runner.me, self._now()
        for share in self.shares:
            reports, share.reports = share.reports, []
            for ticket, pause in reports:
                await sql.on_rate_limited(self._conn, share.account, ticket, pause, now=now)
            if share.refusals:
                share.refusals = 0
                slots = share.key.slots
                share.limit = await sql.slots_refused(
                    self._conn, me, share.account, slots.in_flight
                )
                share.held = min(share.held, max(0, slots.in_flight))
                slots.resize(share.held)
            await self._top_up(share)

    async def beat(self) -> None:
        """One heartbeat now, after what the sources noted (the loop's step)."""
        async with self._lock:
            await self._session()
            await self._answer()
            await self._beat()

    async def _top_up(self, share: AccountShare) -> None:
        slots = share.key.slots
        fair = sql.fair_share(share.limit, self.live)
        if not slots.short or share.held >= fair:
            return
        want = min(fair - share.held, max(BLOCK, slots.waiting))
        share.held += await sql.take_slots(self._conn, self.runner.me, share.account, want)
        slots.resize(min(share.held, fair))

    async def _beat(self) -> None:
        """Renew (an own lease), read the fair shares, give back what is beyond them or
        unused once admission ended, take up to them, probe the rate back up."""
        self._next_beat = self._clock.monotonic() + self.heartbeat_s
        if self._own_lease:
            await self.runner.renew()
        me, now = self.runner.me, self._now()
        if self._own_lease:
            # The campaign's run lock makes this the one live runner of the journal: a
            # runner row whose lease ran out is a run that died holding slots.
            await sql.reclaim_expired(self._conn, me, self._accounts, now=now)
        self.live = await sql.live_runners(self._conn, me, self._accounts, now=now)
        for share in self.shares:
            slots = share.key.slots
            share.limit, share.held = await sql.pool_state(self._conn, me, share.account)
            fair = sql.fair_share(share.limit, self.live)
            keep = max(fair, slots.in_flight) if not slots.closed else slots.in_flight
            if share.held > keep:
                share.held -= await sql.give_slots(self._conn, me, share.account, share.held - keep)
            elif share.held < slots.in_flight:
                # Tasks of an earlier run (or of an adopted runner) hold the account's
                # slots: the pool must count them.
                want = slots.in_flight - share.held
                share.held += await sql.take_slots(self._conn, me, share.account, want)
            elif share.held < fair and not slots.closed:
                want = fair - share.held if share.held == 0 else min(fair - share.held, BLOCK)
                if share.held == 0 or slots.short:
                    share.held += await sql.take_slots(self._conn, me, share.account, want)
            slots.resize(min(share.held, fair))
            if share.key.bucket.is_tight():
                await sql.probe_up(self._conn, share.account, now=now)


async def share_limits(
    url: str,
    ledger: Ledger,
    pool: KeyPool,
    clock: Clock,
    *,
    rpm: int,
    heartbeat_s: float = HEARTBEAT_S,
) -> SharedLimits:
    """This runner's shares of its accounts' limits, started (close it at the run's end).

    The runner is the journal's when it registers one; else one is registered here."""
    if not isinstance(ledger, PgLedger):
        raise TypeError("the limits are shared through a PostgreSQL journal only")
    conn = await sql.open_session(url, lazy=True)
    lease_conn: PgConn | None = None
    try:
        # Several runners on one campaign: the journal registered this runner.
        runner = ledger.runner
        if runner is None:
            lease_conn = await sql.open_session(url)
            runner = RunnerLease(lease_conn, ledger.campaign_id, clock)
            await runner.register(
                socket.gethostname(),
                os.getpid(),
                _version(),
                sorted({a.account for a in pool.accounts}),
            )
        keys = [(a, a.spec.rpm or rpm) for a in pool.accounts]
        limits = SharedLimits(
            url, conn, runner, keys, clock, lease_conn=lease_conn, heartbeat_s=heartbeat_s
        )
        await limits.start()
    except BaseException:
        await conn.close()
        if lease_conn is not None:
            await lease_conn.close()
        raise
    return limits


def _version() -> str:
    try:
        return importlib.metadata.version("apixo-batch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
