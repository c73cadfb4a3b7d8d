"""The callback receiver: APIXO POSTs a finished task here, the engine gets it.

APIXO does not sign callbacks and wants an HTTP 200 within 30 s (else it
retries up to 3 times). So the callback URL handed to APIXO carries a
per-campaign secret token as its last path segment
(:func:`callback_url_with_token`), and the receiver, an aiohttp server in the
engine's process, checks it before anything else:

====================================  ======  ==================================
request                               answer  handed to the engine
====================================  ======  ==================================
wrong or missing token (any method)   403     no
right token, not POST                 405     no
body over ``max_body`` bytes          413     no
not JSON, not the documented shape,   400     no (an error is not a result; the
or ``code`` is not 200                        polling safety net asks the
                                              status endpoint instead)
handler says "accepted"/"duplicate"   200     yes
handler says "unknown"                404     yes (the engine knows no such task)
handler slower than handler_timeout   503     yes (APIXO retries; the handler
                                              keeps running and usually turns
                                              the retry into a "duplicate")
handler raises                        500     yes
====================================  ======  ==================================

Non-final states (pending/processing) are handed on too: the handler decides.
The token is never logged, never echoed and never shown in ``repr``; the
request path is never logged either (it holds the token), which is why
aiohttp's access log is off.

The handler timeout reads the event loop's time, not the engine's clock: it
bounds a real HTTP exchange with APIXO, like the client's HTTP timeouts.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ..errors import ApixoError
from .client import TaskStatus, parse_task_payload

if TYPE_CHECKING:
    # aiohttp's server side is imported when a receiver starts: polling runs never need it.
    from aiohttp import web

__all__ = [
    "CallbackReceiver",
    "HandlerResult",
    "ReceiverStats",
    "callback_url_with_token",
    "mask_token",
    "new_token",
    "parse_listen",
]

logger = logging.getLogger(__name__)

HandlerResult = Literal["accepted", "duplicate", "unknown"]
CallbackHandler = Callable[[TaskStatus], Awaitable[HandlerResult]]

#: what a token may look like: URL-safe (no proxy rewrites it) and long enough to be unguessable
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,}")
_MASK_CHARS = 4
_READ_CHUNK = 16 * 1024


def new_token() -> str:
    """A fresh campaign token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _check_token(token: str) -> None:
    if not _TOKEN_RE.fullmatch(token):
        # Never put the token itself in the message.
        raise ValueError(
            "the callback token must be at least 16 URL-safe characters "
            "(letters, digits, '-' or '_'); use new_token()"
        )


def callback_url_with_token(public_url: str, token: str) -> str:
    """``public_url`` with ``token`` appended as its last path segment.

    ``https://h/apixo`` and ``https://h/apixo/`` both give
    ``https://h/apixo/<token>``; a query string stays after the path.
    """
    _check_token(token)
    parts = urlsplit(public_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--callback-url must be an http:// or https:// URL with a host, not {public_url!r}"
        )
    path = parts.path.rstrip("/") + "/" + token
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def mask_token(url_or_token: str, token: str) -> str:
    """``url_or_token`` with every occurrence of ``token`` shown as its first 4 characters + "…"."""
    if not token:
        return url_or_token
    return url_or_token.replace(token, token[:_MASK_CHARS] + "…")


def parse_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (IPv6 in brackets: ``"[::1]:8788"``) as ``(host, port)``.

    A host is required: the receiver never picks "every interface" by itself.
    Port 0 means any free port (tests); the public URL must then be known otherwise.
    """
    text = value.strip()
    example = "e.g. --listen 127.0.0.1:8788 (this machine only) or 0.0.0.0:8788 (every interface)"
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text:
        raise ValueError(f"--listen must be HOST:PORT, not {value!r}; {example}")
    if not host:
        raise ValueError(f"--listen needs a host before the port, not {value!r}; {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"--listen: {host!r} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(
            f"--listen: put an IPv6 address in brackets, e.g. [::1]:8788, not {value!r}"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen: the port must be a number from 0 to 65535, not {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """Requests received, by outcome; every request is counted in exactly one outcome."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected_token: int = 0
    unknown_task: int = 0
    too_large: int = 0
    #: not JSON, wrong shape, code not 200, or a method other than POST
    malformed: int = 0
    #: the handler did not answer within handler_timeout (503)
    timed_out: int = 0
    #: the handler raised (500)
    handler_errors: int = 0


def _answer(status: int, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"code": status, "message": message}, status=status)


