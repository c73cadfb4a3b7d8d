"""The ``simulator`` fixture: a factory of in-process APIXO simulators on 127.0.0.1.

::

    async def test_something(simulator):
        sim = await simulator(time_scale=0.01, error_rate_500=0.1)
        client = ApixoClient(ApiKey(SIM_KEY), sim.base_url)

Keyword arguments are :class:`SimConfig` fields (``config=`` passes a whole
one). ``api_key`` defaults to ``SIM_KEY`` so a test does not depend on the
environment. Every simulator started is stopped after the test. Import
``simulator_fixture``: it registers as ``simulator``, so a test's parameter
does not shadow the import.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import aiohttp
import pytest

from apixo_batch.simulator import SimConfig, Simulator, run_simulator

__all__ = ["SIM_KEY", "SimulatorFactory", "api_call", "simulator_fixture"]

SIM_KEY = "sim-test-key"


class SimulatorFactory(Protocol):
    def __call__(
        self, *, config: SimConfig | None = None, **knobs: Any
    ) -> Awaitable[Simulator]: ...


@pytest.fixture(name="simulator")
async def simulator_fixture() -> AsyncIterator[SimulatorFactory]:
    """Start simulators on free ports; all are torn down when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, config: SimConfig | None = None, **knobs: Any) -> Simulator:
            if config is None:
                knobs.setdefault("api_key", SIM_KEY)
                config = SimConfig(**knobs)
            elif knobs:
                config = SimConfig.model_validate({**config.model_dump(), **knobs})
            return await stack.enter_async_context(run_simulator(config))

        yield start


async def api_call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    key: str | None = SIM_KEY,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One raw request: (HTTP status, decoded JSON body or None, headers)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.request(method, url, json=body, params=params, headers=headers) as resp:
        raw = await resp.read()
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return resp.status, decoded, dict(resp.headers)
