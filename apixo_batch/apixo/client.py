"""The APIXO HTTP client: submit, status, balance.

One call, one request, and every request passes the client's one
:class:`~apixo_batch.apixo.limits.RequestBucket` first (invariant 3: by construction,
nothing can call the API around it); a 429 answer slows that bucket down
before it is raised. No retries here: the stages decide when to call again and
what to do with an error (see ``retry``). Every error answer becomes a leaf of
:mod:`apixo_batch.errors`; the JSON ``code`` is honoured whatever the HTTP
status says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..clock import SystemClock
from ..defaults import DEFAULT_BASE_URL, PATIENCE
from ..errors import ApiError, RateLimited, TransportError, api_error_for, connection_trouble
from ..retry import Patience, parse_retry_after
from .breaker import Breaker
from .limits import RPM_CAP, Priority, RequestBucket
from .secret import ApiKey, redact

__all__ = ["DEFAULT_BASE_URL", "ApixoClient", "Grant", "TaskStatus", "parse_task_payload"]

TaskState = Literal["pending", "processing", "success", "failed"]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What APIXO says about one task (a status answer or a callback body)."""

    task_id: str
    state: TaskState
    result_urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_msg: str | None = None
    create_time_ms: int | None = None
    complete_time_ms: int | None = None
    cost_time_ms: int | None = None
    #: the task's model, should the answer name it (the documented one does not: the
    #: status route is per model, and APIXO answers 404 for another model's task)
    model: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("success", "failed")


@dataclass(frozen=True, slots=True)
class Grant:
    """One request let go by the breaker and granted by the bucket, for one call to spend.

    A submit takes its grant first (:meth:`ApixoClient.grant`), journals its mark, and
    only then sends: the mark is written once the request may leave, never before."""

    probe: bool
    ticket: int


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_task_payload(body: Mapping[str, Any], *, endpoint: str = "status") -> TaskStatus:
    """Turn a ``{code, message, data}`` status answer or callback body into a TaskStatus.

    Raises the matching :class:`ApiError` when ``code`` is not 200, and
    :class:`TransportError` when the body does not have the documented shape.
    """
    code = _int_or_none(body.get("code"))
    message = str(body.get("message", ""))
    if code != 200:
        raise api_error_for(code if code is not None else 500, message, endpoint=endpoint)
    data = body.get("data")
    if not isinstance(data, Mapping):
        raise TransportError(f"{endpoint}: answer has no data object")
    task_id = data.get("taskId")
    state = data.get("state")
    if not isinstance(task_id, str) or state not in ("pending", "processing", "success", "failed"):
        raise TransportError(f"{endpoint}: answer lacks taskId or a known state ({state!r})")
    urls: tuple[str, ...] = ()
    if state == "success":
        raw = data.get("resultJson")
        try:
            # resultJson is a JSON *string*; tolerate an already-decoded object as well.
            result: Any = json.loads(raw) if isinstance(raw, str) else raw
            found = result["resultUrls"]
            if not isinstance(found, list) or not all(isinstance(u, str) and u for u in found):
                raise TypeError("resultUrls is not a list of URLs")
            urls = tuple(str(u) for u in found)
        except (ValueError, TypeError, KeyError) as exc:
            raise TransportError(
                f"{endpoint}: task {task_id} succeeded but resultJson "
                f"is unreadable ({type(exc).__name__})"
            ) from None
        if not urls:
            raise TransportError(f"{endpoint}: task {task_id} succeeded with no resultUrls")
    fail_code = data.get("failCode")
    fail_msg = data.get("failMsg")
    return TaskStatus(
        task_id=task_id,
        state=state,
        result_urls=urls,
        fail_code=str(fail_code) if fail_code is not None else None,
        fail_msg=str(fail_msg) if fail_msg is not None else None,
        create_time_ms=_int_or_none(data.get("createTime")),
        complete_time_ms=_int_or_none(data.get("completeTime")),
        cost_time_ms=_int_or_none(data.get("costTime")),
        model=model if isinstance(model := data.get("model"), str) and model else None,
    )


