"""The result file route: ``GET /files/{task_id}/{n}.mp4``, like APIXO's CDN.

Public (no key, as the real result URLs are), streamed in bounded memory,
with Content-Length, ``Range`` (206/416), 410 once the result has expired,
and the configured faults: 5xx answers and truncated bodies that promise the
full Content-Length, then close the connection after part of it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable

from aiohttp import web

from .config import SimConfig
from .gate import FaultPlan
from .media import Mp4Content, RangeNotSatisfiable, clip_for, parse_range
from .stats import SimStats
from .tasks import SimTask, loop_time

__all__ = ["OUTCOME", "FileRoute", "drop_connection"]

#: how a request ended when it has no HTTP status ("reset", "truncated", "client_gone")
OUTCOME = web.RequestKey("sim_outcome", str)


def drop_connection(request: web.Request, outcome: str, *, reset: bool) -> web.Response:
    """Close the client's connection without (the rest of) an answer.

    ``reset`` sends a TCP RST (SO_LINGER 0) as a crashed proxy would; otherwise
    buffered bytes are flushed first, so a truncated body arrives up to its cut.
    The returned response is never sent: aiohttp finds the transport closed
    and ends the request quietly.
    """
    request[OUTCOME] = outcome
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return web.Response(status=500)


class FileRoute:
    """Serves the bytes of finished tasks' results."""

    def __init__(
        self,
        config: SimConfig,
        stats: SimStats,
        faults: FaultPlan,
        tasks: dict[str, SimTask],
        settle: Callable[[], None],
    ) -> None:
        self._config = config
        self._stats = stats
        self._faults = faults
        self._tasks = tasks
        self._settle = settle

    def content(self, task_id: str, index: int) -> Mp4Content:
        """The bytes result ``index`` of ``task_id`` has (whether or not it exists): the
        clip of its duration and aspect ratio, padded to the configured size."""
        task = self._tasks.get(task_id)
        clip = clip_for(task.input) if task is not None else None
        return Mp4Content(self._config.seed, task_id, index, self._config.file_size, clip)

    def _find(self, request: web.Request) -> tuple[SimTask, int] | web.Response:
        task_id = request.match_info["task_id"]
        name = request.match_info["name"]
        stem, dot, ext = name.partition(".")
        self._settle()
        task = self._tasks.get(task_id)
        if (
            task is None
            or ext != "mp4"
            or not dot
            or not stem.isdigit()
            or task.state_at(loop_time()) != "success"
            or int(stem) >= task.results
        ):
            return web.Response(status=404, text="Not Found")
        if loop_time() >= task.expires_at:
            return web.Response(status=410, text="Gone: the result URL has expired")
        return task, int(stem)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET/HEAD one result file."""
        self._stats.file_requests += 1
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        task, index = found
        status = self._faults.file_error()
        if status is not None:
            self._stats.faults[f"file_{status}"] += 1
            return web.Response(status=status, text="upstream storage error")

        content = self.content(task.task_id, index)
        size = content.size
        headers = {
            "Content-Type": "video/mp4",
            "Accept-Ranges": "bytes",
            "ETag": content.etag,
        }
        try:
            byte_range = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        start, end = byte_range if byte_range is not None else (0, size)
        if byte_range is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

        resp = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp

        cut = self._faults.truncate_at(end - start)
        stop = end if cut is None else start + cut
        for chunk in content.chunks(start, stop):
            await resp.write(chunk)
            self._stats.file_bytes_sent += len(chunk)
        if cut is not None:
            self._stats.faults["truncated"] += 1
            return drop_connection(request, "truncated", reset=False)
        await resp.write_eof()
        return resp
