"""Helpers for end-to-end tests: write a campaign, run the real CLI, read what it left."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apixo_batch.simulator import Simulator

SIM_KEY = "sim-test-key"

#: every mode of every model, one job each (12 jobs)
ALL_MODES: list[dict[str, Any]] = [
    {
        "id": "k25-t2v",
        "model": "kling-2-5-turbo-pro",
        "input": {
            "mode": "text-to-video",
            "prompt": "drone over snowy peaks",
            "duration": 5,
            "aspect_ratio": "16:9",
        },
    },
    {
        "id": "k25-i2v",
        "model": "kling-2-5-turbo-pro",
        "input": {
            "mode": "image-to-video",
            "prompt": "transition",
            "duration": 10,
            "image_urls": ["https://example.com/a.jpg", "https://example.com/b.jpg"],
        },
    },
    {
        "id": "k21-std",
        "model": "kling-2-1",
        "input": {
            "mode": "standard-image-to-video",
            "prompt": "wave",
            "duration": 5,
            "image_urls": ["https://example.com/a.jpg"],
        },
    },
    {
        "id": "k21-pro",
        "model": "kling-2-1",
        "input": {
            "mode": "pro-image-to-video",
            "prompt": "zoom",
            "duration": 10,
            "image_urls": ["https://example.com/a.jpg", "https://example.com/b.jpg"],
        },
    },
    {
        "id": "k21-mt2v",
        "model": "kling-2-1",
        "input": {"mode": "master-text-to-video", "prompt": "city at dusk", "duration": 5},
    },
    {
        "id": "k21-mi2v",
        "model": "kling-2-1",
        "input": {
            "mode": "master-image-to-video",
            "prompt": "pan",
            "duration": 5,
            "image_urls": ["https://example.com/a.jpg"],
        },
    },
    {
        "id": "k26-t2v-sound",
        "model": "kling-2-6",
        "input": {
            "mode": "text-to-video",
            "prompt": "rainy neon street",
            "duration": 5,
            "sound": True,
            "aspect_ratio": "9:16",
        },
    },
    {
        "id": "k26-t2v-silent",
        "model": "kling-2-6",
        "input": {"mode": "text-to-video", "prompt": "calm sea", "duration": 10, "sound": False},
    },
    {
        "id": "k26-i2v",
        "model": "kling-2-6",
        "input": {
            "mode": "image-to-video",
            "prompt": "product spin",
            "duration": 5,
            "sound": True,
            "image_urls": ["https://example.com/p.jpg"],
        },
    },
    {
        "id": "wan-720",
        "model": "wan-2-5",
        "input": {
            "mode": "text-to-video",
            "prompt": "clouds",
            "duration": 5,
            "resolution": "720p",
            "aspect_ratio": "1:1",
        },
    },
    {
        "id": "wan-1080",
        "model": "wan-2-5",
        "input": {
            "mode": "text-to-video",
            "prompt": "mountains",
            "duration": 10,
            "resolution": "1080p",
            "seed": 42,
        },
    },
    {
        "id": "wan-i2v",
        "model": "wan-2-5",
        "input": {
            "mode": "image-to-video",
            "prompt": "zoom in",
            "duration": 5,
            "resolution": "720p",
            "image_urls": ["https://example.com/r.jpg"],
        },
    },
]


def simple_jobs(n: int, model: str = "kling-2-6", prefix: str = "job") -> list[dict[str, Any]]:
    """``n`` small text-to-video jobs with distinct prompts."""
    base: dict[str, Any] = {"mode": "text-to-video", "duration": 5}
    if model == "kling-2-6":
        base["sound"] = False
    if model == "wan-2-5":
        base["resolution"] = "720p"
    return [
        {
            "id": f"{prefix}-{i:04d}",
            "model": model,
            "input": {**base, "prompt": f"scene number {i}"},
        }
        for i in range(n)
    ]


def write_campaign(
    root: Path, jobs: list[dict[str, Any]], *, name: str = "e2e", **extra: Any
) -> Path:
    doc: dict[str, Any] = {"name": name, "output": {"dir": "out", "filename": "{id}.mp4"}}
    doc.update(extra)
    doc["jobs"] = jobs
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def summary(self) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == "summary"]
        assert found, f"no summary event; stderr:\n{self.stderr}"
        return found[-1]


def cli_env(sim: Simulator, key: str = SIM_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIXO_")}
    env.update({"APIXO_API_KEY": key, "APIXO_BASE_URL": sim.base_url, "NO_COLOR": "1"})
    return env


async def start_with(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """``apixo-batch ARGS`` with exactly ``env``, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apixo_batch",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def start_cli(sim: Simulator, *args: str, key: str = SIM_KEY) -> asyncio.subprocess.Process:
    return await start_with(cli_env(sim, key), *args)


