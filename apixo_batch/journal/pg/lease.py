"""Several runners on one campaign: a runner's lease, its claims, its fence, adoption.

A runner is one ``runners`` row whose ``lease_until`` it renews (:meth:`RunnerLease.renew`).
The rows of ``jobs`` a runner owns live and die with that lease
(``docs/postgresql.md``, "Several runners"; the design in issue 33):

- **Claims** take free ``queued`` rows with ``FOR UPDATE SKIP LOCKED``, so two runners
  never wait on, nor take, the same row.
- **The fence.** No submit is marked unless the lease is live twice over: locally
  (:meth:`RunnerLease.fenced`, counted from when the last good renewal was *sent*,
  because the server's lease runs from its later commit) and in the same UPDATE that
  marks the row ``submitting``, which also requires the row to be the runner's own.
- **Adoption** of a runner whose lease ran out more than ``grace_s`` ago, one at a time:
  its paid rows (``submitted``/``succeeded``) become the adopter's, to follow and land,
  **never to submit again**; its ``submitting`` rows are today's crash doubt and go back
  to the queue flagged ``possibly_duplicated``; its unsent claims are freed. The adopter
  must itself hold a live lease, checked under its own row lock, and the victim's lease
  is re-read by the UPDATE after any lock wait, so two runners that stalled together
  never adopt each other (design bug 3). Lock order: ``accounts`` → ``runners`` →
  ``jobs`` (design bug 2); deadlocks and serialization failures are retried.

Times the runners must agree on are the database's. Every statement takes the time
from :attr:`RunnerLease.db_now` when it gives one (tests, on an injected clock), else
``clock_timestamp()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ...clock import Clock
from ...errors import JournalError
from ...planning.selection import Selection
from ..ledger import Adoption, MarkRefused
from ..rows import SELECT, JobRow
from .executor import PgConn

__all__ = [
    "Adoption",
    "Fenced",
    "NotOwned",
    "RunnerLease",
    "RunnerView",
    "glob_regex",
    "runners_of",
]

#: the database's time, or the injected one (seconds since the epoch)
_NOW = "COALESCE(to_timestamp(%(now)s::float8), clock_timestamp())"
#: the same, as the jobs table keeps times (seconds since the epoch)
_EPOCH = f"extract(epoch FROM {_NOW})"
#: a runner row that may act: not adopted, not stopped, lease not run out
_LIVE = f"adopted_by IS NULL AND NOT stopped AND lease_until > {_NOW}"
#: the same, of the runners row ``r``
_LIVE_R = f"r.adopted_by IS NULL AND NOT r.stopped AND r.lease_until > {_NOW}"
#: states a runner owns work in
_OWNED = "('queued','submitting','submitted','succeeded')"
#: the paid row ``j`` can be polled with a key runner ``%(me)s`` holds (a task is polled
#: with the key that created it; a row of no recorded account, from before, is anyone's)
_KEY_HELD = (
    "(j.key_id IS NULL OR j.key_id IN (SELECT unnest(accounts) FROM runners WHERE id = %(me)s))"
)
#: the meta key of a stray task (``record_task_id``), before its task id
STRAY = "stray:"
#: how often a deadlock or serialization failure is tried again
_RETRIES = 5
#: seconds between tries of a paid task id's write while the database does not answer
_RECORD_PAUSE_S = 0.5


def _gone(pid: int) -> bool:
    """The process ``pid`` of this node no longer exists (a pid in use by anyone is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _char(c: str) -> str:
    """One character as a PostgreSQL regular expression matches it literally (a
    character-entry escape, valid inside and outside a bracket expression)."""
    return c if c.isascii() and c.isalnum() else f"\\U{ord(c):08x}"


def glob_regex(pattern: str) -> str | None:
    """``pattern`` (an ``fnmatch`` glob, as ``--only`` takes) as an anchored PostgreSQL
    regular expression matching the same ids (``fnmatch.fnmatchcase``); None: it can
    match no id (an empty set such as ``[z-a]``)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(_char("["))  # no closing bracket: fnmatch takes it literally
                continue
            stuff, i = pattern[i:j], j + 1
            negate = stuff.startswith("!")
            if negate:
                stuff = stuff[1:]
            items: list[str] = []
            k = 0
            while k < len(stuff):
                if k + 2 < len(stuff) and stuff[k + 1] == "-":
                    lo, hi = stuff[k], stuff[k + 2]
                    if lo <= hi:  # a reversed range matches nothing, as in fnmatch
                        items.append(f"{_char(lo)}-{_char(hi)}")
                    k += 3
                else:
                    items.append(_char(stuff[k]))
                    k += 1
            if not items:
                if not negate:
                    return None
                out.append(".")
                continue
            out.append(("[^" if negate else "[") + "".join(items) + "]")
        else:
            out.append(_char(c))
    return "^" + "".join(out) + "$"


def _picked(selection: Selection, alias: str = "") -> tuple[str, dict[str, Any]]:
    """The SQL condition (and its arguments) of the rows ``selection`` picks by id and
    model (``--only``, ``--model``); empty when it picks every row."""
    where: list[str] = []
    args: dict[str, Any] = {}
    if selection.models:
        where.append(f"{alias}model = ANY(%(sel_models)s)")
        args["sel_models"] = list(selection.models)
    if selection.only:
        globs = [g for g in (glob_regex(p) for p in selection.only) if g is not None]
        where.append(f"{alias}id ~ ANY(%(sel_ids)s)" if globs else "false")
        args["sel_ids"] = globs
    return " AND ".join(where), args


P = ParamSpec("P")
R = TypeVar("R")


def _serial(
    method: Callable[Concatenate[RunnerLease, P], Awaitable[R]],
) -> Callable[Concatenate[RunnerLease, P], Coroutine[Any, Any, R]]:
    """One operation of a runner's session at a time (a transaction is the session's)."""

    @functools.wraps(method)
    async def run(self: RunnerLease, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._lock:
            # Still away: the method's first statement fails on the closed session, and
            # each method says what that means (a mark: fenced; a task id: tried again).
            with contextlib.suppress(psycopg.Error):
                await self._ready()
            return await method(self, *args, **kwargs)

    return run


class Fenced(MarkRefused):
    """This runner's lease is not live (not renewed in time, or taken over), or the
    database does not answer: nothing is sent. Past its term the run stops with exit 75:
    another runner took over."""

    retry = True


class NotOwned(MarkRefused):
    """The row is another runner's (or no longer queued): nothing is sent for it."""


