"""End to end: the limiters gateways use (issue 31), each played by the simulator, the real CLI.

The account allows 1,800 requests a minute (60 per 2 s window); the engine is told
its default 9,000. Whatever the limiter (sliding or fixed, refused requests counted
or not, Retry-After truthful, absent or too short, status polls in a window of their
own), every job is done, few requests are answered 429, and the summary says what
the account accepted over its window. bench/limiter_matrix.py measures the same at
a larger scale; tests/apixo/test_limits.py holds the targets on the virtual clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e import run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]
WINDOW = {"rpm_limit": 60, "rpm_window_s": 2.0}

KINDS: dict[str, dict[str, Any]] = {
    "sliding": {},
    "fixed": {"rpm_window": "fixed"},
    "counts-refused-no-retry-after": {"rpm_count_refused": True, "retry_after": "absent"},
    "retry-after-too-short": {"retry_after": "short"},
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_limiter_kind_converges(simulator, tmp_path: Path, kind: str) -> None:
    sim = await simulator(time_scale=0.01, duration_override_s=(0.05, 0.1), **WINDOW, **KINDS[kind])
    # Enough requests for several windows: a run of one or two cannot tell a window
    # from one half or twice as long, and the rate kept would be that ambiguity's.
    job_file = write_campaign(tmp_path, simple_jobs(200))
    res = await run_cli(sim, "run", str(job_file), *FAST, limit=120)
    assert res.code == 0, res.stderr + res.stdout[-2000:]
    assert res.summary["counts"]["done"] == 200
    stats = sim.stats()
    assert stats["rate_limited"] <= 0.05 * stats["requests_total"], stats["requests"]
    # What the account accepted over its window, not the rate allowed when a 429 came
    # (main's engine kept ~8,955 here). A short run on a loaded machine still reads a
    # window now and then as one of 1 to 5 s (fixed windows most): within half and twice
    # the truth here; bench/limiter_matrix.py holds the 15 % target over 600 jobs.
    how = res.summary["learned_limit"]
    assert 900 <= res.summary["learned_rpm"] <= 3_600, how
    assert " per " in (how or ""), how


async def test_a_status_window_of_its_own(simulator, tmp_path: Path) -> None:
    """Status polls in a window of their own (30 per 2 s), submits in theirs (60 per 2 s):
    done, few 429s, each route paced by a gate of its own, and the summary names what
    was learned of each. bench/limiter_matrix.py measures the rate reached."""
    sim = await simulator(
        time_scale=0.01, duration_override_s=(0.05, 0.1), status_rpm_limit=30, **WINDOW
    )
    job_file = write_campaign(tmp_path, simple_jobs(200))
    res = await run_cli(sim, "run", str(job_file), *FAST, limit=120)
    assert res.code == 0, res.stderr + res.stdout[-2000:]
    assert res.summary["counts"]["done"] == 200
    stats = sim.stats()
    assert stats["rate_limited"] <= 0.05 * stats["requests_total"], stats["requests"]
    # Each route learned on its own (a status poll went through while the submits' window
    # was full, and was accepted), and together about what the two windows allow (2,700
    # a minute): within half and twice the truth at this small scale, as above.
    how = res.summary["learned_limit"] or ""
    assert "status polls on their own: " in how and "submits on their own: " in how, how
    assert 1_350 <= res.summary["learned_rpm"] <= 5_400, how


async def test_slot_429s_that_do_not_name_concurrency(simulator, tmp_path: Path) -> None:
    """The account holds 5 tasks and answers a bare "Too Many Requests" over them: the
    engine (told 50) learns the slots, not a lower request rate."""
    sim = await simulator(
        time_scale=0.01,
        duration_override_s=(0.3, 0.5),
        concurrency_limit=5,
        concurrency_message="Too Many Requests",
    )
    job_file = write_campaign(tmp_path, simple_jobs(40))
    res = await run_cli(sim, "run", str(job_file), *FAST, "--max-concurrent", "50", limit=90)
    assert res.code == 0, res.stderr + res.stdout[-2000:]
    assert res.summary["counts"]["done"] == 40
    assert res.summary["learned_slots"] == 5
    assert res.summary["learned_rpm"] is None  # the request rate was never to blame
    # Fewer refusals than tasks (bench/limits_bench.py holds the 0.1-per-task target at
    # 100 slots; with 5, slow start's first window of 10 alone is refused 5 times).
    assert sim.stats()["rate_limited_concurrency"] < 40
