"""Callback delivery, as APIXO describes it, with knobs to make it misbehave.

When a callback-mode task ends, the status-shaped payload is POSTed to its
``callback_url``. The receiver must answer HTTP 200 within ``callback_timeout_s``
(the webhooks page: any other status, 2xx included, is a failed delivery);
otherwise the delivery is retried up to ``callback_retries`` times after the
delays of ``callback_retry_delays_s`` (30 s first, as the page's table says). Every
wait is scaled by ``time_scale``. ``callback_drop_rate`` loses a delivery outright,
``callback_duplicate_rate`` delivers it twice, ``callback_delay_s`` holds it back.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from .config import SimConfig
from .stats import SimStats

__all__ = ["CallbackSender"]

#: a scaled timeout below this would fail healthy receivers on a busy machine
MIN_TIMEOUT_S = 0.2


class CallbackSender:
    """Owns the HTTP session and every delivery in flight; :meth:`close` ends them all."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self._config = config
        self._stats = stats
        self._rng = random.Random(f"{config.seed}:callbacks")
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.callback_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Deliveries not finished yet (waiting, sending or between retries)."""
        return len(self._inflight)

    def send(
        self, url: str, payload: dict[str, Any], delivered: Callable[[], None] | None = None
    ) -> None:
        """Start delivering ``payload`` to ``url`` in the background; ``delivered`` is called
        once a copy was answered 200."""
        if self._closed:
            return
        cfg = self._config
        if self._rng.random() < cfg.callback_drop_rate:
            self._stats.callbacks_dropped += 1
            return
        copies = 2 if self._rng.random() < cfg.callback_duplicate_rate else 1
        if copies == 2:
            self._stats.callbacks_duplicated += 1
        body = json.dumps(payload, separators=(",", ":")).encode()
        for _ in range(copies):
            task = asyncio.get_running_loop().create_task(self._deliver(url, body, delivered))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def drain(self) -> None:
        """Wait until every delivery has succeeded or given up (tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def _deliver(self, url: str, body: bytes, delivered: Callable[[], None] | None) -> None:
        cfg = self._config
        if cfg.callback_delay_s:
            await asyncio.sleep(cfg.scaled(cfg.callback_delay_s))
        timeout = aiohttp.ClientTimeout(
            total=max(MIN_TIMEOUT_S, cfg.scaled(cfg.callback_timeout_s))
        )
        for attempt in range(cfg.callback_retries + 1):
            if attempt:
                await asyncio.sleep(cfg.scaled(cfg.callback_retry_delay(attempt)))
            if await self._attempt(url, body, timeout):
                self._stats.callbacks_delivered += 1
                if delivered is not None:
                    delivered()
                return
        self._stats.callbacks_failed += 1

    async def _attempt(self, url: str, body: bytes, limit: aiohttp.ClientTimeout) -> bool:
        async with self._slots:
            self._stats.callbacks_attempted += 1
            try:
                async with self._get_session().post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=limit,
                ) as resp:
                    await resp.read()
                    return resp.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                return False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._config.callback_concurrency)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": "apixo-batch-simulator"}
            )
        return self._session

    async def close(self) -> None:
        """Cancel deliveries still in flight and close the session."""
        self._closed = True
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