@dataclass(frozen=True)
class RunnerView:
    """One runner of a campaign, as ``status`` shows it."""

    id: int
    host: str
    pid: int
    started_at: datetime
    lease_until: datetime
    live: bool
    adopted_by: int | None
    stopped: bool
    jobs_owned: int


class RunnerLease:
    """One runner of ``campaign`` on ``conn`` (autocommit, its own session)."""

    def __init__(
        self,
        conn: PgConn,
        campaign: str,
        clock: Clock,
        *,
        lease_s: float = 3.0,
        grace_s: float = 2.5,
        margin_s: float = 0.5,
        db_now: Callable[[], float | None] = lambda: None,
        connect: Callable[[], Awaitable[PgConn]] | None = None,
        node: str | None = None,
        selection: Selection | None = None,
    ) -> None:
        if not 0 <= margin_s < lease_s:
            raise ValueError("the fence margin must be shorter than the lease")
        self._conn = conn
        self.campaign = campaign
        self._clock = clock
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.margin_s = margin_s
        self.db_now = db_now
        #: a new session when the last one broke (the database restarted): None, none
        self._connect = connect
        self.node = node
        #: the jobs this runner may submit (``--only``, ``--model``): it claims no other,
        #: and the queued rows it may not take never keep it from leaving
        self.selection = selection or Selection()
        self.id: int | None = None
        #: monotonic time the last renewal that came back was sent
        self._renewed_sent: float | None = None
        #: the lease was taken over (adopted) or the runner stopped: never live again
        self.lost = False
        #: live runners sharing an account with this one, itself included (at the last
        #: renewal): the fair share of slots is the limit over this
        self.live_runners = 1
        # One session: a statement of another task must not land inside a transaction.
        self._lock = asyncio.Lock()

    # -- helpers ------------------------------------------------------------
    async def _ready(self) -> None:
        """A broken session replaced before the next statement (a restarted database)."""
        if not self._conn.closed or self._connect is None:
            return
        old, self._conn = self._conn, await self._connect()
        with contextlib.suppress(psycopg.Error):
            await old.close()

    async def close(self) -> None:
        async with self._lock:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()

    def _args(self, **more: Any) -> dict[str, Any]:
        return {"now": self.db_now(), "me": self.id, "c": self.campaign, **more}

    @property
    def me(self) -> int:
        if self.id is None:
            raise JournalError("the runner is not registered")
        return self.id

    # -- the lease ----------------------------------------------------------
    @_serial
    async def register(
        self, host: str, pid: int, version: str, accounts: Sequence[str] = ()
    ) -> int:
        sent = self._clock.monotonic()
        cur = await self._conn.execute(
            "INSERT INTO runners (campaign, host, pid, version, accounts, started_at, "
            f"lease_until, node) VALUES (%(c)s, %(host)s, %(pid)s, %(v)s, %(accts)s, {_NOW}, "
            f"{_NOW} + make_interval(secs => %(lease)s), %(node)s) RETURNING id",
            self._args(
                host=host,
                pid=pid,
                v=version,
                accts=list(accounts),
                lease=self.lease_s,
                node=self.node,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        self.id = int(row[0])
        self._renewed_sent = sent
        self.live_runners = await self._live_runners()
        return self.id

    async def _live_runners(self) -> int:
        cur = await self._conn.execute(
            "SELECT count(*) FROM runners o, runners m WHERE m.id = %(me)s AND "
            "(o.id = m.id OR (o.accounts && m.accounts AND o.adopted_by IS NULL "
            f"AND NOT o.stopped AND o.lease_until > {_NOW}))",
            self._args(),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 1

    @_serial
    async def renew(self) -> bool:
        """Extend the lease; False once the runner was adopted or stopped (it is then
        fenced for good). A lease that ran out but was not adopted is renewed: a runner
        that was only slow goes on (design: the global stall). Also reads
        :attr:`live_runners`, for the fair share of the account's slots."""
        sent = self._clock.monotonic()
        cur = await self._conn.execute(
            f"UPDATE runners SET lease_until = {_NOW} + make_interval(secs => %(lease)s) "
            "WHERE id = %(me)s AND adopted_by IS NULL AND NOT stopped RETURNING "
            "(SELECT count(*) FROM runners o WHERE o.id <> %(me)s AND o.accounts && "
            "runners.accounts AND o.adopted_by IS NULL AND NOT o.stopped "
            f"AND o.lease_until > {_NOW})",
            self._args(lease=self.lease_s),
        )
        row = await cur.fetchone()
        if row is None:
            self.lost = True
            return False
        self._renewed_sent = sent
        self.live_runners = 1 + int(row[0])
        return True

    def fenced(self) -> bool:
        """True when no submit may leave: the lease was lost, or the last good renewal
        was sent too long ago for the server's lease to be surely live."""
        if self.lost or self._renewed_sent is None:
            return True
        age = self._clock.monotonic() - self._renewed_sent
        return age >= self.lease_s - self.margin_s

    def past_term(self) -> bool:
        """The lease is lost for good, or ran out long enough ago that another runner
        may have taken the work: the run stops (exit 75, nothing lost)."""
        if self.lost:
            return True
        if self._renewed_sent is None:
            return False
        return self._clock.monotonic() - self._renewed_sent >= self.lease_s + self.grace_s

    # -- claims and the submitter's writes ----------------------------------
    @_serial
    async def claim(self, n: int, kind: tuple[str, Any, Any] | None = None) -> list[JobRow]:
        """Up to ``n`` free queued rows of the file, in file order, now this runner's
        (``kind``: only rows of that model, duration and resolution, as jsonb values)."""
        where, more = "", {}
        if kind is not None:
            where = (
                "AND model = %(model)s AND kind_duration IS NOT DISTINCT FROM %(kd)s "
                "AND kind_resolution IS NOT DISTINCT FROM %(kr)s "
            )
            more = {"model": kind[0], "kd": kind[1], "kr": kind[2]}
        # Only rows the selection picks: a row claimed and never sent would be held from
        # every other runner until this one leaves.
        picked, sel_args = _picked(self.selection)
        if picked:
            where += f"AND {picked} "
            more.update(sel_args)
        cur = await self._conn.execute(
            f"UPDATE jobs j SET owner = %(me)s FROM (SELECT campaign AS fc, id AS fid "
            "FROM jobs WHERE campaign = %(c)s AND state = 'queued' AND owner IS NULL "
            f"AND in_file {where}ORDER BY idx, id LIMIT %(n)s FOR UPDATE SKIP LOCKED) f "
            f"WHERE j.campaign = f.fc AND j.id = f.fid RETURNING {_qualified('j')}",
            self._args(n=n, **more),
        )
        rows = [JobRow.from_sql(r) for r in await cur.fetchall()]
        rows.sort(key=lambda r: (r.idx, r.id))
        return rows

    @_serial
    async def release(self, job_ids: Sequence[str]) -> None:
        """Claims never admitted, free again for any runner."""
        await self._conn.execute(
            "UPDATE jobs SET owner = NULL WHERE campaign = %(c)s AND id = ANY(%(ids)s) "
            "AND owner = %(me)s AND state = 'queued'",
            self._args(ids=list(job_ids)),
        )

    @_serial
    async def claim_paid(self, states: Sequence[str], *, mine_too: bool = True) -> list[JobRow]:
        """The rows in ``states`` nobody owns (an earlier single run's, a runner's that
        left, a task adopted by hand), now this runner's, with those it owns already
        (``mine_too``): paid work to follow or land, never to submit. File jobs first, in
        file order."""
        mine = "OR owner = %(me)s " if mine_too else ""
        cur = await self._conn.execute(
            "UPDATE jobs j SET owner = %(me)s WHERE campaign = %(c)s AND state = ANY(%(st)s) "
            f"AND (owner IS NULL {mine}) AND {_KEY_HELD} RETURNING {_qualified('j')}",
            self._args(st=list(states)),
        )
        rows = [JobRow.from_sql(r) for r in await cur.fetchall()]
        rows.sort(key=lambda r: (not r.in_file, r.idx, r.id))
        return rows

    @_serial
    async def mark_submitting(self, job_id: str, attempts: int, key_id: str | None) -> None:
        """The fence: the row becomes ``submitting`` only if it is this runner's, still
        queued, and this runner's lease is live at the server at this moment. Else
        :class:`Fenced` or :class:`NotOwned`, and nothing must be sent."""
        if self.fenced():
            raise Fenced(f"job {job_id!r}: this runner's lease is not live; nothing sent")
        try:
            cur = await self._conn.execute(
                "UPDATE jobs SET state = 'submitting', attempts = %(att)s, key_id = %(key)s, "
                f"updated_at = {_EPOCH} "
                "WHERE campaign = %(c)s AND id = %(id)s AND state = 'queued' "
                f"AND owner = %(me)s AND EXISTS (SELECT 1 FROM runners WHERE id = %(me)s "
                f"AND {_LIVE})",
                self._args(id=job_id, att=attempts, key=key_id),
            )
            if cur.rowcount:
                return
            row = await (
                await self._conn.execute(
                    "SELECT state, owner, attempts FROM jobs WHERE campaign = %(c)s "
                    "AND id = %(id)s",
                    self._args(id=job_id),
                )
            ).fetchone()
        except psycopg.Error as exc:
            # Unknown whether it landed: a later try finds the row marked (just below).
            raise Fenced(
                f"job {job_id!r}: the journal's database did not answer ({type(exc).__name__}); "
                "nothing sent"
            ) from None
        if row is not None and row[1] == self.id:
            if row[0] == "queued":
                raise Fenced(f"job {job_id!r}: this runner's lease ran out; nothing sent")
            if row[0] == "submitting" and row[2] == attempts:
                return  # an earlier try landed, its answer was lost with the connection
        raise NotOwned(f"job {job_id!r} is not this runner's to submit; nothing sent")

    @_serial
    async def record_task_id(
        self,
        job_id: str,
        task_id: str,
        request_type: str,
        attempts: int,
        *,
        key_id: str | None = None,
        key_fp: str | None = None,
        possibly_duplicated: bool = False,
    ) -> bool:
        """The paid task id, durable, history first, in one transaction; never fenced
        away, with the account that created it (``key_id``: every poll, and so adoption,
        needs that key) and the key's fingerprint (``key_fp``, the manifest's). False:
        the row was adopted meanwhile, so the id is kept in ``task_history`` only (a
        stray) and the job is flagged ``possibly_duplicated``."""
        args = self._args(
            id=job_id,
            t=task_id,
            rt=request_type,
            att=attempts,
            key=key_id,
            fp=key_fp,
            dup=possibly_duplicated,
        )
        # Paid: tried again while the database comes back, for as long as the lease may
        # still be this runner's; past that the caller keeps the id in the side file.
        deadline = self._clock.monotonic() + self.lease_s + self.grace_s
        while True:
            try:
                return await self._record(args)
            except psycopg.OperationalError:
                if self._clock.monotonic() >= deadline or self._connect is None:
                    raise
            await asyncio.sleep(_RECORD_PAUSE_S)
            with contextlib.suppress(psycopg.Error):
                await self._ready()

    async def _record(self, args: dict[str, Any]) -> bool:
        # One statement, so one commit (and no BEGIN/COMMIT round trips): the history row,
        # written even when the row is no longer this runner's, and then either the row's
        # task id or, refused, the job flagged and the stray kept for its owner to follow.
        # A refusal in a second transaction would leave, after a crash between the two, a
        # paid task in the history that nobody follows.
        cur = await self._conn.execute(
            "WITH history AS (INSERT INTO task_history (task_id, campaign, job_id, "
            f"input_hash, submitted_at, runner, key_id) SELECT %(t)s, campaign, id, "
            f"input_hash, {_EPOCH}, %(me)s, %(key)s FROM jobs WHERE campaign = %(c)s "
            "AND id = %(id)s ON CONFLICT (task_id) DO NOTHING), "
            "mine AS (UPDATE jobs SET state = 'submitted', task_id = %(t)s, "
            f"request_type = %(rt)s, submitted_at = {_EPOCH}, updated_at = {_EPOCH}, "
            "key_fp = %(fp)s, key_id = %(key)s, "
            "possibly_duplicated = possibly_duplicated OR %(dup)s, fail_code = NULL, "
            "fail_msg = NULL WHERE campaign = %(c)s AND id = %(id)s "
            "AND state = 'submitting' AND owner = %(me)s AND attempts = %(att)s RETURNING 1), "
            # An earlier try committed and its answer was lost: the row holds the id.
            "kept AS (SELECT 1 FROM jobs WHERE campaign = %(c)s AND id = %(id)s "
            "AND task_id = %(t)s), "
            "flag AS (UPDATE jobs SET possibly_duplicated = true WHERE campaign = %(c)s "
            "AND id = %(id)s AND task_id IS DISTINCT FROM %(t)s "
            "AND NOT EXISTS (SELECT 1 FROM mine) RETURNING 1), "
            "stray AS (INSERT INTO meta (campaign, key, value) SELECT %(c)s, %(stray)s, "
            "%(info)s WHERE NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS "
            "(SELECT 1 FROM kept) ON CONFLICT (campaign, key) DO NOTHING RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM mine) OR EXISTS (SELECT 1 FROM kept), "
            "(SELECT count(*) FROM flag) + (SELECT count(*) FROM stray)",
            {
                **args,
                "stray": STRAY + args["t"],
                "info": json.dumps(
                    {"job": args["id"], "key_id": args["key"], "key_fp": args["fp"]}
                ),
            },
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    @_serial
    async def strays(self) -> list[tuple[str, str, str, str | None]]:
        """Stray tasks still to follow that this runner may: (task id, job id, model, key
        fingerprint) of those created with a key it holds, whose job is its own or no live
        runner's."""
        cur = await self._conn.execute(
            "SELECT substr(m.key, length(%(pre)s) + 1), j.id, j.model, "
            "m.value::jsonb ->> 'key_fp' FROM meta m JOIN jobs j ON j.campaign = m.campaign "
            "AND j.id = m.value::jsonb ->> 'job' WHERE m.campaign = %(c)s "
            "AND m.key LIKE %(pre)s || '%%' AND NOT m.value::jsonb ? 'state' "
            "AND (m.value::jsonb ->> 'key_id' IS NULL OR m.value::jsonb ->> 'key_id' IN "
            "(SELECT unnest(accounts) FROM runners WHERE id = %(me)s)) AND (j.owner IS NULL "
            f"OR j.owner = %(me)s OR NOT EXISTS (SELECT 1 FROM runners r WHERE r.id = j.owner "
            f"AND {_LIVE_R})) ORDER BY j.idx, m.key",
            self._args(pre=STRAY),
        )
        return [(str(t), str(j), str(m), fp) for t, j, m, fp in await cur.fetchall()]

    @_serial
    async def settle_stray(
        self, task_id: str, state: str, result_urls: Sequence[str], fail_code: str | None
    ) -> None:
        """A stray task ended: its end and result URLs kept for the manifest."""
        await self._conn.execute(
            "UPDATE meta SET value = (value::jsonb || %(end)s::jsonb)::text "
            "WHERE campaign = %(c)s AND key = %(k)s",
            self._args(
                k=STRAY + task_id,
                end=json.dumps(
                    {"state": state, "result_urls": list(result_urls), "fail_code": fail_code}
                ),
            ),
        )

    @_serial
    async def hand_back(self, job_id: str, possibly_duplicated: bool) -> None:
        """No task id came back: the row is free again (flagged if the send may have
        created a task)."""
        await self._conn.execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, "
            "possibly_duplicated = possibly_duplicated OR %(dup)s, "
            f"updated_at = {_EPOCH} WHERE campaign = %(c)s AND id = %(id)s "
            "AND state IN ('queued','submitting') AND owner = %(me)s",
            self._args(id=job_id, dup=possibly_duplicated),
        )

    # -- adoption -----------------------------------------------------------
    @_serial
    async def adopt(self, skip: Sequence[int] = ()) -> Adoption | None:
        """Adopt one dead runner (lease out for more than ``grace_s``, or on this node with
        its process gone: nothing of it can be on the wire), if any, but none of ``skip``:
        a sweep passes those it adopted already, as a row another transaction holds is
        skipped and leaves its runner adoptable again (the next sweep takes the row)."""
        gone = await self._gone_here()
        for attempt in range(_RETRIES):
            try:
                return await self._adopt_once(gone, skip)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
        return None

    async def _gone_here(self) -> list[int]:
        """Runners of this campaign on this node whose process no longer exists."""
        if self.node is None:
            return []
        rows = await (
            await self._conn.execute(
                "SELECT id, pid FROM runners WHERE campaign = %(c)s AND node = %(node)s "
                "AND id <> %(me)s AND (adopted_by IS NULL OR EXISTS (SELECT 1 FROM jobs j "
                f"WHERE j.owner = runners.id AND j.state IN {_OWNED}))",
                self._args(node=self.node),
            )
        ).fetchall()
        return [int(i) for i, pid in rows if _gone(int(pid))]

    @_serial
    async def next_adoption_s(self) -> float | None:
        """Seconds until the first of the campaign's other live runners may be adopted
        should it renew no more (its lease and grace run out); None: there is none."""
        row = await (
            await self._conn.execute(
                "SELECT extract(epoch FROM min(lease_until) + make_interval(secs => "
                f"%(grace)s) - {_NOW}) FROM runners WHERE campaign = %(c)s AND id <> %(me)s "
                "AND adopted_by IS NULL AND NOT stopped",
                self._args(grace=self.grace_s),
            )
        ).fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    async def _adopt_once(
        self, gone: Sequence[int] = (), skip: Sequence[int] = ()
    ) -> Adoption | None:
        me = self.me
        conn = self._conn
        async with conn.transaction():
            accounts = await (
                await conn.execute("SELECT accounts FROM runners WHERE id = %(me)s", self._args())
            ).fetchone()
            mine: list[str] = list(accounts[0]) if accounts else []
            # Lock order: the account pools first, then runners rows, then jobs rows.
            await conn.execute(
                "SELECT granted FROM accounts WHERE id = ANY(%(accts)s) ORDER BY id FOR UPDATE",
                self._args(accts=mine),
            )
            live = await (
                await conn.execute(
                    f"SELECT id FROM runners WHERE id = %(me)s AND {_LIVE} FOR UPDATE",
                    self._args(),
                )
            ).fetchone()
            if live is None:
                return None  # only a live runner adopts: two stalled ones never swap
            dead_row = await (
                await conn.execute(
                    "UPDATE runners SET adopted_by = %(me)s WHERE id = (SELECT r.id FROM "
                    "runners r WHERE r.id <> %(me)s AND r.id <> ALL(%(skip)s::bigint[]) "
                    "AND r.campaign = %(c)s AND (r.lease_until < "
                    f"{_NOW} - make_interval(secs => %(grace)s) OR r.id = ANY(%(gone)s)) AND "
                    "(r.adopted_by IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.owner = r.id "
                    f"AND j.state IN {_OWNED})) ORDER BY r.id LIMIT 1 FOR UPDATE OF r SKIP "
                    # re-read after the lock wait: a renewal that committed meanwhile wins
                    f"LOCKED) AND (lease_until < {_NOW} - make_interval(secs => %(grace)s) "
                    "OR id = ANY(%(gone)s)) RETURNING id",
                    self._args(grace=self.grace_s, gone=list(gone), skip=list(skip)),
                )
            ).fetchone()
            if dead_row is None:
                return None
            dead = int(dead_row[0])
            args = self._args(dead=dead, accts=mine)
            requeued = (
                await conn.execute(
                    "UPDATE jobs SET state = 'queued', owner = NULL, possibly_duplicated = true "
                    "WHERE (campaign, id) IN (SELECT campaign, id FROM jobs WHERE owner = "
                    "%(dead)s AND state = 'submitting' FOR UPDATE SKIP LOCKED)",
                    args,
                )
            ).rowcount
            released = (
                await conn.execute(
                    "UPDATE jobs SET owner = NULL WHERE (campaign, id) IN (SELECT campaign, id "
                    "FROM jobs WHERE owner = %(dead)s AND state = 'queued' "
                    "FOR UPDATE SKIP LOCKED)",
                    args,
                )
            ).rowcount
            # Paid work: followed, never submitted again; only rows whose key this runner
            # holds (a task is polled with the key that created it).
            cur = await conn.execute(
                f"UPDATE jobs SET owner = %(me)s WHERE (campaign, id) IN (SELECT campaign, id "
                "FROM jobs WHERE owner = %(dead)s AND state IN ('submitted','succeeded') "
                "AND (key_id IS NULL OR key_id = ANY(%(accts)s)) FOR UPDATE SKIP LOCKED) "
                f"RETURNING {SELECT}",
                args,
            )
            followed = [JobRow.from_sql(r) for r in await cur.fetchall()]
            await self._take_slots_of(conn, dead, me, followed)
            followed.sort(key=lambda r: (r.idx, r.id))
            return Adoption(dead, followed, requeued, released)

    async def _take_slots_of(
        self, conn: PgConn, dead: int, me: int, adopted: Sequence[JobRow]
    ) -> None:
        """The dead runner's slots: those of its running tasks stay taken (they still run
        at APIXO): moved to the adopter for the tasks it took over, kept on the dead
        runner for those it still owns (a key the adopter lacks, a row held elsewhere:
        whoever adopts them later moves them); the rest go back to the account's pool."""
        grants = await (
            await conn.execute(
                "SELECT account, held FROM slot_grants WHERE runner = %(dead)s AND held > 0 "
                "ORDER BY account",
                self._args(dead=dead),
            )
        ).fetchall()
        for account, held in grants:
            left = await (
                await conn.execute(
                    "SELECT count(*) FROM jobs WHERE owner = %(dead)s AND state = 'submitted' "
                    "AND key_id = %(a)s",
                    self._args(dead=dead, a=account),
                )
            ).fetchone()
            keep = min(int(held), int(left[0]) if left else 0)
            taken = await (
                await conn.execute(
                    "SELECT count(*) FROM jobs WHERE campaign = %(c)s AND id = ANY(%(ids)s) "
                    "AND state = 'submitted' AND key_id = %(a)s",
                    self._args(a=account, ids=[r.id for r in adopted]),
                )
            ).fetchone()
            moved = min(int(held) - keep, int(taken[0]) if taken else 0)
            await conn.execute(
                "UPDATE accounts SET granted = granted - %(back)s WHERE id = %(a)s",
                self._args(a=account, back=int(held) - keep - moved),
            )
            await conn.execute(
                "UPDATE slot_grants SET held = %(keep)s WHERE runner = %(dead)s "
                "AND account = %(a)s",
                self._args(dead=dead, a=account, keep=keep),
            )
            await conn.execute(
                "INSERT INTO slot_grants (runner, account, held) VALUES (%(me)s, %(a)s, %(n)s) "
                "ON CONFLICT (runner, account) DO UPDATE SET held = slot_grants.held + "
                "EXCLUDED.held",
                self._args(a=account, n=moved),
            )

    # -- the end --------------------------------------------------------------
    @_serial
    async def work_elsewhere(self) -> int:
        """Unfinished rows owned by other runners: while any remain, this runner stays
        (it may have to adopt them), unless told to leave early."""
        row = await (
            await self._conn.execute(
                "SELECT count(*) FROM jobs WHERE campaign = %(c)s AND owner IS NOT NULL "
                f"AND owner <> %(me)s AND state IN {_OWNED}",
                self._args(),
            )
        ).fetchone()
        return int(row[0]) if row else 0

    @_serial
    async def remaining(self) -> tuple[int, int]:
        """(unfinished rows not this runner's that it could come to do, of them those no
        live runner owns: free or a dead runner's). This runner leaves once the first is
        0, or with ``--leave-early`` once the second is. Rows to submit outside its
        selection (``--only``, ``--model``) are not its to do; nor are paid rows of a key
        it lacks (:meth:`foreign_paid`)."""
        picked, sel_args = _picked(self.selection, "j.")
        unsent = "j.state IN ('queued','submitting')"
        mine = f"({unsent} AND {picked or 'true'} OR NOT {unsent} AND {_KEY_HELD})"
        row = await (
            await self._conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE j.owner IS NULL OR NOT EXISTS "
                f"(SELECT 1 FROM runners r WHERE r.id = j.owner AND {_LIVE_R})) "
                "FROM jobs j WHERE j.campaign = %(c)s AND j.state IN "
                f"{_OWNED} AND (j.owner IS NULL OR j.owner <> %(me)s) "
                f"AND (j.in_file OR j.state <> 'queued') AND {mine}",
                self._args(**sel_args),
            )
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @_serial
    async def not_done_unheld(self) -> int:
        """The campaign's jobs not done that no other live runner holds (whatever this
        runner's selection and keys): 0 when all this runner left is other runners'
        work under way."""
        row = await (
            await self._conn.execute(
                "SELECT count(*) FROM jobs j WHERE j.campaign = %(c)s AND j.state <> 'done' "
                "AND (j.in_file OR j.task_id IS NOT NULL) AND NOT (j.state IN "
                f"{_OWNED} AND j.owner <> %(me)s AND EXISTS (SELECT 1 FROM runners r "
                f"WHERE r.id = j.owner AND {_LIVE_R}))",
                self._args(),
            )
        ).fetchone()
        return int(row[0]) if row else 0

    @_serial
    async def foreign_paid(self) -> int:
        """Paid rows no live runner follows whose task was created with a key this runner
        lacks: they wait (owned by their dead runner, or by nobody) for a runner given
        that key; this one cannot poll them and leaves without them."""
        row = await (
            await self._conn.execute(
                "SELECT count(*) FROM jobs j WHERE j.campaign = %(c)s AND j.state IN "
                "('submitted','succeeded') AND NOT "
                f"{_KEY_HELD} AND (j.owner IS NULL OR NOT EXISTS (SELECT 1 FROM runners r "
                f"WHERE r.id = j.owner AND {_LIVE_R}))",
                self._args(),
            )
        ).fetchone()
        return int(row[0]) if row else 0

    @_serial
    async def leave(self) -> None:
        """Unsent claims freed, submits cut off requeued flagged (in doubt), paid rows
        left for any runner to follow or land, slots given back, the runner row stopped
        (lock order: accounts, runners, jobs). Nothing of a runner already adopted is
        touched: its rows are its adopter's."""
        if self.id is None:
            return
        conn = self._conn
        with contextlib.suppress(psycopg.Error):
            async with conn.transaction():
                grants = await (
                    await conn.execute(
                        "SELECT account, held FROM slot_grants WHERE runner = %(me)s "
                        "ORDER BY account",
                        self._args(),
                    )
                ).fetchall()
                for account, held in grants:
                    await conn.execute(
                        "UPDATE accounts SET granted = granted - %(n)s WHERE id = %(a)s",
                        self._args(a=account, n=int(held)),
                    )
                await conn.execute(
                    "UPDATE slot_grants SET held = 0 WHERE runner = %(me)s", self._args()
                )
                mine = await conn.execute(
                    "UPDATE runners SET stopped = true WHERE id = %(me)s AND adopted_by IS NULL",
                    self._args(),
                )
                if mine.rowcount:
                    await conn.execute(
                        "UPDATE jobs SET state = 'queued', owner = NULL, possibly_duplicated "
                        "= true WHERE owner = %(me)s AND state = 'submitting'",
                        self._args(),
                    )
                    await conn.execute(
                        "UPDATE jobs SET owner = NULL WHERE owner = %(me)s AND state IN "
                        "('queued','submitted','succeeded')",
                        self._args(),
                    )
        self.lost = True


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in SELECT.split(","))


async def runners_of(conn: PgConn, campaign: str, now: float | None = None) -> list[RunnerView]:
    """The runners of ``campaign``, oldest first, with the rows each owns (``status``)."""
    cur = await conn.execute(
        "SELECT r.id, r.host, r.pid, r.started_at, r.lease_until, "
        f"(r.adopted_by IS NULL AND NOT r.stopped AND r.lease_until > {_NOW}), "
        "r.adopted_by, r.stopped, (SELECT count(*) FROM jobs j WHERE j.owner = r.id "
        f"AND j.state IN {_OWNED}) FROM runners r WHERE r.campaign = %(c)s ORDER BY r.id",
        {"now": now, "c": campaign},
    )
    return [
        RunnerView(
            id=int(i),
            host=str(h),
            pid=int(p),
            started_at=s,
            lease_until=lu,
            live=bool(lv),
            adopted_by=None if a is None else int(a),
            stopped=bool(st),
            jobs_owned=int(n),
        )
        for i, h, p, s, lu, lv, a, st, n in await cur.fetchall()
    ]
