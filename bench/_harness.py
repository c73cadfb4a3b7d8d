"""Shared plumbing for benchmarks: a simulator subprocess and a measured CLI run.

The simulator runs in its own process (as the real API would be elsewhere), so
the figures of the engine process are its own: CPU from ``os.wait4`` on the
engine's pid alone, peak RSS from its ``ru_maxrss``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KEY = "sim-bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sim:
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return self.url + "/api/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data


@contextmanager
def simulator(workdir: Path, **config: Any) -> Iterator[Sim]:
    """An ``apixo-batch simulate`` subprocess with these SimConfig knobs."""
    port = free_port()
    cfg = workdir / f"sim-{port}.yaml"
    cfg.write_text(yaml.safe_dump({"api_key": KEY, **config}), encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apixo_batch",
            "simulate",
            "--port",
            str(port),
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim = Sim(f"http://127.0.0.1:{port}", proc)
    try:
        end = time.monotonic() + 15
        while True:
            try:
                sim.stats()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        yield sim
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class Measured:
    code: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    summary: dict[str, Any]
    events: list[dict[str, Any]]

    def steady_rate(self, kind: str = "succeeded", warmup_s: float = 0.0) -> float:
        """Events of ``kind`` per second between the end of warm-up and the last submit."""
        subs = [e["at"] for e in self.events if e["event"] == "submitted"]
        if not subs:
            return 0.0
        start, end = subs[0] + warmup_s, subs[-1]
        hits = [e for e in self.events if e["event"] == kind and start <= e["at"] <= end]
        return len(hits) / (end - start) if end > start else 0.0


def run_engine(sim: Sim, job_file: Path, *args: str) -> Measured:
    """Run ``apixo-batch run JOBFILE ARGS --json`` and measure that process alone."""
    env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
    out = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apixo_batch", "run", str(job_file), "--json", *args],
        env=env,
        stdout=out,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    summary: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    for line in out.read().decode().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            events.append(event)
            if event.get("event") == "summary":
                summary = event
    return Measured(
        code=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        summary=summary,
        events=events,
    )


def campaign(workdir: Path, n: int, *, model: str = "kling-2-6", duration: int = 5) -> Path:
    """A job file of ``n`` text-to-video jobs, written as a CSV jobs_file."""
    csv = workdir / "jobs.csv"
    with csv.open("w", encoding="utf-8") as f:
        f.write("id,prompt\n")
        for i in range(n):
            f.write(f"job-{i:06d},benchmark scene {i}\n")
    inp: dict[str, Any] = {"mode": "text-to-video", "duration": duration}
    if model == "kling-2-6":
        inp["sound"] = False
    if model == "wan-2-5":
        inp["resolution"] = "720p"
    doc = {
        "name": "bench",
        "output": {"dir": "out", "filename": "{id}.mp4"},
        "defaults": {"model": model, "input": inp},
        "jobs_file": "jobs.csv",
    }
    path = workdir / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def reference_cpu_ms() -> float:
    """CPU milliseconds of a fixed pure-Python workload (best of 5), printed beside CPU figures.

    The project's VMs change speed from one session to the next and, by up to 20 %,
    within one: the same engine code measured 3.04 and 3.61 s per 1,000 tasks an hour
    apart. A reference time that moved says the machine did, not the engine.
    """

    def once() -> float:
        # Nothing is kept: a benchmark process that grew would hand its size to the
        # engine it forks next (ru_maxrss counts the child from the fork on).
        start = time.process_time()
        total = 0
        for i in range(200_000):
            total += len(json.dumps({"a": str(i), "b": [i, i + 1]}))
        assert total > 0
        return (time.process_time() - start) * 1000

    return min(once() for _ in range(5))


def engine_code() -> str:
    """Where the engine processes of this benchmark import ``apixo_batch`` from.

    They run ``python -m apixo_batch`` with this process's environment and working
    directory, and ``-m`` puts the working directory first on ``sys.path``: started
    from a checkout's root directory, a benchmark measures that checkout, whatever
    ``PYTHONPATH`` says. Printed beside CPU figures so each names the code it
    measured (bench/ab.py compares two revisions safely).
    """
    found = subprocess.run(
        [sys.executable, "-c", "import apixo_batch; print(apixo_batch.__file__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return str(Path(found).parent)


def disk(path: Path) -> str:
    """The file system under ``path``, as benchmark figures should state it (Linux).

    Landing a result creates a file and fsyncs it, so the disk shows in the CPU
    figures. ext4 without a journal (this project's VMs) also scans past every
    inode deleted in the last minutes for each file it creates: runs right
    after deleting thousands of files (a test suite, an earlier benchmark) pay
    a few hundred microseconds of kernel CPU per result file. Point ``TMPDIR``
    at another file system to measure there.
    """
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown file system"
    where = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for line in mounts:
        dev, mnt, kind = line.split()[:3]
        mnt = mnt.replace("\\040", " ")
        inside = where == mnt or where.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) > len(best[1])):
            best = (dev, mnt, kind)
    if best is None:
        return "unknown file system"
    dev, mnt, kind = best
    text = f"{kind} on {dev} ({mnt})"
    if kind == "ext4":
        # jbd2 names the journal after the kernel's block device, which /dev/root or
        # /dev/mapper/* names are not: ask the kernel which device holds the path.
        st = os.stat(where)
        block = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        name = block.resolve().name if block.exists() else Path(dev).name
        journaled = any(Path("/proc/fs/jbd2").glob(f"{name}-*"))
        text += ", with a journal" if journaled else ", no journal"
    return text


@contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="apixo-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mixed_inputs() -> list[tuple[str, dict[str, Any]]]:
    """Every model and mode of the catalog, at each duration (and Wan's resolutions)."""
    image = {"image_urls": ["https://example.com/bench/frame.jpg"]}
    combos: list[tuple[str, dict[str, Any]]] = []
    for duration in (5, 10):
        for mode in ("text-to-video", "image-to-video"):
            extra = image if mode == "image-to-video" else {}
            combos.append(("kling-2-5-turbo-pro", {"mode": mode, "duration": duration, **extra}))
            combos.append(
                ("kling-2-6", {"mode": mode, "duration": duration, "sound": False, **extra})
            )
        for mode in ("standard", "pro", "master"):
            combos.append(
                ("kling-2-1", {"mode": f"{mode}-image-to-video", "duration": duration, **image})
            )
        combos.append(("kling-2-1", {"mode": "master-text-to-video", "duration": duration}))
    for resolution in ("720p", "1080p"):
        for mode in ("text-to-video", "image-to-video"):
            extra = image if mode == "image-to-video" else {}
            combos.append(
                ("wan-2-5", {"mode": mode, "duration": 5, "resolution": resolution, **extra})
            )
    return combos


def mixed_campaign(workdir: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    """``n`` jobs over every model and mode in a seeded random order: (job file for
    apixo-batch, the same jobs as JSONL for the recipe, each with its documented first
    poll)."""
    import random

    from apixo_batch.catalog.models import get_model

    combos = _mixed_inputs()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        model, inp = rng.choice(combos)
        rows.append((f"job-{i:06d}", model, {**inp, "prompt": f"benchmark scene {i}"}))
    engine_rows = workdir / "jobs.jsonl"
    recipe_rows = workdir / "recipe.jsonl"
    with engine_rows.open("w", encoding="utf-8") as e, recipe_rows.open("w", encoding="utf-8") as r:
        for job_id, model, inp in rows:
            e.write(json.dumps({"id": job_id, "model": model, "input": inp}) + "\n")
            spec = get_model(model)
            assert spec is not None
            first = spec.clock(inp).first_poll
            r.write(json.dumps({"model": model, "input": inp, "first_poll": first}) + "\n")
    doc = {
        "name": "bench-mixed",
        "output": {"dir": "out", "filename": "{id}.mp4"},
        "jobs_file": "jobs.jsonl",
    }
    path = workdir / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path, recipe_rows


def task_timings(sim: Sim) -> dict[str, Any]:
    """``GET /_sim/tasks``: each task's [created, ended, seen] in seconds."""
    with urllib.request.urlopen(sim.url + "/_sim/tasks", timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def busy_and_bound(timings: dict[str, Any], slots: int, scale: float) -> dict[str, float]:
    """From ``task_timings``: slots busy in steady state (the time-average of tasks running
    over ``slots``, from the slots-th task created to the last one), the campaign's lower
    bound (real seconds) and the detection delays (unscaled seconds)."""
    tasks = [t for t in timings["tasks"] if t[1] is not None]
    created = sorted(t[0] for t in tasks)
    generation = [t[1] - t[0] for t in tasks]
    lo, hi = created[min(slots, len(created)) - 1], created[-1]
    # Running tasks over [lo, hi]: the overlap of each task's life with the window.
    overlap = sum(max(0.0, min(end, hi) - max(start, lo)) for start, end, _ in tasks)
    busy = overlap / (slots * (hi - lo)) if hi > lo else float("nan")
    seen = [t[2] - t[1] for t in tasks if t[2] is not None]
    return {
        "busy": busy,
        "bound_s": max(sum(generation) / slots, max(generation)),
        "detect_p50": _pct(seen, 0.5) / scale,
        "detect_p90": _pct(seen, 0.9) / scale,
    }
