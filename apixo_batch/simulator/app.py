"""The simulated APIXO service: routes, handlers, and the accessors tests read.

Routes (all JSON answers are ``{"code", "message", "data"}`` with the HTTP
status equal to ``code``):

- ``POST /api/v1/generateTask/{model}``   submit
- ``GET  /api/v1/statusTask/{model}?taskId=``   status
- ``GET  /api/v1/apikeys/current-balance``   balance
- any other ``/api/...`` path: 404 in the same JSON envelope
- ``GET  /files/{task_id}/{n}.mp4``   result files (see :mod:`.files`)
- ``GET  /_sim/stats``, ``POST /_sim/finish/{task_id}``, ``POST /_sim/expire/{task_id}``

Choices where the docs are silent: the documented "Insufficient credits" body
is sent with HTTP 400 (its JSON code); an empty balance answers 402; a submit
answered by a 5xx or a reset creates no task (``submit_lost_rate`` is the
knob for "task created, answer lost"); a slow request whose client has gone
by the time it is processed is dropped without effect; unknown top-level
body keys are refused with 400, like unknown input keys; a route the key has no
access to (``forbidden``) answers 403 after the key check and before the rate
limit, as a gateway authorizes before it counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ..catalog.models import get_model, validate_input
from .callbacks import CallbackSender
from .config import SimConfig
from .files import OUTCOME, FileRoute, drop_connection
from .gate import FaultPlan, RollingWindow, key_matches, rate_limit_headers
from .media import Mp4Content
from .stats import SimStats, input_key
from .tasks import SimTask, TaskBook, loop_time

__all__ = ["Simulator"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROUTE_LABELS = {
    "submit": "POST /generateTask",
    "status": "GET /statusTask",
    "balance": "GET /apikeys/current-balance",
    "api_other": "API /other",
    "api_unknown": "API /other",
    "file": "GET /files",
    "stats": "GET /_sim/stats",
    "tasks": "GET /_sim/tasks",
    "finish": "POST /_sim/finish",
    "expire": "POST /_sim/expire",
}
#: the submit body's top-level fields: the documented four, and ``source``, the free-form
#: tag APIXO's own client (@apixo/mcp-server) sends when its caller gives one
_BODY_KEYS = frozenset({"request_type", "callback_url", "provider", "input", "source"})
_PROVIDERS = frozenset({"auto", "value", "official"})
_FAULT_MESSAGES = {
    "500": "Internal server error",
    "502": "Bad gateway: upstream provider error",
    "503": "Service temporarily unavailable",
    "504": "Gateway timeout: upstream provider did not answer",
}


def _answer(code: int, message: str, data: Any = None, **headers: str) -> web.Response:
    body = json.dumps({"code": code, "message": message, "data": data}, separators=(",", ":"))
    return web.Response(
        status=code, text=body, content_type="application/json", headers=headers or None
    )


class Simulator:
    """One simulated APIXO account and service; serve :attr:`app` with aiohttp.

    ``url`` and ``base_url`` are filled in by :func:`run_simulator` once listening.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        cfg = self.config
        self._key = cfg.resolved_api_key()
        self._main = _Account(self._key, cfg.balance, None, None)
        #: every key served, each an account of its own: limits, balance, tasks
        self._accounts: dict[str, _Account] = {self._key: self._main}
        for extra in cfg.keys:
            self._accounts[extra.key] = _Account(
                extra.key, extra.balance, extra.rpm_limit, extra.concurrency_limit
            )
        self._stats = SimStats()
        #: outage windows begun so far (``outages``)
        self.outages_seen = 0
        self._book = TaskBook(cfg, self._on_finish)
        self._callbacks = CallbackSender(cfg, self._stats)
        self._faults = FaultPlan(cfg)
        #: loop time of the start, from which ``unavailable`` windows count
        self._started = loop_time()
        self._files = FileRoute(cfg, self._stats, self._faults, self._book.tasks, self._book.settle)
        self.url = ""
        self.base_url = ""
        self.app = self._build_app()

    def __repr__(self) -> str:
        return f"Simulator(url={self.url!r}, tasks={len(self._book.tasks)})"

    # --- the aiohttp application -------------------------------------------------------

    def _build_app(self) -> web.Application:
        @web.middleware
        async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._observe(request, handler)

        app = web.Application(middlewares=[observe])
        add = app.router
        add.add_post("/api/v1/generateTask/{model}", self._gated(self._submit), name="submit")
        add.add_get("/api/v1/statusTask/{model}", self._gated(self._status), name="status")
        add.add_get("/api/v1/apikeys/current-balance", self._gated(self._balance), name="balance")
        add.add_route("*", "/api/v1/{tail:.*}", self._gated(self._no_route), name="api_other")
        # Every other /api/... path too: a client reading the envelope gets one.
        add.add_route("*", r"/api{tail:(/.*)?}", self._gated(self._no_route), name="api_unknown")
        add.add_get("/files/{task_id}/{name}", self._files.handle, name="file")
        add.add_get("/_sim/stats", self._stats_route, name="stats")
        add.add_get("/_sim/tasks", self._tasks_route, name="tasks")
        add.add_post("/_sim/finish/{task_id}", self._finish_route, name="finish")
        add.add_post("/_sim/expire/{task_id}", self._expire_route, name="expire")
        add.add_post("/_sim/revoke/{fingerprint}", self._revoke_route, name="revoke")
        return app

    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every request by route and by how it ended."""
        route = request.match_info.route.name
        label = _ROUTE_LABELS.get(route or "", f"{request.method} <unmatched>")
        if route == "file" and request.method == "HEAD":
            label = "HEAD /files"
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            self._stats.record(label, str(exc.status))
            raise
        except Exception:
            self._stats.record(label, "500")  # aiohttp answers an unhandled error with 500
            raise
        self._stats.record(label, request.get(OUTCOME) or str(resp.status))
        return resp

    def _gated(self, handler: Handler) -> Handler:
        """Wrap an API handler in auth, the rolling rate limit and fault injection."""

        async def gated(request: web.Request) -> web.StreamResponse:
            account = self._account_of(request.headers.get("Authorization"))
            route = request.match_info.route.name or ""
            if account is None or (account.revoked and route == "submit"):
                return _answer(401, "Invalid or missing API Key")
            request[ACCOUNT] = account
            cfg = self.config
            if cfg.forbidden and cfg.forbids(route, request.match_info.get("model")):
                self._stats.faults["403"] += 1
                return _answer(403, "API key lacks permission for this route")
            # Each key's own windows: an account's limits are its own.
            window, limit = account.window, account.rpm_limit or cfg.rpm_limit
            if cfg.status_rpm_limit is not None and route == "status":
                window, limit = account.status_window, cfg.status_rpm_limit
            wait = window.admit(
                loop_time(),
                limit,
                cfg.rpm_window_s,
                fixed=cfg.rpm_window == "fixed",
                count_refused=cfg.rpm_count_refused,
            )
            if wait is not None:
                self._stats.rate_limited_rpm += 1
                account.rate_limited += 1
                return _answer(
                    429, "Rate limit exceeded", **rate_limit_headers(wait, cfg.retry_after)
                )
            if self._faults.slow():
                self._stats.faults["slow"] += 1
                await asyncio.sleep(self.config.slow_delay_s)
                if request.transport is None or request.transport.is_closing():
                    return drop_connection(request, "client_gone", reset=False)
            if cfg.unavailable and self._unavailable():
                self._stats.faults["503"] += 1
                return _answer(503, _FAULT_MESSAGES["503"])
            fault = self._faults.api_fault()
            if fault == "reset":
                self._stats.faults["reset"] += 1
                return drop_connection(request, "reset", reset=True)
            if fault is not None:
                self._stats.faults[fault] += 1
                return _answer(int(fault), _FAULT_MESSAGES[fault])
            return await handler(request)

        return gated

    @property
    def uptime(self) -> float:
        """Seconds since this simulator started: what ``unavailable`` windows count from
        (a test places a window from a moment it chose: ``(sim.uptime + 0.1, 0.5)``)."""
        return loop_time() - self._started

    def _unavailable(self) -> bool:
        since = self.uptime
        return any(start <= since < start + length for start, length in self.config.unavailable)

    # --- API handlers ------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        spec = get_model(model)
        if spec is None:
            return _answer(404, f"Model not found: {model}")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _answer(400, "Invalid JSON body")
        problem = _check_body(body)
        if problem:
            return _answer(400, problem)
        inp, issues = validate_input(model, body["input"])
        if issues:
            return _answer(400, "; ".join(f"{i.field}: {i.message}" for i in issues))

        cfg = self.config
        if cfg.insufficient_after is not None and (
            self._stats.submits_accepted >= cfg.insufficient_after
        ):
            return _answer(400, "Insufficient credits")
        account: _Account = request[ACCOUNT]
        cost = self.price_of(model, inp)
        cost_micro = round(cost * 1e6)
        if cost_micro > account.balance_micro:
            return _answer(402, "Insufficient balance")
        self._book.settle()
        running = self._book.running_by.get(account.key, 0)
        if running >= (account.concurrency_limit or cfg.concurrency_limit):
            self._stats.rate_limited_concurrency += 1
            account.rate_limited += 1
            return _answer(429, cfg.concurrency_message)

        request_type = body.get("request_type", "async")
        self._stats.note_source(body.get("source"))
        task = self._book.create(
            model=model,
            inp=inp,
            request_type=request_type,
            callback_url=body.get("callback_url") if request_type == "callback" else None,
            provider=body.get("provider", "auto"),
            origin=f"{request.scheme}://{request.host}",
            cost=cost,
            owner=account.key,
        )
        account.balance_micro -= cost_micro
        account.spent_micro += cost_micro
        account.submits += 1
        account.peak = max(account.peak, running + 1)
        self._stats.note_submit(input_key(model, inp))
        self._stats.max_concurrent_tasks = max(self._stats.max_concurrent_tasks, self._book.running)
        if self._faults.lose_submit_answer():
            self._stats.faults["lost_submit"] += 1
            return drop_connection(request, "reset", reset=True)
        return _answer(200, "success", {"taskId": task.task_id})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if get_model(model) is None:
            return _answer(404, f"Model not found: {model}")
        task_id = request.query.get("taskId", "")
        if not task_id:
            return _answer(400, "taskId is required")
        self._book.settle()
        task = self._book.tasks.get(task_id)
        # Another key's task answers as an unknown one: a task belongs to its creator.
        if task is None or task.model != model or task.owner != request[ACCOUNT].key:
            return _answer(404, "task not found")
        now = loop_time()
        data = task.status_data(now, self._book.wall_ms)
        if task.seen_at is None and task.finished:
            task.seen_at = now
        return _answer(200, "success", data)

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        return _answer(200, "success", request[ACCOUNT].balance_micro / 1e6)

    async def _no_route(self, request: web.Request) -> web.StreamResponse:
        return _answer(404, "Not Found")

    # --- /_sim/* -----------------------------------------------------------------------

    async def _stats_route(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _tasks_route(self, request: web.Request) -> web.StreamResponse:
        self._book.settle()
        return web.json_response(self._book.timings())

    async def _finish_route(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if task_id not in self._book.tasks:
            return _answer(404, "task not found")
        self.finish_now(task_id)
        return _answer(200, "success", {"taskId": task_id})

    async def _expire_route(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if task_id not in self._book.tasks:
            return _answer(404, "task not found")
        self.expire_now(task_id)
        return _answer(200, "success", {"taskId": task_id})

    async def _revoke_route(self, request: web.Request) -> web.StreamResponse:
        fingerprint = request.match_info["fingerprint"]
        reads = request.query.get("reads", "1") not in ("0", "false", "no")
        if not self.revoke_key(fingerprint, reads=reads):
            return _answer(404, "no such key")
        return _answer(200, "success", {"revoked": fingerprint})

    # --- task ends ---------------------------------------------------------------------

    def _on_finish(self, task: SimTask) -> None:
        if task.outcome == "success":
            self._stats.tasks_succeeded += 1
        else:
            self._stats.tasks_failed += 1
        if task.request_type == "callback" and task.callback_url:
            data = task.status_data(task.ends_at, self._book.wall_ms)
            self._callbacks.send(
                task.callback_url,
                {"code": 200, "message": "success", "data": data},
                delivered=lambda: _seen(task),
            )

    # --- in-process accessors ----------------------------------------------------------

    def set_api_key(self, key: str) -> None:
        """Accept ``key`` instead of the main one from now on (a key revoked or rotated
        mid-run); the main account keeps its balance and tasks."""
        self._accounts.pop(self._main.key, None)
        self._key = self._main.key = key
        self._accounts[key] = self._main

    def revoke_key(self, key_or_fingerprint: str, *, reads: bool = True) -> bool:
        """Refuse a key's submits from now on (401), as a key revoked mid-run: by the key
        itself or its fingerprint (the first 8 hex digits of its SHA-256). ``reads``: its
        status and balance reads still answer (an account closed to new work whose tasks
        still finish); else every request of it answers 401. False: no such key."""
        for key in list(self._accounts):
            if key_or_fingerprint in (key, fingerprint_of(key)):
                self._accounts[key].revoked = "submits" if reads else "all"
                return True
        return False

    def _account_of(self, header: str | None) -> _Account | None:
        """The live account whose key the Authorization header carries, or None."""
        if not header:
            return None
        scheme, _, given = header.partition(" ")
        account = self._accounts.get(given.strip()) if scheme.lower() == "bearer" else None
        if account is None or account.revoked == "all" or not key_matches(header, account.key):
            return None
        return account

    @property
    def tasks(self) -> dict[str, SimTask]:
        """Every task created, by id (read-only use, please)."""
        return self._book.tasks

    @property
    def balance(self) -> float:
        """Remaining balance in USD (assignable, to top up or drain an account mid-test)."""
        return self._main.balance_micro / 1e6

    @balance.setter
    def balance(self, usd: float) -> None:
        self._main.balance_micro = round(usd * 1e6)

    def set_balance(self, key_or_fingerprint: str, usd: float) -> None:
        """One key's balance (to drain one account of a pool mid-test)."""
        for key, account in self._accounts.items():
            if key_or_fingerprint in (key, fingerprint_of(key)):
                account.balance_micro = round(usd * 1e6)

    def price_of(self, model: str, inp: Mapping[str, Any]) -> float:
        """What one submit of this input costs here: catalog price, else the config's."""
        spec = get_model(model)
        if spec is None:
            raise KeyError(model)
        per_second = spec.price_per_second(inp, self.config.prices)
        if per_second is None:
            per_second = self.config.prices.get("default", 0.07)
        return per_second * float(inp.get("duration", 5))

    def stats(self) -> dict[str, Any]:
        """Counters as a JSON-able dict (the same as ``GET /_sim/stats``)."""
        self._book.settle()
        return self._stats.snapshot(
            concurrent_tasks=self._book.running,
            balance=self.balance,
            spent=sum(a.spent_micro for a in self._accounts.values()) / 1e6,
            keys={
                fingerprint_of(a.key): a.snapshot(self._book.running_by.get(a.key, 0))
                for a in self._accounts.values()
            },
            callbacks_pending=self._callbacks.pending,
        )

    def submits_for(self, model: str, inp: Mapping[str, Any]) -> int:
        """How many accepted submits had exactly this (normalized) input."""
        clean, _ = validate_input(model, inp)
        return self._stats.submits_by_input.get(input_key(model, clean), 0)

    def content(self, url_or_task_id: str, index: int = 0) -> Mp4Content:
        """The bytes behind a result URL (or a task id and result index)."""
        if "/files/" in url_or_task_id:
            task_id, _, name = url_or_task_id.split("/files/", 1)[1].partition("/")
            index = int(name.split(".", 1)[0])
        else:
            task_id = url_or_task_id
        return self._files.content(task_id, index)

    def expected_bytes(self, url_or_task_id: str, index: int = 0) -> bytes:
        """The whole file a download of this result must produce."""
        return self.content(url_or_task_id, index).read()

    def expected_sha256(self, url_or_task_id: str, index: int = 0) -> str:
        """Hex SHA-256 of that file."""
        return self.content(url_or_task_id, index).sha256()

    def expected_size(self, url_or_task_id: str, index: int = 0) -> int:
        """Its length in bytes."""
        return self.content(url_or_task_id, index).size

    def finish_now(self, task_id: str) -> SimTask:
        """End a task now with its planned outcome (its callback leaves now)."""
        return self._book.finish_now(task_id)

    def finish_all(self) -> int:
        """End every running task now (tests that do not want to wait); returns how many."""
        running = [t.task_id for t in self._book.tasks.values() if not t.finished]
        for task_id in running:
            self._book.finish_now(task_id)
        return len(running)

    def expire_now(self, task_id: str) -> None:
        """Make a task's result URLs answer 410 from now on (finishing it first if needed)."""
        self._book.expire_now(task_id)

    async def drain_callbacks(self) -> None:
        """Wait until every callback has been delivered or given up."""
        await self._callbacks.drain()

    async def close(self) -> None:
        """Stop timers and callback deliveries (the server is stopped by its runner)."""
        self._book.close()
        await self._callbacks.close()