class CallbackReceiver:
    """An aiohttp server that checks APIXO callbacks and hands them to ``handler``.

    ``handler`` gets the parsed :class:`TaskStatus` and says whether the task
    was "accepted", a "duplicate" or "unknown". It may take a moment (the
    engine waits briefly for a submit answer still on its way to the journal);
    other requests are served meanwhile. If it takes longer than
    ``handler_timeout`` the answer is 503 and APIXO retries, but the handler is
    not cancelled: it runs to its end, and :meth:`stop` cancels any still running.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        handler: CallbackHandler,
        *,
        max_body: int = 64 * 1024,
        handler_timeout: float = 10.0,
    ) -> None:
        _check_token(token)
        if max_body < 1:
            raise ValueError("max_body must be positive")
        if not 0 < handler_timeout < 30:
            raise ValueError("handler_timeout must be above 0 and well under APIXO's 30 s")
        self.host = host
        self._port = port
        self._token = token.encode("ascii")
        self._handler = handler
        self._max_body = max_body
        self._handler_timeout = handler_timeout
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        #: handlers running, and those whose request has already been answered 503
        self._handlers: set[asyncio.Task[HandlerResult]] = set()
        self._detached: set[asyncio.Task[HandlerResult]] = set()
        self._counts: dict[str, int] = {f.name: 0 for f in fields(ReceiverStats)}

    def __repr__(self) -> str:
        token = self._token.decode("ascii")
        port = self._bound_port if self._bound_port is not None else self._port
        return (
            f"CallbackReceiver(host={self.host!r}, port={port}, token={mask_token(token, token)!r})"
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (``port`` 0 picks a free port; see :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("the callback receiver is already started")
        from aiohttp import web

        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: aiohttp's access log would print every path, token included.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        logger.info("callback receiver listening on %s:%d", self.host, self._bound_port)

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`)."""
        if self._bound_port is None:
            raise RuntimeError("the callback receiver is not started")
        return self._bound_port

    async def stop(self) -> None:
        """Stop serving, then cancel handlers still running after a timeout. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        leftovers = list(self._handlers)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def __aenter__(self) -> CallbackReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def statistics(self) -> ReceiverStats:
        """A snapshot of the request counters."""
        return ReceiverStats(**self._counts)

    # --- one request -------------------------------------------------------------------

    def _token_matches(self, request: web.Request) -> bool:
        # The last path segment, whatever prefix a proxy added or stripped.
        segment = request.rel_url.raw_path.rstrip("/").rpartition("/")[2]
        return hmac.compare_digest(segment.encode("utf-8", "replace"), self._token)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._counts["received"] += 1
        if not self._token_matches(request):
            self._counts["rejected_token"] += 1
            logger.info("callback rejected: wrong or missing token (from %s)", request.remote)
            return _answer(403, "forbidden")
        if request.method != "POST":
            self._counts["malformed"] += 1
            return _answer(405, "method not allowed")
        body = await self._read_body(request)
        if body is None:
            self._counts["too_large"] += 1
            logger.warning("callback rejected: body over %d bytes", self._max_body)
            return _answer(413, "body too large")
        status = self._parse(body)
        if status is None:
            self._counts["malformed"] += 1
            return _answer(400, "malformed callback")
        return await self._hand_on(status)

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None once it is over the limit (announced or actually sent)."""
        announced = request.content_length
        if announced is not None and announced > self._max_body:
            return None
        buf = bytearray()
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            buf += chunk
            if len(buf) > self._max_body:
                return None
        return bytes(buf)

    def _parse(self, body: bytes) -> TaskStatus | None:
        try:
            decoded: Any = json.loads(body)
        except (ValueError, RecursionError) as exc:
            logger.warning("callback rejected: not JSON (%s)", type(exc).__name__)
            return None
        if not isinstance(decoded, dict):
            logger.warning("callback rejected: not a JSON object")
            return None
        try:
            return parse_task_payload(decoded, endpoint="callback")
        except ApixoError as exc:
            logger.warning("callback rejected: %s", exc)
            return None

    async def _hand_on(self, status: TaskStatus) -> web.Response:
        task = asyncio.get_running_loop().create_task(self._call_handler(status))
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)
        try:
            # shield: a slow handler is not interrupted mid-way (it may be writing the journal).
            result = await asyncio.wait_for(asyncio.shield(task), self._handler_timeout)
        except TimeoutError:
            self._counts["timed_out"] += 1
            self._detached.add(task)
            logger.warning(
                "callback for task %s: handler busy after %.1f s, answered 503 (APIXO retries)",
                status.task_id,
                self._handler_timeout,
            )
            return _answer(503, "busy, retry later")
        except Exception:
            # A server must answer: the bug is logged with its traceback and counted, APIXO
            # retries the delivery, and the task's polls are the safety net.
            self._counts["handler_errors"] += 1
            logger.exception("callback for task %s: handler failed", status.task_id)
            return _answer(500, "internal error")
        if result == "accepted":
            self._counts["accepted"] += 1
        elif result == "duplicate":
            self._counts["duplicates"] += 1
        elif result == "unknown":
            self._counts["unknown_task"] += 1
            logger.warning("callback for unknown task %s", status.task_id)
            return _answer(404, "unknown task")
        else:
            self._counts["handler_errors"] += 1
            logger.error("callback for task %s: handler answered %r", status.task_id, result)
            return _answer(500, "internal error")
        logger.debug("callback for task %s (%s): %s", status.task_id, status.state, result)
        return _answer(200, "success")

    async def _call_handler(self, status: TaskStatus) -> HandlerResult:
        return await self._handler(status)

    def _handler_done(self, task: asyncio.Task[HandlerResult]) -> None:
        self._handlers.discard(task)
        if task not in self._detached:
            return  # the request still waits for it and reports the outcome
        self._detached.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("late callback handler failed", exc_info=exc)
        else:
            logger.info("late callback handler finished: %s", task.result())