class ApixoClient:
    """A thin async client for the APIXO video API.

    Use as an async context manager, or call :meth:`close`. ``session`` may be
    given to share a connection pool; the client then does not close it.
    ``bucket`` paces every request (default: the API's own limit on the real
    clock); :attr:`bucket` counts what was sent.
    """

    def __init__(
        self,
        api_key: ApiKey,
        base_url: str = DEFAULT_BASE_URL,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        connections: int = 100,
        bucket: RequestBucket | None = None,
        patience: Patience = PATIENCE,
        on_outage: Callable[[bool, float], None] | None = None,
    ) -> None:
        self._key = api_key
        self.bucket = bucket if bucket is not None else RequestBucket(RPM_CAP, SystemClock())
        scale = self.bucket.time_scale
        #: while the API gives no answer at all, calls wait and one probes (see breaker);
        #: ``on_outage(open, silent_s)`` hears when that starts and ends
        self.breaker = Breaker(
            self.bucket.clock,
            base=1.0 * scale,
            cap=60.0 * scale,
            patience=patience,
            on_change=on_outage,
        )
        self.base_url = base_url.rstrip("/")
        self._own_session = session is None
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(10.0, timeout))
        self._connections = connections
        self._headers = {"Authorization": api_key.bearer(), "Accept": "application/json"}
        # Status calls are most of the traffic: their URL is parsed once per model and
        # only the (quoted) task id is added per call, not re-encoded through yarl.
        self._status_urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ApixoClient(base_url={self.base_url!r}, api_key={self._key!r})"

    async def __aenter__(self) -> ApixoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
            # The API sets no cookies we need; a jar would be searched on every request.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def grant(self, priority: int) -> Grant:
        """Wait until a request may leave: the breaker lets it go, the bucket grants it.

        Spend it on one call, or hand it back unspent with :meth:`unused`."""
        probe = await self.breaker.admit()
        try:
            ticket = await self.bucket.acquire(priority)
        except BaseException:
            self.unused(Grant(probe, -1))
            raise
        return Grant(probe, ticket)

    def unused(self, grant: Grant) -> None:
        """A grant that will not be sent: if it was the probe, another call may probe."""
        if grant.probe:
            self.breaker.forget_probe()
        self.bucket.unanswered(grant.ticket)  # a no-op once its answer was counted

    async def _call(
        self,
        method: str,
        url: str | URL,
        *,
        endpoint: str,
        priority: int,
        body: Mapping[str, Any] | None = None,
        grant: Grant | None = None,
    ) -> dict[str, Any]:
        if grant is None:
            grant = await self.grant(priority)
        try:
            return await self._spend(grant, method, url, endpoint, body)
        finally:
            self.unused(grant)  # a no-op once the probe's outcome is known

    async def _spend(
        self,
        grant: Grant,
        method: str,
        url: str | URL,
        endpoint: str,
        body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        self.bucket.sent()
        sent_at = self.bucket.clock.monotonic()
        try:
            answer = await self._send(method, url, endpoint=endpoint, body=body)
        except TransportError:
            self.breaker.no_answer(grant.probe)
            raise
        except ApiError as exc:
            self.breaker.answered(grant.probe)
            if isinstance(exc, RateLimited):
                self._limited(exc, endpoint, grant.ticket, sent_at)
            elif exc.status != 401:  # a refused key is answered before any rate limit
                self.bucket.accepted(sent_at, endpoint, ticket=grant.ticket)
            raise
        self.breaker.answered(grant.probe)
        self.bucket.accepted(sent_at, endpoint, ticket=grant.ticket)
        return answer

    def _limited(self, exc: RateLimited, endpoint: str, ticket: int, sent_at: float) -> None:
        """A 429: the request rate's, or (a submit's) the account's slots."""
        # A submit refused while requests run well under their limit is the account's
        # slot limit speaking, whatever its message says (gateways often answer a bare
        # "Too Many Requests"): the rate is not to blame. A message naming concurrency
        # settles it either way.
        # A bare one (a "Too Many Requests" that names neither) with no Retry-After, while
        # no window the engine knows of was full, is the slots too: requests running fast
        # do not make it the rate's, and read as the rate's it would slow every request.
        message = exc.api_message.lower()
        names_slots = any(w in message for w in ("concurren", "slot", "in flight", "running"))
        says_rate = "rate" in message and not names_slots
        bare = not (names_slots or says_rate)
        if endpoint == "submit" and (
            names_slots
            or (bare and self.bucket.utilization() < 0.5)
            or (bare and exc.retry_after is None and not self.bucket.window_full(sent_at, endpoint))
        ):
            exc.slots = True
        if exc.slots:
            # Past the rate limit: the slots said no.
            self.bucket.accepted(sent_at, endpoint, ticket=ticket)
        else:
            self.bucket.rate_limited(
                exc.retry_after, ticket=ticket, sent_at=sent_at, route=endpoint
            )

    async def _send(
        self,
        method: str,
        url: str | URL,
        *,
        endpoint: str,
        body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        try:
            async with self._get_session().request(
                method, url, json=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                # Parsed only for an error answer (a 200 may carry an error code too).
                retry_header = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = redact(connection_trouble(exc), self._key)
            # No connection was made (refused, no such host, TLS handshake): nothing left.
            sent = not isinstance(exc, aiohttp.ClientConnectorError)
            raise TransportError(f"{endpoint}: {detail}", sent=sent) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if status != 200:
                text = raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
                raise api_error_for(
                    status,
                    redact(text, self._key),
                    endpoint=endpoint,
                    retry_after=parse_retry_after(retry_header),
                )
            raise TransportError(f"{endpoint}: answer is not a JSON object")
        code = _int_or_none(parsed.get("code"))
        # An error in either place is an error: the HTTP status or the JSON code.
        effective = status if status != 200 else (code if code is not None else 200)
        if status == 200 and code is not None and code != 200:
            effective = code
        if effective != 200:
            message = redact(str(parsed.get("message", "")), self._key)
            raise api_error_for(
                effective,
                message or f"HTTP {status}",
                endpoint=endpoint,
                retry_after=parse_retry_after(retry_header),
            )
        return parsed

    async def submit(
        self,
        model: str,
        inp: Mapping[str, Any],
        *,
        request_type: Literal["async", "callback"] = "async",
        callback_url: str | None = None,
        provider: str = "auto",
        grant: Grant | None = None,
    ) -> str:
        """Create a task; returns its task id.

        ``grant``: the request's place, taken beforehand with :meth:`grant` (the
        submitter journals its mark between the two); else it is taken here."""
        body: dict[str, Any] = {
            "request_type": request_type,
            "provider": provider,
            "input": dict(inp),
        }
        if request_type == "callback":
            if not callback_url:
                raise ValueError("callback mode needs a callback_url")
            body["callback_url"] = callback_url
        answer = await self._call(
            "POST",
            f"{self.base_url}/generateTask/{model}",
            endpoint="submit",
            priority=Priority.SUBMIT,
            body=body,
            grant=grant,
        )
        data = answer.get("data")
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not isinstance(task_id, str) or not task_id:
            raise TransportError("submit: answer has no data.taskId")
        return task_id

    async def status(self, model: str, task_id: str) -> TaskStatus:
        """The task's current state (and results once it has them)."""
        base = self._status_urls.get(model)
        if base is None:
            base = str(URL(f"{self.base_url}/statusTask/{model}").with_query(taskId=""))
            self._status_urls[model] = base
        url = URL(base + quote(task_id, safe=""), encoded=True)
        answer = await self._call("GET", url, endpoint="status", priority=Priority.STATUS)
        return parse_task_payload(answer, endpoint="status")

    async def balance(self) -> float:
        """Remaining account balance in US dollars."""
        answer = await self._call(
            "GET",
            f"{self.base_url}/apikeys/current-balance",
            endpoint="balance",
            priority=Priority.CONTROL,
        )
        data = answer.get("data")
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            raise TransportError("balance: answer has no numeric data")
        try:
            return float(data)
        except ValueError:
            raise TransportError("balance: answer has no numeric data") from None
