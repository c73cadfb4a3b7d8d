"""Outputs shared by several runners: file names reserved, uploads owned, hosts told.

Three things one runner could keep to itself and several cannot:

- **File names.** One runner reads who holds which name once and keeps it up to date
  as its own files land (:class:`~..naming.FileRegistry`). A name another runner
  lands meanwhile (job ``a``'s second result ``a-2.mp4``) would be invisible to it,
  and a job ``a-2`` could land on it. :class:`SharedNames` reserves a job's names in
  ``file_names`` before it lands them, first come first served (the primary key is
  the case-folded name): the second runner finds the name held and lands nothing
  over it. The reservations are part of what every runner reads as held
  (:func:`reserved_rows`, in ``file_owners`` and the check of names before submits).
  A reservation whose job no longer holds the name (gone from the file, never landed
  there) is stale and taken over.
- **Multipart uploads.** The S3 start-up sweep aborts the incomplete uploads a killed
  run left. With several runners most incomplete uploads are live ones of the
  others: :class:`PgUploads` records each upload with its runner, and the sweep
  aborts only those of runners whose lease is gone, and unrecorded ones begun before
  every live runner started.
- **Hosts.** A local ``--out`` is one machine's folder: :func:`other_host` names a
  live runner of the campaign on another host, and :func:`local_out_refused` the line
  that stops a runner once a second host joins (unless the folder is a shared mount).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ..naming import name_owners
from ..rows import OUTPUT_COLUMNS, OutputRow, output_row
from .executor import Op, PgConn

__all__ = [
    "Ops",
    "PgUploads",
    "SharedNames",
    "local_out_refused",
    "other_host",
    "reserved_rows",
]

T = TypeVar("T")

#: the database's time, or the injected one (seconds since the epoch)
_NOW = "COALESCE(to_timestamp(%(now)s::float8), clock_timestamp())"
#: a job in these states may still land any name it reserved
_MAY_LAND = frozenset({"submitting", "submitted", "succeeded"})
#: a holder's row, as :func:`~..rows.output_row` takes it (no result count: not needed)
_HOLDER = ", ".join(f"j.{c.strip()}" for c in OUTPUT_COLUMNS.split(","))


class Ops(Protocol):
    """Where operations run: a ledger's :class:`~.executor.PgExecutor` in a run."""

    def read(self, op: Op[T]) -> Awaitable[T]: ...

    def write(self, op: Op[T], *, durable: bool = True, alone: bool = False) -> Awaitable[T]: ...


def _row(v: Sequence[Any]) -> OutputRow:
    """A job's :data:`OutputRow` from its :data:`OUTPUT_COLUMNS` (no result count)."""
    return output_row(v[0], v[1], v[2], v[3], v[4], v[5], v[6], None)


def _holds(name_cf: str, holder: Sequence[Any] | None) -> bool:
    """Whether the job of ``holder`` (its :data:`OUTPUT_COLUMNS`, None: no such job)
    still holds the name it reserved: on its way to land, or holding it as the job's
    own name or a file it landed."""
    if holder is None or holder[0] is None:
        return False
    if str(holder[6]) in _MAY_LAND:
        return True
    return name_cf in name_owners([_row(holder)])


async def reserved_rows(conn: PgConn, campaign: str) -> list[OutputRow]:
    """Every live reservation of ``campaign`` as a landed file of its job: added to the
    journal's rows, the check of names sees them as held."""
    cur = await conn.execute(
        f"SELECT f.name_cf, f.job_id, {_HOLDER} FROM file_names f LEFT JOIN jobs j "
        "ON j.campaign = f.campaign AND j.id = f.job_id WHERE f.campaign = %s",
        (campaign,),
    )
    return [
        (str(job), name, (name,), 0, "done", None)
        for name, job, *holder in await cur.fetchall()
        if _holds(str(name), holder)
    ]