async def finish(proc: asyncio.subprocess.Process, limit: float = 60.0) -> CliResult:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"CLI did not finish in {limit}s; stderr:\n{err.decode()}") from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def run_env(*args: str, env: dict[str, str], limit: float = 60.0) -> CliResult:
    """``apixo-batch ARGS`` with exactly ``env``, stdout and stderr piped."""
    return await finish(await start_with(env, *args), limit)


async def run_cli(sim: Simulator, *args: str, key: str = SIM_KEY, limit: float = 60.0) -> CliResult:
    """Run ``apixo-batch ARGS`` against ``sim`` to the end."""
    return await finish(await start_cli(sim, *args, key=key), limit)


async def kill_when(
    proc: asyncio.subprocess.Process, ready: Any, sig: int = signal.SIGKILL, limit: float = 30.0
) -> None:
    """Send ``sig`` once ``ready()`` is true (polled every 10 ms)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not ready():
        if loop.time() > end or proc.returncode is not None:
            raise AssertionError("the moment to kill never came")
        await asyncio.sleep(0.01)
    proc.send_signal(sig)


def journaled_task_ids(out_dir: Path) -> int:
    """How many jobs have a task id in the journal right now (read beside the running CLI)."""
    path = out_dir / ".apixo-batch.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            row = db.execute("SELECT count(*) FROM jobs WHERE task_id IS NOT NULL").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def read_manifest(out_dir: Path) -> list[dict[str, Any]]:
    lines = (out_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assert_byte_exact(sim: Simulator, out_dir: Path, entry: dict[str, Any]) -> None:
    """Every file of a done job is exactly what the simulator served for its URL."""
    assert entry["state"] == "done", entry
    assert len(entry["files"]) == len(entry["result_urls"])
    for name, url, digest in zip(
        entry["files"], entry["result_urls"], entry["sha256"], strict=True
    ):
        path = out_dir / name
        assert path.stat().st_size == sim.expected_size(url)
        assert sha256_of(path) == sim.expected_sha256(url) == digest
    assert not list(out_dir.glob("*.part"))


def disk_full_for(path: Path, monkeypatch: Any) -> list[str]:
    """The disk as full for ``path``: its blocks already given can be written over, no
    write may grow it (ENOSPC), as a full file system does. Every other file writes as
    ever. Returns the refusals made (a test that needed none proves nothing)."""
    import errno
    import fcntl

    real_write, real_pwrite = os.write, os.pwrite
    refused: list[str] = []
    target = str(path)

    def ours(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            return False

    def write(fd: int, data: Any) -> int:
        if ours(fd):
            size = os.fstat(fd).st_size
            appends = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
            end = (size if appends else os.lseek(fd, 0, os.SEEK_CUR)) + len(data)
            if end > size:
                refused.append(f"write {len(data)} bytes")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if ours(fd) and offset + len(data) > os.fstat(fd).st_size:
            refused.append(f"pwrite {len(data)} bytes at {offset}")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    def posix_fallocate(fd: int, offset: int, length: int) -> None:
        if ours(fd) and offset + length > os.fstat(fd).st_size:
            refused.append(f"fallocate {length} bytes at {offset}")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, offset, length)

    real_fallocate = os.posix_fallocate
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "posix_fallocate", posix_fallocate)
    return refused