def fingerprint_of(key: str) -> str:
    """How a key is named in stats and routes: the first 8 hex of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class _Account:
    """One key's account: its own window of requests, limits, balance and spend."""

    __slots__ = (
        "balance_micro",
        "concurrency_limit",
        "key",
        "peak",
        "rate_limited",
        "revoked",
        "rpm_limit",
        "spent_micro",
        "status_window",
        "submits",
        "window",
    )

    def __init__(
        self, key: str, balance: float, rpm_limit: int | None, concurrency_limit: int | None
    ) -> None:
        self.key = key
        self.balance_micro = round(balance * 1e6)
        self.rpm_limit = rpm_limit  # None: the config's
        self.concurrency_limit = concurrency_limit
        self.window = RollingWindow()
        self.status_window = RollingWindow()
        self.spent_micro = 0
        self.submits = 0
        self.rate_limited = 0
        self.peak = 0
        #: "" live; "submits": refused for submits; "all": refused for every request
        self.revoked = ""

    def snapshot(self, running: int) -> dict[str, Any]:
        return {
            "submits": self.submits,
            "rate_limited": self.rate_limited,
            "running": running,
            "peak_running": self.peak,
            "balance": self.balance_micro / 1e6,
            "spent": self.spent_micro / 1e6,
            "revoked": bool(self.revoked),
        }


#: the request's account, set by the gate for the handlers
ACCOUNT = web.RequestKey("account", _Account)


def _check_body(body: Any) -> str | None:
    """What is wrong with a submit body's envelope (the input is checked by the catalog)."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        return f"Unknown field(s): {', '.join(unknown)}"
    request_type = body.get("request_type", "async")
    if request_type not in ("async", "callback"):
        return "request_type must be async or callback"
    if request_type == "callback":
        url = body.get("callback_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "callback_url is required when request_type=callback"
    provider = body.get("provider", "auto")
    if not isinstance(provider, str) or provider not in _PROVIDERS:
        return "provider must be auto, value or official"
    if not isinstance(body.get("input"), dict):
        return "input is required and must be an object"
    if "source" in body and not isinstance(body["source"], str):
        return "source must be a string"
    return None


def _seen(task: SimTask) -> None:
    if task.seen_at is None:
        task.seen_at = loop_time()