class SharedNames:
    """The reservations of file names of one campaign (module docstring)."""

    def __init__(self, ops: Ops, campaign: str) -> None:
        self._ops = ops
        self._c = campaign

    async def reserve(self, job_id: str, names: Iterable[str]) -> list[tuple[str, str]]:
        """Hold ``names`` (the job's own name first, then its other results') for
        ``job_id`` before its results land on them: (name, holder) of each name another
        job holds, and then none is kept (nothing may land). One statement for a job of
        one result; one more read for the names of its other results."""
        names = list(names)
        keys = list(dict.fromkeys(n.casefold() for n in names))
        if not keys:
            return []
        c = self._c

        async def hold(conn: PgConn) -> tuple[list[str], list[tuple[str, str]]]:
            # DO UPDATE, not DO NOTHING: it waits for, locks and returns the holder a
            # concurrent runner committed, which this statement's snapshot cannot see.
            cur = await conn.execute(
                "WITH r AS (INSERT INTO file_names (campaign, name_cf, job_id) "
                "SELECT %(c)s, n, %(j)s FROM unnest(%(k)s::text[]) n "
                "ON CONFLICT (campaign, name_cf) DO UPDATE SET job_id = file_names.job_id "
                "RETURNING name_cf, job_id) "
                f"SELECT r.name_cf, r.job_id, {_HOLDER} FROM r LEFT JOIN jobs j "
                "ON j.campaign = %(c)s AND j.id = r.job_id",
                {"c": c, "j": job_id, "k": keys},
            )
            got: list[str] = []
            taken: list[tuple[str, str]] = []
            for name, holder_id, *holder in await cur.fetchall():
                if holder_id == job_id:
                    got.append(str(name))
                elif _holds(str(name), holder):
                    taken.append((str(name), str(holder_id)))
                else:  # stale: its job no longer holds it
                    await conn.execute(
                        "UPDATE file_names SET job_id = %s WHERE campaign = %s AND name_cf = %s",
                        (job_id, c, name),
                    )
                    got.append(str(name))
            return got, taken

        held, taken = await self._ops.write(hold, durable=False)
        if not taken and len(keys) > 1:
            # The other results' names may be a job's own, synced by another runner a
            # moment ago. Read after the reservation committed: that runner's check of
            # names before its submits sees the reservation, or this read sees its job.
            taken = await self._ops.read(lambda conn: self._named_jobs(conn, job_id, keys[1:]))
        if taken and held:
            await self._ops.write(lambda conn: self._release(conn, job_id, held), durable=False)
        return [(next(n for n in names if n.casefold() == k), h) for k, h in taken]

    async def _named_jobs(
        self, conn: PgConn, job_id: str, keys: list[str]
    ) -> list[tuple[str, str]]:
        """Jobs of the journal (a runner may have synced them a moment ago) whose own name
        is one of ``keys``, and that still hold it."""
        cur = await conn.execute(
            f"SELECT {_HOLDER} FROM jobs j WHERE j.campaign = %s AND lower(j.filename) = "
            "ANY(%s) AND j.id <> %s",
            (self._c, [k.lower() for k in keys], job_id),
        )
        owners = name_owners([_row(r) for r in await cur.fetchall()])
        return [(k, owners[k][0]) for k in keys if owners.get(k)]

    async def _release(self, conn: PgConn, job_id: str, keys: list[str]) -> None:
        await conn.execute(
            "DELETE FROM file_names WHERE campaign = %s AND job_id = %s AND name_cf = ANY(%s)",
            (self._c, job_id, keys),
        )


