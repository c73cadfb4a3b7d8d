"""Running the simulator: in-process for tests, or as ``apixo-batch simulate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import ValidationError

from .. import runtime
from ..exitcodes import ExitCode
from .app import Simulator
from .config import DEFAULT_API_KEY, SimConfig

__all__ = ["run_simulator", "simulate_command"]

#: in-flight answers (file streams, slow faults) get this long to finish at shutdown
SHUTDOWN_GRACE_S = 1.0


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """Serve a :class:`Simulator` on ``host:port`` (0: a free port) for the ``with`` block.

    ``sim.url`` is ``http://host:port``, ``sim.base_url`` the API base URL.
    """
    sim = Simulator(config)
    runner = web.AppRunner(sim.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    outages: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        sim.url = f"http://{shown}:{bound_port}"
        sim.base_url = sim.url + "/api/v1"
        if sim.config.outages:
            outages = asyncio.ensure_future(_outages(sim, runner, site, host, bound_port))
        yield sim
    finally:
        if outages is not None:
            outages.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outages
        await sim.close()
        await runner.cleanup()


async def _outages(
    sim: Simulator, runner: web.AppRunner, site: web.TCPSite, host: str, port: int
) -> None:
    """Refuse every connection during each configured window (``outages``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for start, length in sorted(sim.config.outages):
        await asyncio.sleep(max(0.0, started + start - loop.time()))
        await site.stop()  # no more connections are accepted...
        if runner.server is not None:
            for conn in list(runner.server.connections):
                conn.force_close()  # ...and the open ones are closed, answers and all
        sim.outages_seen += 1
        await asyncio.sleep(max(0.0, started + start + length - loop.time()))
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()


#: ``simulate`` flags named after the SimConfig setting they override
_LIMITER_FLAGS = (
    "rpm_limit",
    "rpm_window_s",
    "rpm_window",
    "rpm_count_refused",
    "retry_after",
    "status_rpm_limit",
    "concurrency_limit",
    "concurrency_message",
)


def _load_config(args: argparse.Namespace) -> SimConfig:
    overrides: dict[str, object] = {}
    time_scale = getattr(args, "time_scale", None)
    config_path = getattr(args, "config", None)
    # The parser's default is 1.0, indistinguishable from an explicit "--time-scale 1":
    # with a config file, only a value other than the default overrides it.
    if time_scale is not None and not (config_path and time_scale == 1.0):
        overrides["time_scale"] = time_scale
    if getattr(args, "api_key", None):
        overrides["api_key"] = args.api_key
    for name in _LIMITER_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if config_path:
        return SimConfig.from_yaml(config_path, **overrides)
    return SimConfig.model_validate(overrides)


def _describe(error: ValidationError) -> str:
    # Never echo input values: the config may hold the key.
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
        for err in error.errors()
    )


def _key_source(args: argparse.Namespace, config: SimConfig) -> str:
    if getattr(args, "api_key", None):
        return "--api-key"
    if config.api_key:
        return "the config file's api_key"
    if config.resolved_api_key() != DEFAULT_API_KEY:
        return "$APIXO_API_KEY"
    return "the built-in default key (docs/simulate.md)"


async def _serve(config: SimConfig, host: str, port: int, key_source: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_simulator(config, host, port) as sim:
        print(
            f"APIXO simulator listening on {sim.url}\n"
            f"  base URL   {sim.base_url}\n"
            f"  stats      {sim.url}/_sim/stats\n"
            f"  accepts    {key_source}\n"
            f"  time scale {config.time_scale:g}",
            flush=True,
        )
        await stop.wait()
        stats = sim.stats()
    print(
        f"simulator stopped: {stats['requests_total']} requests, "
        f"{stats['tasks_created']} tasks, {stats['rate_limited']} answered 429, "
        f"balance left {stats['balance']:.2f}",
        flush=True,
    )


def simulate_command(args: argparse.Namespace) -> int:
    """``apixo-batch simulate``: serve until SIGINT/SIGTERM; 0 then, 2 for a bad config."""
    try:
        config = _load_config(args)
    except ValidationError as exc:
        print(f"simulate: invalid settings: {_describe(exc)}", file=sys.stderr)
        return ExitCode.INVALID
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        runtime.run(_serve(config, args.host, args.port, _key_source(args, config)))
    except OSError as exc:
        print(
            f"simulate: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return ExitCode.FAILED_JOBS
    return ExitCode.OK
