"""Small helpers shared by compare.py, cpu_compare.py, callback_bench.py and scaling.py.

``measure`` runs any command as a child and measures that process alone with
``os.wait4`` (CPU s, peak RSS), optionally sending SIGTERM after a time slice;
the rest formats figures (median and spread) and reads a finished run's journal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Proc:
    code: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stopped: bool  # SIGTERM was sent at the end of the slice
    started_at: float  # Unix seconds when the process was spawned
    lines: list[dict[str, Any]] = field(default_factory=list)  # JSON lines of stdout


def measure(
    cmd: list[str], env: dict[str, str] | None = None, stop_after_s: float | None = None
) -> Proc:
    """Run ``cmd``; SIGTERM it after ``stop_after_s``; CPU and peak RSS of that process only."""
    out = tempfile.TemporaryFile()
    t0, started_at = time.monotonic(), time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.DEVNULL)
    stopped = False
    while True:
        # WNOHANG keeps the child's rusage for us (Popen.poll() would reap it and lose it).
        pid, status, usage = os.wait4(
            proc.pid, 0 if stopped or stop_after_s is None else os.WNOHANG
        )
        if pid:
            break
        if stop_after_s is not None and time.monotonic() - t0 >= stop_after_s:
            os.kill(proc.pid, signal.SIGTERM)
            stopped = True
        else:
            time.sleep(0.1)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    lines = [json.loads(line) for line in out.read().decode().splitlines() if line.startswith("{")]
    return Proc(
        code=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        stopped=stopped,
        started_at=started_at,
        lines=lines,
    )


def engine_cmd(job_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "apixo_batch", "run", str(job_file), "--json", *args]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min)"


def med(values: list[float], fmt: str = "{:.1f}") -> str:
    """Median, and the range when there is more than one run: ``12.3 (11.9-13.0)``."""
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def journal_rows(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of a finished run's journal by job id (read only, after the engine exited)."""
    db = sqlite3.connect(f"file:{out_dir / '.apixo-batch.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM jobs")}
    finally:
        db.close()
