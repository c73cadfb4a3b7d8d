"""End to end: which jobs start first (``--order``), and the run's forecast beside its time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e import ALL_MODES, read_manifest, run_cli, write_campaign

from apixo_batch.catalog.models import get_model

pytestmark = pytest.mark.e2e

SCALE = "0.005"


def _expected_s(job: dict[str, Any]) -> float:
    spec = get_model(job["model"])
    assert spec is not None
    clock = spec.clock(job["input"])
    return (clock.typical_min + clock.typical_max) / 2


def _submitted(events: list[dict[str, Any]]) -> list[str]:
    return [e["job"] for e in events if e["event"] == "submitted"]


async def test_longest_expected_generations_start_first_and_the_manifest_keeps_file_order(
    simulator, tmp_path: Path
) -> None:
    """One slot, so the submits show the admission order: the documented clocks' longest
    first, file order among equals; the manifest in job-file order all the same."""
    sim = await simulator(time_scale=float(SCALE))
    job_file = write_campaign(tmp_path, ALL_MODES)
    res = await run_cli(
        sim, "run", str(job_file), "--time-scale", SCALE, "--json", "--max-concurrent", "1"
    )
    assert res.code == 0, res.stderr
    longest_first = sorted(ALL_MODES, key=lambda j: -_expected_s(j))  # stable: file order
    assert _submitted(res.events) == [j["id"] for j in longest_first]
    assert [e["id"] for e in read_manifest(tmp_path / "out")] == [j["id"] for j in ALL_MODES]
    summary = res.summary
    assert summary["planned_wall_s"] > 0
    # One slot: each task waits for the one before; the forecast adds up their clocks.
    total = sum(_expected_s(j) for j in ALL_MODES) * float(SCALE)
    assert summary["planned_wall_s"] >= total
    turnaround = summary["slot_turnaround_s"]
    assert turnaround["count"] == len(ALL_MODES) - 1  # every submit after the first
    assert 0 <= turnaround["p50"] <= turnaround["p90"] <= turnaround["max"]


async def test_order_file_starts_jobs_as_the_file_lists_them(simulator, tmp_path: Path) -> None:
    """``--order file``: a priority list is kept."""
    sim = await simulator(time_scale=float(SCALE))
    job_file = write_campaign(tmp_path, ALL_MODES)
    res = await run_cli(
        sim,
        "run",
        str(job_file),
        *("--time-scale", SCALE, "--json", "--max-concurrent", "1", "--order", "file"),
    )
    assert res.code == 0, res.stderr
    assert _submitted(res.events) == [j["id"] for j in ALL_MODES]
    plan = await run_cli(sim, "plan", str(job_file), "--order", "file", "--json")
    assert plan.code == 0
    assert json.loads(plan.stdout)["wall_time"]["order"] == "file"
