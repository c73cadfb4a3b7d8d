"""Telemetry: the gauges refreshed on the run's loop, the textfile rewritten every few
seconds, a textfile that cannot be written told once (virtual time: looptime)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apixo_batch.pipeline import RunStatistics
from apixo_batch.telemetry import TEXTFILE_EVERY_S, RunMetrics, Telemetry


def snapshot(in_flight: int) -> RunStatistics:
    return RunStatistics(
        requests=0,
        requests_last_minute=0,
        rpm_limit=600,
        rate_limited=0,
        effective_rpm=600.0,
        learned_rpm=None,
        in_flight=in_flight,
        max_concurrent=1000,
        slot_window=1000,
        peak_in_flight=in_flight,
        downloading=0,
        spent_usd=0.0,
        budget_usd=None,
        stop_reason=None,
    )


def in_flight(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "apixo_batch_tasks_in_flight":
                return s.value
    raise AssertionError("no tasks_in_flight")


@pytest.mark.looptime
async def test_keep_fresh_refreshes_each_second_and_rewrites_the_textfile(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    reads: list[float] = []
    loop = asyncio.get_running_loop()

    def stats() -> RunStatistics:
        reads.append(loop.time())
        return snapshot(len(reads))

    telemetry = Telemetry(metrics=RunMetrics("c"), textfile=path)
    task = asyncio.create_task(telemetry.keep_fresh(stats))
    await asyncio.sleep(TEXTFILE_EVERY_S * 2 + 0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(reads) == 11  # at 0, 1, ... 10 s
    # Written at the 5th and 10th refresh: it shows the 10th.
    assert in_flight(path.read_text()) == 10
    telemetry.close(snapshot(42))
    assert in_flight(path.read_text()) == 42


def test_a_textfile_that_cannot_be_written_is_told_once(tmp_path: Path) -> None:
    warnings: list[str] = []
    path = tmp_path / "gone" / "m.prom"
    telemetry = Telemetry(metrics=RunMetrics("c"), textfile=path, warn=warnings.append)
    telemetry.write_textfile()
    telemetry.write_textfile()
    telemetry.close()
    assert len(warnings) == 1 and "--metrics-textfile" in warnings[0]
