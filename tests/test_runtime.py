"""The CLI's event loop: uvloop when installed, the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

from apixo_batch import runtime


def _loop_module() -> str:
    async def probe() -> str:
        return type(asyncio.get_running_loop()).__module__

    return runtime.run(probe())


def test_env_selects_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV, "asyncio")
    assert runtime.event_loop_name() == "asyncio"
    assert _loop_module().startswith("asyncio")


def test_uvloop_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert runtime.event_loop_name() == "uvloop"
    assert _loop_module().startswith("uvloop")


def test_run_returns_the_result_and_raises_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.ENV, raising=False)

    async def ok() -> int:
        await asyncio.sleep(0)
        return 7

    async def boom() -> None:
        raise ValueError("x")

    assert runtime.run(ok()) == 7
    with pytest.raises(ValueError):
        runtime.run(boom())
