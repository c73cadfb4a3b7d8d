"""Callbacks passed on to the runner that owns their task, with LISTEN/NOTIFY.

APIXO calls one callback URL, which may reach any runner of a campaign (a load
balancer in front of several). A runner that receives the callback of a task
another runner owns passes it on (:func:`pass_on`): one statement finds the task's
owner and notifies that runner's channel with the task id and the body. The owner
listens on its channel (:class:`Listener`, a connection of its own: ``LISTEN`` is a
session's) and settles the task as its own callback.

A notification's payload is at most 8000 bytes in PostgreSQL's default build; a body
too large (many long result URLs) is passed on as the task id alone, and the owner's
polls settle it. A notification is lost if the owner is reconnecting at that moment:
its polls settle that task too. Nothing here is durable, nor needs to be: the
journal is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from ...clock import Clock
from .executor import PgConn

__all__ = ["MAX_PAYLOAD", "Listener", "channel", "pass_on", "payload"]

log = logging.getLogger(__name__)

#: PostgreSQL's limit on a notification's payload (bytes, less than 8000)
MAX_PAYLOAD = 7999

#: ``(task id, the callback's body or None when it was too large to pass on)``
Relayed = Callable[[str, dict[str, Any] | None], Awaitable[None]]


def channel(runner: int) -> str:
    """The channel runner ``runner`` listens on."""
    return f"apixo_callback_{runner}"


def payload(task_id: str, body: dict[str, Any]) -> str:
    """The notification of ``body`` for ``task_id``: the task id alone when the body
    does not fit (see :data:`MAX_PAYLOAD`)."""
    text = json.dumps({"t": task_id, "b": body}, separators=(",", ":"))
    if len(text.encode()) <= MAX_PAYLOAD:
        return text
    return json.dumps({"t": task_id}, separators=(",", ":"))


async def pass_on(
    conn: PgConn, campaign: str, me: int | None, task_id: str, body: dict[str, Any]
) -> int | None:
    """Notify the runner that owns ``task_id`` (one other than ``me``) with ``body``;
    which runner, or None when no other runner owns it (nothing sent)."""
    cur = await conn.execute(
        "SELECT owner, pg_notify('apixo_callback_' || owner, %(p)s) FROM jobs "
        "WHERE campaign = %(c)s AND task_id = %(t)s AND owner IS NOT NULL "
        "AND owner IS DISTINCT FROM %(me)s LIMIT 1",
        {"c": campaign, "t": task_id, "me": me, "p": payload(task_id, body)},
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


class Listener:
    """Runner ``runner``'s end of the relay: :meth:`run` listens on its channel and
    hands each notification to ``on_relayed`` until cancelled, reconnecting after a
    failure (every ``retry_s``)."""

    def __init__(
        self,
        url: str,
        runner: int,
        on_relayed: Relayed,
        clock: Clock,
        *,
        retry_s: float = 1.0,
    ) -> None:
        self._url = url
        self._runner = runner
        self._on_relayed = on_relayed
        self._clock = clock
        self._retry_s = retry_s
        #: set once the channel is listened to (tests wait for it; barriers, not sleeps)
        self.listening = asyncio.Event()
        self.received = 0

    async def run(self) -> None:
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("relayed callbacks: the database went away (%s); polls go on", exc)
                await self._clock.sleep(self._retry_s)

    async def _listen(self) -> None:
        conn: PgConn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(self._runner))))
            self.listening.set()
            async for note in conn.notifies():
                self.received += 1
                task_id, body = _parsed(note.payload)
                if task_id is None:
                    continue
                try:
                    await self._on_relayed(task_id, body)
                except Exception:
                    # One callback's trouble is not the relay's: its task is still polled.
                    log.exception("a relayed callback of task %s failed", task_id)
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def _parsed(text: str) -> tuple[str | None, dict[str, Any] | None]:
    try:
        got = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(got, dict) or not isinstance(got.get("t"), str):
        return None, None
    body = got.get("b")
    return got["t"], body if isinstance(body, dict) else None
