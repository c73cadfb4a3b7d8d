"""The Python API for embedding apixo-batch in an application (the CLI uses it too).

::

    import asyncio
    from apixo_batch import run_campaign, stream_campaign

    result = asyncio.run(run_campaign("jobs/campaign.yaml", rpm=3000))
    print(result.exit_code, result.counts)

    async def watch() -> None:
        async for event in stream_campaign("jobs/campaign.yaml"):
            print(event.kind, event.job_id, event.data)

Both read the key from ``APIXO_API_KEY`` unless ``api_key`` is given, load and
validate the job file (raising :class:`~apixo_batch.errors.JobFileError`),
and resume from the campaign's journal exactly like ``apixo-batch run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .apixo.secret import ApiKey, load_api_key
from .clock import Clock
from .defaults import DEFAULT_BASE_URL
from .errors import ApixoError
from .events import Event, EventSink, QueueSink
from .jobs import Campaign, load_campaign
from .pipeline import Engine, RunOptions, RunResult

__all__ = ["build_engine", "run_campaign", "stream_campaign"]


def build_engine(
    job_file: str | Path | Campaign,
    *,
    api_key: ApiKey | str | None = None,
    out_dir: str | Path | None = None,
    on_event: EventSink | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> Engine:
    """An :class:`Engine` for ``job_file`` (a path, or a campaign already loaded);
    ``options`` are :class:`RunOptions` fields."""
    if isinstance(job_file, Campaign):
        campaign = job_file
    else:
        campaign = load_campaign(job_file, out_dir=out_dir)
    key = ApiKey(api_key) if isinstance(api_key, str) else (api_key or load_api_key())
    options.setdefault("base_url", os.environ.get("APIXO_BASE_URL") or DEFAULT_BASE_URL)
    if "state_path" in options and options["state_path"] is not None:
        options["state_path"] = Path(options["state_path"])
    return Engine(campaign, key, RunOptions(**options), clock=clock, on_event=on_event)


async def run_campaign(
    job_file: str | Path,
    *,
    api_key: ApiKey | str | None = None,
    out_dir: str | Path | None = None,
    on_event: EventSink | None = None,
    **options: Any,
) -> RunResult:
    """Run a campaign to the end (or to a stop) and return what happened."""
    engine = build_engine(job_file, api_key=api_key, out_dir=out_dir, on_event=on_event, **options)
    return await engine.run()


async def stream_campaign(
    job_file: str | Path,
    *,
    api_key: ApiKey | str | None = None,
    out_dir: str | Path | None = None,
    **options: Any,
) -> AsyncIterator[Event]:
    """Run a campaign, yielding every event as it happens; the last is the ``summary``.

    Leaving the loop early stops the run as an interrupt would (no new submits,
    answers on the wire journaled, manifest written).
    """
    sink = QueueSink()
    engine = build_engine(job_file, api_key=api_key, out_dir=out_dir, on_event=sink, **options)

    async def drive() -> RunResult:
        try:
            return await engine.run()
        finally:
            sink.close()

    task = asyncio.create_task(drive())
    try:
        while True:
            event = await sink.queue.get()
            if event is None:
                break
            yield event
        await task  # surfaces an exception from the run
    finally:
        if not task.done():
            engine.request_stop()
            # The consumer has left: a run that could not go on (its settings, its disk) is
            # no news to it; a bug still is, and goes on to it.
            with contextlib.suppress(ApixoError, OSError):
                await task
