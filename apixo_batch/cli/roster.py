"""``status`` on a database: the runners of the campaign, beside its jobs.

Read at the moment ``status`` runs, on its own connection (the jobs come from the
copy :func:`~.database.local_copy` made a moment before): a runner's lease, who
adopted it, and the rows it owns by state. A journal file has no runners: nothing
is read or shown for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import runtime
from ..errors import StorageError

if TYPE_CHECKING:  # psycopg is an extra: imported only when a database is read
    from ..journal.pg.roster import RunnerState

__all__ = ["runner_lines", "runners_of_database"]


def runners_of_database(url: str) -> list[RunnerState] | None:
    """The runners (:class:`~..journal.pg.roster.RunnerState`) of the database's campaign,
    oldest first; None when they cannot be read (the database went away since the copy,
    or holds no campaign): ``status`` then tells the jobs alone."""
    import psycopg

    from ..journal.pg.roster import first_campaign, roster
    from ..journal.pg.schema import has_table

    async def read() -> list[RunnerState] | None:
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        except psycopg.Error:
            return None
        try:
            campaign = await first_campaign(conn)
            if campaign is None:
                return None
            if not await has_table(conn, "runners"):
                return []
            return await roster(conn, campaign)
        except psycopg.Error:
            return None
        finally:
            await conn.close()

    try:
        return runtime.run(read())
    except StorageError:
        return None


def runner_lines(shown: list[RunnerState]) -> list[str]:
    """``status``'s lines for the runners: one heading, one line a runner."""
    if not shown:
        return ["  runners     none has joined yet"]
    live = sum(r.live for r in shown)
    hosts = len({r.host for r in shown if r.live})
    lines = [f"  runners     {live} live of {len(shown)}, on {hosts} host(s)"]
    for r in shown:
        if r.adopted_by is not None:
            how = f"lease {r.lease()}, adopted by #{r.adopted_by}"
        elif r.stopped:
            how = "left"
        elif r.live:
            how = f"lease {r.lease()}"
        else:
            how = f"lease {r.lease()}, not adopted yet"
        owns = ", ".join(f"{n} {state}" for state, n in r.owned.items())
        if owns and not r.live and r.adopted_by is not None:
            # Adopted, yet still owning rows: paid tasks of a key its adopter lacks.
            owns += " (created with a key no live runner holds: waiting for one given it)"
        lines.append(
            f"    #{r.id} {r.host} pid {r.pid}: {how}" + (f"; owns {owns}" if owns else "")
        )
    return lines
