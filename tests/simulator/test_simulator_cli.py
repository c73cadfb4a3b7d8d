"""``apixo-batch simulate``: a real process that serves, never prints the key, stops cleanly."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from apixo_batch.simulator.server import _load_config

KEY = "sk-sim-cli-distinctive-7731"


def _env() -> dict[str, str]:
    return {**os.environ, "APIXO_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}


async def test_simulate_serves_until_sigint() -> None:
    """The command prints its URL (not the key), serves the API, and exits 0 on SIGINT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apixo_batch",
        "simulate",
        "--port",
        "0",
        "--time-scale",
        "0.01",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first
        base = match.group(1) + "/api/v1"
        async with aiohttp.ClientSession() as http:
            ok = {"Authorization": f"Bearer {KEY}"}
            async with http.get(f"{base}/apikeys/current-balance", headers=ok) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"] == 1000.0
            bad = {"Authorization": "Bearer nope"}
            async with http.get(f"{base}/apikeys/current-balance", headers=bad) as resp:
                assert resp.status == 401
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    text = first + out.decode() + err.decode()
    assert "time scale 0.01" in text
    assert "simulator stopped: 2 requests" in text
    assert KEY not in text


async def test_simulate_bad_config_exits_2_without_echoing_the_key(tmp_path: Path) -> None:
    """An invalid config file exits 2 naming the field, never printing the key."""
    config = tmp_path / "sim.yaml"
    config.write_text(f"api_key: {KEY}\nrpm_limit: lots\nbogus: 1\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apixo_batch",
        "simulate",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    text = out.decode() + err.decode()
    assert "rpm_limit" in text and "bogus" in text
    assert KEY not in text


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "time_scale": 1.0,
        "config": None,
        "api_key": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_command_line_time_scale_overrides_the_config_file(tmp_path: Path) -> None:
    """--time-scale beats the file's time_scale; the parser's default does not."""
    config = tmp_path / "sim.yaml"
    config.write_text("time_scale: 0.05\nrpm_limit: 77\n", encoding="utf-8")
    assert _load_config(_args(config=str(config), time_scale=0.2)).time_scale == 0.2
    from_file = _load_config(_args(config=str(config)))
    assert (from_file.time_scale, from_file.rpm_limit) == (0.05, 77)
    assert _load_config(_args(time_scale=0.3)).time_scale == 0.3
    assert _load_config(_args(api_key="k2")).resolved_api_key() == "k2"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    """A config path that does not exist raises OSError (the command exits 2)."""
    with pytest.raises(OSError):
        _load_config(_args(config=str(tmp_path / "nope.yaml")))


def test_limiter_flags_override_the_config_file(tmp_path: Path) -> None:
    """The limiter flags of ``simulate`` (parsed as the CLI parses them) set the account's
    limiter; an unset flag leaves the file's setting, and the defaults are APIXO's."""
    from apixo_batch.cli.entry import build_parser

    config = tmp_path / "sim.yaml"
    config.write_text("rpm_limit: 77\nrpm_window_s: 5\n", encoding="utf-8")
    argv = [
        "simulate",
        "--config",
        str(config),
        "--rpm-window",
        "fixed",
        "--rpm-count-refused",
        "--retry-after",
        "absent",
        "--status-rpm-limit",
        "9",
        "--concurrency-message",
        "Too Many Requests",
    ]
    cfg = _load_config(build_parser().parse_args(argv))
    assert (cfg.rpm_limit, cfg.rpm_window_s, cfg.rpm_window) == (77, 5.0, "fixed")
    assert (cfg.rpm_count_refused, cfg.retry_after, cfg.status_rpm_limit) == (True, "absent", 9)
    assert cfg.concurrency_message == "Too Many Requests"
    default = _load_config(build_parser().parse_args(["simulate"]))
    assert (default.rpm_limit, default.rpm_window_s, default.rpm_window) == (
        10_000,
        60.0,
        "sliding",
    )
    assert (default.rpm_count_refused, default.retry_after) == (False, "truthful")
