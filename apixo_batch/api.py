"""The Python API for embedding apixo-batch in an application (the CLI uses it too).

::

    import asyncio
    from apixo_batch import RunOptions, run_campaign, stream_campaign

    options = RunOptions(rpm=3000)
    result = asyncio.run(run_campaign("jobs/campaign.yaml", options, api_key=key))
    print(result.exit_code, result.counts)

    async def watch() -> None:
        async for event in stream_campaign("jobs/campaign.yaml", api_key=key):
            print(event.kind, event.job_id, event.data)

Both load and validate the job file (raising
:class:`~apixo_batch.errors.JobFileError`) and resume from the campaign's
journal exactly like ``apixo-batch run``. They read no environment: the key is
``api_key`` (a run with API work and no key raises
:class:`~apixo_batch.errors.MissingApiKey`) and the API's URL is
``RunOptions.base_url``; the CLI maps ``APIXO_API_KEY`` and ``APIXO_BASE_URL``
onto them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .apixo.secret import ApiKey, KeySpec
from .clock import Clock
from .errors import ApixoError
from .events import Event, EventSink, QueueSink
from .jobs import Campaign, load_campaign
from .pipeline import Engine, RunOptions, RunResult

__all__ = ["build_engine", "run_campaign", "stream_campaign"]


def build_engine(
    job_file: str | Path | Campaign,
    options: RunOptions | None = None,
    *,
    api_key: ApiKey | str | Sequence[KeySpec] | None = None,
    out_dir: str | Path | None = None,
    on_event: EventSink | None = None,
    clock: Clock | None = None,
) -> Engine:
    """An :class:`Engine` for ``job_file`` (a path, or a campaign already loaded; then
    ``out_dir`` is not read), run with ``options`` (the defaults when None).

    ``api_key``: one key, or a pool of them (:class:`KeySpec`, each with its limits)."""
    if isinstance(job_file, Campaign):
        campaign = job_file
    else:
        campaign = load_campaign(job_file, out_dir=out_dir)
    key = ApiKey(api_key) if isinstance(api_key, str) else api_key
    return Engine(campaign, key, options or RunOptions(), clock=clock, on_event=on_event)


async def run_campaign(
    job_file: str | Path,
    options: RunOptions | None = None,
    *,
    api_key: ApiKey | str | Sequence[KeySpec] | None = None,
    out_dir: str | Path | None = None,
    on_event: EventSink | None = None,
) -> RunResult:
    """Run a campaign to the end (or to a stop) and return what happened."""
    engine = build_engine(job_file, options, api_key=api_key, out_dir=out_dir, on_event=on_event)
    return await engine.run()


async def stream_campaign(
    job_file: str | Path,
    options: RunOptions | None = None,
    *,
    api_key: ApiKey | str | Sequence[KeySpec] | None = None,
    out_dir: str | Path | None = None,
) -> AsyncIterator[Event]:
    """Run a campaign, yielding every event as it happens; the last is the ``summary``.

    Leaving the loop early stops the run as an interrupt would (no new submits,
    answers on the wire journaled, manifest written).
    """
    sink = QueueSink()
    engine = build_engine(job_file, options, api_key=api_key, out_dir=out_dir, on_event=sink)

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
