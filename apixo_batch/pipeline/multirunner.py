"""A run on a journal in PostgreSQL shares its outputs and its callbacks with the
campaign's other runners (``journal/pg/outputs.py``, ``journal/pg/relay.py``).

- **Outputs** (:func:`share_outputs`), wired once the stages exist, before the first
  result lands (and so before the S3 start-up sweep): the lander reserves its file
  names where every runner sees them, and an ``s3://`` output records its multipart
  uploads with their runner, so that a runner starting later aborts only the uploads
  of runners that are gone.
- **Hosts** (:func:`refuse_second_host`): a local output folder is one machine's; a
  runner that joins a campaign whose other live runners are on another host is
  refused before it sends anything (exit 2, one line), unless the folder is declared
  one shared mount (``--shared-out``, ``output.shared``).
- **Callbacks** (:class:`CallbackRelay`): APIXO's callback may reach any runner. One
  for a task this runner does not follow is passed on to the task's owner (NOTIFY);
  this runner's own channel brings it the callbacks the others received for its
  tasks, settled as its own. Polls remain the fallback for anything not passed on.

A journal file needs none of this: one run holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, get_args

from ..apixo.client import TaskState, TaskStatus
from ..apixo.receiver import CallbackHandler, HandlerResult
from ..clock import Clock, wait_until
from ..errors import PathError, StorageError
from ..journal import Ledger
from ..outputs.output import LocalOutput, Output, S3Output
from .lander import Lander

__all__ = [
    "CallbackRelay",
    "body_of",
    "listen_for_relayed",
    "refuse_second_host",
    "runner_id",
    "share_outputs",
    "status_of",
]

log = logging.getLogger(__name__)

#: how long the start of a run waits for its channel to be listened to
LISTEN_WAIT_S = 5.0


def runner_id(ledger: Ledger) -> Callable[[], int | None]:
    """This run's ``runners`` row, read when called (None: the run holds its journal
    alone)."""
    from ..journal.pg.ledger import PgLedger

    def me() -> int | None:
        lease = ledger.runner if isinstance(ledger, PgLedger) else None
        return None if lease is None else lease.id

    return me


def share_outputs(ledger: Ledger, lander: Lander, output: Output) -> None:
    """With ``ledger`` in PostgreSQL: names reserved in the shared journal, uploads
    recorded with this run's runner (none while the run holds the campaign alone).
    Nothing for a journal file."""
    from ..journal.pg.ledger import PgLedger
    from ..journal.pg.outputs import PgUploads, SharedNames

    if not isinstance(ledger, PgLedger):
        return
    lander.names = SharedNames(ledger.executor, ledger.campaign)
    if isinstance(output, S3Output):
        lease = ledger.runner
        output.store.uploads = PgUploads(
            ledger.executor,
            ledger.campaign,
            runner_id(ledger),
            grace_s=lease.grace_s if lease is not None else 0.0,
        )


async def refuse_second_host(ledger: Ledger, output: Output, host: str, shared: bool) -> None:
    """:class:`PathError` (one line: exit 2, nothing sent) when the output is a local
    folder not declared shared and a live runner of the campaign runs on another host."""
    from ..journal.pg.ledger import PgLedger
    from ..journal.pg.outputs import local_out_refused, other_host

    if shared or not isinstance(output, LocalOutput) or not isinstance(ledger, PgLedger):
        return
    lease = ledger.runner
    if lease is None:
        return
    campaign, now = ledger.campaign, lease.db_now()
    other = await ledger.executor.read(lambda conn: other_host(conn, campaign, host, now))
    if other is not None:
        raise PathError(local_out_refused(str(output.folder), host, other))


def body_of(status: TaskStatus) -> dict[str, Any]:
    """A callback as the relay carries it (JSON)."""
    body = dataclasses.asdict(status)
    body["result_urls"] = list(status.result_urls)
    return body


_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskStatus))


def status_of(body: dict[str, Any]) -> TaskStatus | None:
    """The callback a relay carried; None for anything else (a newer runner's fields)."""
    if not set(body) <= _FIELDS or not isinstance(body.get("task_id"), str):
        return None
    if body.get("state") not in get_args(TaskState):
        return None
    urls = body.get("result_urls") or ()
    try:
        return TaskStatus(**{**body, "result_urls": tuple(str(u) for u in urls)})
    except TypeError:
        return None


class CallbackRelay:
    """This runner's side of the relay of callbacks (module docstring). :meth:`handle`
    is the receiver's handler; :meth:`relayed` takes what the others pass on."""

    def __init__(self, ledger: Ledger, handler: CallbackHandler, follows: Callable[[str], bool]):
        self._ledger = ledger
        self._handler = handler
        self._follows = follows
        self._me = runner_id(ledger)
        #: callbacks passed on to their owner, taken from the others, and passed on
        #: without their body (too large: the owner's polls settle them)
        self.passed_on = 0
        self.taken = 0
        self.bodiless = 0

    async def handle(self, status: TaskStatus) -> HandlerResult:
        """A callback this runner received: its own task's settled here; another
        runner's passed on to it (accepted); anything else as the follower says."""
        from ..journal.pg.ledger import PgLedger
        from ..journal.pg.relay import pass_on

        me = self._me()
        if me is None or self._follows(status.task_id) or not isinstance(self._ledger, PgLedger):
            return await self._handler(status)
        campaign, body = self._ledger.campaign, body_of(status)
        try:
            owner = await self._ledger.executor.read(
                lambda conn: pass_on(conn, campaign, me, status.task_id, body)
            )
        except StorageError as exc:
            log.warning("cannot pass callback of task %s on: %s", status.task_id, exc)
            owner = None
        if owner is None:
            return await self._handler(status)
        self.passed_on += 1
        return "accepted"

    async def relayed(self, task_id: str, body: dict[str, Any] | None) -> None:
        """A callback another runner received for a task of this one."""
        status = None if body is None else status_of(body)
        if status is None or status.task_id != task_id:
            self.bodiless += 1  # its poll settles it
            return
        self.taken += 1
        await self._handler(status)


async def listen_for_relayed(
    url: str, runner: int, relay: CallbackRelay, clock: Clock, stack: contextlib.AsyncExitStack
) -> None:
    """Listen on runner ``runner``'s channel until the run's resources close."""
    from ..journal.pg.relay import Listener

    listener = Listener(url, runner, relay.relayed, clock)
    task = asyncio.ensure_future(listener.run())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    # Listening before the first callback may come (the channel is a session's), unless
    # the database is slow to answer: the run goes on, its polls settle its tasks.
    waiting = asyncio.ensure_future(listener.listening.wait())
    try:
        await wait_until(clock, {waiting, task}, clock.monotonic() + LISTEN_WAIT_S)
    finally:
        waiting.cancel()
