"""``review --serve``: the review page served live from the journal, with decisions.

The server reads the journal while a run of the same campaign may be writing it: on a
connection of its own that takes no lock (the journal is SQLite in WAL mode: readers
never block the run's writer), every read inside :meth:`Connection.reading` (it refuses
writes), on one thread of its own so the event loop never waits on the disk. A decision
is the one write: one UPSERT in a short transaction of its own, so the run's journal
thread waits for it at most as long as one commit.

The page asks for the first cards, then for every job, then polls for what changed after
its cursors (jobs by their journal stamp, decisions by their sequence number).

Safe by default: it binds 127.0.0.1 unless told otherwise; every request for data needs
the per-server token (the printed URL carries it in its fragment, which browsers never
send), and on a loopback address the Host must be that address (a rebound DNS name is
refused); a write also needs a same-origin request (``Origin``, ``Sec-Fetch-Site``) with
a JSON body. The page's one script runs under a CSP nonce; user text only reaches it as
JSON set through ``textContent``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from ..errors import JournalError
from ..journal import JobRow, Journal, Totals, last_runs
from .review import _COMPACT, job_json, live_page, page_meta, queued_wait, review_json

__all__ = ["OVERLAP_S", "ReviewServer"]

T = TypeVar("T")

#: how far back of its cursor a poll looks: a job stamped just before another one may be
#: committed just after it (the run stamps a change when it asks, commits in batches)
OVERLAP_S = 2.0
#: the cards the page asks for first, before every job
FIRST_CARDS = 300
#: what the cards play and show: the only files served from the output folder
MEDIA = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".png", ".jpg", ".jpeg"})
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; media-src 'self'; img-src http: https:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


def _refuse(why: str) -> web.Response:
    return web.json_response({"error": why}, status=403)


class ReviewServer:
    """The live review page of one campaign's journal (see the module docstring)."""

    def __init__(
        self,
        state: Path,
        out_dir: Path | None,
        *,
        name: str,
        job_file: str,
        reviewer: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_ms: int = 1000,
    ) -> None:
        self.state = state
        self.out_dir = out_dir.resolve() if out_dir is not None else None
        self.name, self.job_file, self.reviewer = name, job_file, reviewer
        self.host, self.port, self.poll_ms = host, port, poll_ms
        self.token = secrets.token_urlsafe(24)
        self._nonce = secrets.token_urlsafe(16)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="apixo-review")
        self._journal: Journal | None = None
        self._runner: web.AppRunner | None = None

    # -- the journal, on its own thread -------------------------------------------------
    async def _on_thread(self, work: Callable[[Journal], T]) -> T:
        def call() -> T:
            if self._journal is None:
                self._journal = Journal(self.state, lock=False)
            return work(self._journal)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _read(self, work: Callable[[Journal], T]) -> T:
        def reading(j: Journal) -> T:
            try:
                with j.reading():
                    return work(j)
            except Exception as exc:
                raise j.write_refused(exc) from None

        return await self._on_thread(reading)

    def _meta(self, j: Journal) -> dict[str, Any]:
        totals = Totals(j.totals())
        live = {"poll_ms": self.poll_ms, "first": FIRST_CARDS, "reviewer": self.reviewer}
        return page_meta(
            self.name,
            self.job_file,
            runs=last_runs(j),
            spent=totals.spent_known_usd,
            unknown=totals.spent_unknown_jobs,
            live=live,
        )

    def _jobs(self, j: Journal, limit: int | None) -> str:
        """The jobs (up to ``limit``) as the page's JSON, with both cursors taken first:
        what changes during the read comes again with the next poll."""
        cursor = j.last_change()
        decided = j.decisions()
        seq = max((d.seq for d in decided.values()), default=0)
        waiting = queued_wait(last_runs(j).latest)
        parts: list[str] = []
        complete = True
        for row in j.iter_all():
            if not row.in_file and row.task_id is None:
                continue  # removed from the file before it cost anything
            if limit is not None and len(parts) >= limit:
                complete = False
                break
            parts.append(_COMPACT.encode(job_json(row, waiting, decided.get(row.id))))
        head = {"cursor": cursor, "seq": seq, "complete": complete, "meta": self._meta(j)}
        return json.dumps(head)[:-1] + ', "jobs": [' + ",".join(parts) + "]}"

    def _changes(self, j: Journal, since: float, seq: int) -> dict[str, Any]:
        rows, cursor = j.changed_since(since - OVERLAP_S)
        waiting = queued_wait(last_runs(j).latest)
        decided = j.decisions_since(seq)
        shown: list[JobRow] = [r for r in rows if r.in_file or r.task_id is not None]
        return {
            "cursor": max(cursor, since),
            "seq": max((d.seq for d in decided), default=seq),
            "jobs": [job_json(r, waiting) for r in shown],
            "decisions": [{"id": d.job_id, "review": review_json(d)} for d in decided],
        }

    # -- the checks ---------------------------------------------------------------------
    def _hosts(self) -> set[str] | None:
        """The Host values a request may carry; None: any (bound beyond loopback)."""
        if self.host not in LOOPBACK:
            return None
        return {f"{h}:{self.port}" for h in LOOPBACK if h != "::1"}

    @web.middleware
    async def _guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        hosts = self._hosts()
        if hosts is not None and request.host not in hosts:
            return _refuse("this server answers on its own address only")
        path = request.path
        if path.startswith("/api/"):
            given = request.headers.get("X-Review-Token", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return _refuse("the review token is missing or wrong: open the printed URL")
        if path.startswith("/files/"):
            given = request.query.get("t", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return _refuse("the review token is missing or wrong: open the printed URL")
        if request.method not in ("GET", "HEAD"):
            refused = self._same_origin(request, hosts)
            if refused is not None:
                return _refuse(refused)
        response = await handler(request)
        response.headers["Content-Security-Policy"] = _csp(self._nonce)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _same_origin(self, request: web.Request, hosts: set[str] | None) -> str | None:
        """Why a write is refused as not coming from the page itself, or None."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            return f"a write from another site is refused (Sec-Fetch-Site: {site})"
        origin = request.headers.get("Origin")
        if origin is not None:
            allowed = {f"http://{h}" for h in (hosts or {request.host})}
            if origin not in allowed:
                return "a write from another origin is refused"
        if request.content_type != "application/json":
            return "a write is a JSON body"
        return None

    # -- the routes ---------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        meta = await self._read(self._meta)
        return web.Response(text=live_page(meta, self._nonce), content_type="text/html")

    async def _all_jobs(self, request: web.Request) -> web.Response:
        limit_arg = request.query.get("limit")
        limit = int(limit_arg) if limit_arg and limit_arg.isdigit() else None
        text = await self._read(lambda j: self._jobs(j, limit))
        return web.Response(text=text, content_type="application/json")

    async def _changed(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
            seq = int(request.query.get("seq", "0"))
        except ValueError:
            return web.json_response({"error": "since and seq are numbers"}, status=400)
        found = await self._read(lambda j: self._changes(j, since, seq))
        return web.json_response(found)

    async def _decide(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return web.json_response({"error": "a decision names its job: id"}, status=400)
        decision, note = body.get("decision"), body.get("note")
        if decision not in ("keep", "reject", None) or not isinstance(note, str | None):
            return web.json_response(
                {"error": "decision is keep, reject or null; note is text"}, status=400
            )
        job_id, at = body["id"], time.time()
        try:
            made = await self._on_thread(
                lambda j: j.decide(job_id, decision, note=note, reviewer=self.reviewer, at=at)
            )
        except JournalError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({"id": made.job_id, "review": review_json(made)})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        # Only what lies in the output folder, never a hidden file (the journal, a part
        # file): the videos the cards play.
        rel = request.match_info["path"]
        if self.out_dir is None or any(p.startswith(".") for p in rel.split("/")):
            raise web.HTTPNotFound()
        path = (self.out_dir / rel).resolve()
        journal = self.state.resolve()
        if (
            not path.is_relative_to(self.out_dir)
            or path.suffix.lower() not in MEDIA
            or path.name.startswith(journal.name)  # a --state inside the folder, its WAL
            or not path.is_file()
        ):
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    # -- the server ---------------------------------------------------------------------
    async def start(self) -> str:
        """Listen; the page's URL, token included."""
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/api/jobs", self._all_jobs)
        app.router.add_get("/api/changes", self._changed)
        app.router.add_post("/api/decide", self._decide)
        app.router.add_get("/files/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            # The port the OS chose: aiohttp keeps the asyncio server, not the port.
            sockets: list[Any] = list(getattr(site._server, "sockets", None) or [])
            self.port = int(sockets[0].getsockname()[1])
        await self._read(lambda j: j.last_change())  # opens the journal: a bad one fails now
        return self.url

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}/#token={self.token}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

        def shut() -> None:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