class PgUploads:
    """The multipart uploads of one campaign's runners (module docstring).

    ``runner`` gives this run's runner (its ``runners`` row), or None while the run
    holds the campaign alone: then the sweep is a single run's, every incomplete
    upload of ours is a leftover, as with a journal file."""

    def __init__(
        self,
        ops: Ops,
        campaign: str,
        runner: Callable[[], int | None] = lambda: None,
        *,
        grace_s: float = 2.5,
        db_now: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._ops = ops
        self._c = campaign
        self._runner = runner
        self._grace_s = grace_s
        self._db_now = db_now

    async def opened(self, upload_id: str, key: str) -> None:
        """An upload began (its UploadId known): recorded as this runner's."""

        async def op(conn: PgConn) -> None:
            await conn.execute(
                "INSERT INTO uploads (upload_id, campaign, s3_key, runner, started_at) "
                f"VALUES (%(u)s, %(c)s, %(k)s, %(r)s, {_NOW}) ON CONFLICT DO NOTHING",
                {"u": upload_id, "c": self._c, "k": key, "r": self._runner(), "now": None},
            )

        # Not durable: a record a server crash loses leaves the upload unrecorded, swept
        # only once every runner live when it began is gone.
        await self._ops.write(op, durable=False)

    async def closed(self, upload_id: str) -> None:
        """An upload was completed or aborted: nothing of it is left to sweep."""

        async def op(conn: PgConn) -> None:
            await conn.execute("DELETE FROM uploads WHERE upload_id = %s", (upload_id,))

        await self._ops.write(op, durable=False)

    async def sweepable(self, found: Sequence[tuple[str, str, datetime | None]]) -> set[str]:
        """Of the incomplete uploads ``found`` under our keys ((UploadId, key, Initiated)),
        those to abort: every one when this run holds the campaign alone; else those of
        runners whose lease ran out more than the grace ago (or that left, or were
        adopted), and unrecorded ones begun before every live runner started."""
        if self._runner() is None or not found:
            return {u for u, _, _ in found}
        ids = [u for u, _, _ in found]
        args = {"c": self._c, "ids": ids, "grace": self._grace_s, "now": self._db_now()}

        async def op(conn: PgConn) -> tuple[dict[str, bool], datetime | None]:
            cur = await conn.execute(
                "SELECT u.upload_id, (r.id IS NULL OR r.adopted_by IS NOT NULL OR r.stopped "
                f"OR r.lease_until < {_NOW} - make_interval(secs => %(grace)s)) "
                "FROM uploads u LEFT JOIN runners r ON r.id = u.runner "
                "WHERE u.upload_id = ANY(%(ids)s)",
                args,
            )
            recorded = {str(u): bool(dead) for u, dead in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT min(started_at) FROM runners WHERE campaign = %(c)s AND adopted_by "
                f"IS NULL AND NOT stopped AND lease_until > {_NOW}",
                args,
            )
            row = await cur.fetchone()
            return recorded, None if row is None else row[0]

        recorded, oldest_live = await self._ops.read(op)
        gone = {u for u, dead in recorded.items() if dead}
        for upload_id, _, initiated in found:
            if upload_id in recorded:
                continue
            if oldest_live is None or (initiated is not None and initiated < oldest_live):
                gone.add(upload_id)
        if gone:
            await self._ops.write(lambda conn: _forget(conn, sorted(gone)), durable=False)
        return gone


async def _forget(conn: PgConn, ids: list[str]) -> None:
    await conn.execute("DELETE FROM uploads WHERE upload_id = ANY(%s)", (ids,))


async def other_host(
    conn: PgConn, campaign: str, host: str, now: float | None = None
) -> str | None:
    """A host other than ``host`` that a live runner of ``campaign`` runs on, if any."""
    cur = await conn.execute(
        "SELECT host FROM runners WHERE campaign = %(c)s AND host <> %(h)s AND adopted_by "
        f"IS NULL AND NOT stopped AND lease_until > {_NOW} ORDER BY id LIMIT 1",
        {"c": campaign, "h": host, "now": now},
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


def local_out_refused(folder: str, host: str, other: str) -> str:
    """The one line that stops a runner writing to a local folder once runners of its
    campaign run on another host (exit 2: nothing is sent)."""
    return (
        f"--out {folder} is a folder of this machine ({host}), and a runner of this "
        f"campaign runs on {other}: with runners on several hosts, results go to s3://… "
        "(--out s3://bucket/prefix), or say the folder is one mount shared by every "
        "runner with --shared-out (output: {shared: true} in the job file); nothing was sent"
    )
