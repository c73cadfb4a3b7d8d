"""How the command line runs its event loop: uvloop where it is installed.

uvloop implements the event loop, its timers and its socket transports in C.
The engine spends most of its own CPU in that machinery (a few loop turns,
timers and socket reads per request), so the same run costs noticeably less
CPU on it (`APIXO_BATCH_EVENT_LOOP=asyncio` with bench/engine_bench.py shows how much).
It is declared for Linux and macOS;
elsewhere, or with ``APIXO_BATCH_EVENT_LOOP=asyncio`` (to rule it out while
debugging), the standard loop runs the very same code.

Embedders keep whatever loop they run: :func:`apixo_batch.run_campaign` is a
plain coroutine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["event_loop_name", "run"]

T = TypeVar("T")

ENV = "APIXO_BATCH_EVENT_LOOP"


def _factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` would use."""
    return "asyncio" if _factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)
