"""The progress line and the CLI's help: what a person reads while a run goes on."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import looptime
import pytest

from apixo_batch import runtime
from apixo_batch.cli import commands, progress
from apixo_batch.cli import entry as cli
from apixo_batch.cli.progress import Tally, status_line
from apixo_batch.clock import FakeClock
from apixo_batch.errors import ApixoError
from apixo_batch.exitcodes import ExitCode
from apixo_batch.pipeline import RunResult, RunStatistics
from apixo_batch.pipeline.options import KeyStats


def _stats(**changes: Any) -> RunStatistics:
    """A run's statistics: nothing sent yet, 600 rpm and 30 slots, but for ``changes``."""
    quiet = RunStatistics(
        requests=0,
        requests_last_minute=0,
        rpm_limit=600,
        rate_limited=0,
        effective_rpm=600.0,
        learned_rpm=None,
        in_flight=0,
        max_concurrent=30,
        slot_window=30,
        peak_in_flight=0,
        downloading=0,
        spent_usd=0.0,
        budget_usd=None,
        stop_reason=None,
    )
    return dataclasses.replace(quiet, **changes)


def test_the_progress_rate_is_the_last_minutes_count_not_an_average_since_the_start() -> None:
    """A run 30 s old that sent 305 requests under a 600 rpm limit (its first burst
    included) shows what the account counts: the requests of the last minute, not 610."""
    line = status_line(Tally(), _stats(requests=305, requests_last_minute=305))
    assert "305/600 rpm" in line


def _key(fp: str, **changes: Any) -> KeyStats:
    base = KeyStats(
        fingerprint=fp,
        state="active",
        in_flight=3,
        max_concurrent=4,
        slot_window=4,
        requests=100,
        requests_last_minute=90,
        rpm_limit=300,
        rate_limited=0,
        learned_rpm=None,
        learned_slots=None,
        submitted=10,
        spent_usd=3.0,
        retired=None,
    )
    return dataclasses.replace(base, **changes)


def test_the_status_line_shows_each_key_of_a_pool_by_fingerprint() -> None:
    """Per key: state, in flight against its limit (and learned window), rpm against its
    own, a learned rate, spend; one key shows no key part at all."""
    keys = (
        _key("1a2b3c4d"),
        _key("9f8e7d6c", state="retired", in_flight=1, slot_window=2, learned_rpm=212.4),
    )
    line = status_line(Tally(), _stats(keys=keys))
    assert "keys: 1a2b3c4d active 3/4 90/300 rpm $3.00; " in line
    assert "9f8e7d6c retired 1/4 of 2 90/300 ~212 rpm $3.00" in line
    assert "keys:" not in status_line(Tally(), _stats())


def test_the_status_line_names_what_the_account_taught() -> None:
    """A learned rate and a slot window below --max-concurrent are shown; 429s and the
    spend always are."""
    line = status_line(
        Tally(),
        _stats(learned_rpm=480.4, slot_window=12, rate_limited=3, spent_usd=1234.5),
    )
    assert "rpm (account ~480)" in line and "in flight 0 of 12 slots" in line
    assert "429s 3 | spent ~$1,234.50" in line
    plain = status_line(Tally(), _stats())
    assert "slots" not in plain and "account" not in plain


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["status", "--help"], ["one JSON object", "no effect on status", "48 h"]),
        (["run", "--help"], ["(default 30)", "(default 1.0)", "--order"]),
        (["simulate", "--help"], ["(default 127.0.0.1)", "(default 8787)"]),
        (["plan", "--help"], ["the campaign's job file (YAML)", "--order"]),
    ],
)
def test_help_says_what_the_readme_says(
    argv: list[str], wanted: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    for words in wanted:
        assert words in text, (words, text)


def test_an_error_nothing_caught_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug is told in one line (the key never in it), exit 70; the traceback only when
    APIXO_BATCH_DEBUG asks for it."""
    monkeypatch.setenv("APIXO_API_KEY", "sk-secret-test-key-123")

    def broken(args: object) -> int:
        raise RuntimeError("boom near sk-secret-test-key-123")

    monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", broken)
    monkeypatch.delenv("APIXO_BATCH_DEBUG", raising=False)
    assert cli.main(["status", "jobs/campaign.yaml"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: boom" in err
    assert "sk-secret-test-key-123" not in err and "Traceback" not in err
    monkeypatch.setenv("APIXO_BATCH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["status", "jobs/campaign.yaml"])


def test_the_tally_counts_each_model_from_the_events() -> None:
    """`started` sets the rows from the journal; each later event moves one job along:
    a failed submit leaves `queued`, a failed task leaves `in flight`."""
    from apixo_batch.events import (
        Downloaded,
        Expired,
        Failed,
        Retried,
        Started,
        Submitted,
        Succeeded,
        Throttled,
        Warned,
    )

    tally = Tally()
    per_model = {"a": {"queued": 3, "submitting": 1, "submitted": 1, "done": 2}, "b": {"queued": 2}}
    zero = dict.fromkeys(["spent_usd", "jobs", "queued", "in_flight", "to_download", "done"], 0)
    tally(
        Started(
            per_model=per_model,
            **zero,
            estimated_cost_usd=0.0,
            unknown_price_jobs=0,
            planned_wall_s=None,
        )
    )
    for event in [
        Submitted("x", task_id="t1", model="a"),
        Submitted("y", task_id="t2", model="b"),
        Succeeded("x", task_id="t1", model="a", via="poll", urls=1),
        Downloaded("x", model="a", files=["x.mp4"], bytes=1),
        Failed("z", model="b", fail_code="E", fail_msg="no"),
        Failed("y", task_id="t2", model="b", fail_code="E", fail_msg="no"),
        Expired("w", model="a", message="gone"),
        Retried("x", call="status", error="e"),
        Throttled("x", retry_after=None),
        Warned(message="careful"),
    ]:
        tally(event)
    a, b = tally.rows["a"], tally.rows["b"]
    assert (a.queued, a.in_flight, a.downloading, a.done, a.expired) == (3, 1, 0, 3, 1)
    assert (b.queued, b.in_flight, b.failed) == (0, 0, 2)
    assert (tally.retries, tally.rate_limited, tally.done_this_run) == (1, 1, 1)
    assert tally.warnings == ["careful"]


@pytest.fixture
def virtual_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's own loop (runtime.run) on virtual time, so the FakeClock the stand-in
    engine runs on moves only when the loop is idle."""
    monkeypatch.setattr(runtime, "_factory", lambda: looptime.new_event_loop)


class _Terminal(io.StringIO):
    """stderr as a terminal would be: rich draws its live view on it."""

    def isatty(self) -> bool:
        return True


class _Engine:
    """Stands in for the engine: notes the thread of every statistics() read, and runs on
    a fake clock until the view has drawn three times (or a virtual minute has passed).
    With ``interrupt``, it sends itself SIGINT after the first frame and ends as told."""

    def __init__(self, *, interrupt: bool = False) -> None:
        self.clock = FakeClock()
        self.readers: list[int] = []
        self.loop_thread: int | None = None
        self.interrupt = interrupt
        self.stopped = False

    def statistics(self) -> RunStatistics:
        self.readers.append(threading.get_ident())
        return _stats(requests_last_minute=7, spent_usd=2.5 if self.stopped else 1.5)

    def request_stop(self) -> None:
        assert self.interrupt, "no signal was sent"
        self.stopped = True

    async def run(self) -> RunResult:
        self.loop_thread = threading.get_ident()
        end = self.clock.monotonic() + 60.0
        sent = False
        while self.clock.monotonic() < end:
            await self.clock.advance(1.0)
            if self.stopped:
                return RunResult(exit_code=ExitCode.INTERRUPTED, counts={}, interrupted=True)
            if self.interrupt and self.readers and not sent:
                os.kill(os.getpid(), signal.SIGINT)
                sent = True
            if not self.interrupt and len(self.readers) >= 3:
                break
        return RunResult(exit_code=ExitCode.OK, counts={"done": 0})


def _run_with_view(
    monkeypatch: pytest.MonkeyPatch, stderr: io.StringIO, engine: _Engine, code: int = ExitCode.OK
) -> None:
    monkeypatch.setattr(commands, "_engine", lambda *args: engine)
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("APIXO_API_KEY", raising=False)
    args = argparse.Namespace(
        command="run",
        api_key_file=None,
        callback_url=None,
        listen=None,
        json=False,
        quiet=False,
        verbose=False,
        time_scale=1.0,
    )
    campaign: Any = argparse.Namespace(path=Path("jobs.yaml"))
    assert commands._run(args, campaign) == code


@pytest.mark.parametrize("stderr", [_Terminal, io.StringIO], ids=["live", "plain"])
@pytest.mark.usefixtures("virtual_loop")
def test_the_view_reads_the_engines_statistics_on_the_loops_thread_only(
    monkeypatch: pytest.MonkeyPatch, stderr: type[io.StringIO]
) -> None:
    """The view redraws on the run's clock from a task of the run's loop: no other thread
    reads the engine's state while the loop changes it (a deque iterated from rich's
    refresh thread raised "deque mutated during iteration" and froze the view)."""
    out, engine = stderr(), _Engine()
    _run_with_view(monkeypatch, out, engine)
    assert len(engine.readers) >= 3
    assert set(engine.readers) == {engine.loop_thread}
    assert "7/600 rpm" in out.getvalue() and "spent ~$1.50" in out.getvalue()


@pytest.mark.usefixtures("virtual_loop")
def test_an_interrupt_ends_the_live_view_with_its_last_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C mid-run: the run winds down, the view draws its last frame (what the stop
    left) from the loop, gives the cursor and stderr back, and the run exits 130."""
    out, engine = _Terminal(), _Engine(interrupt=True)
    _run_with_view(monkeypatch, out, engine, code=ExitCode.INTERRUPTED)
    screen = out.getvalue()
    assert "spent ~$1.50" in screen and "spent ~$2.50" in screen
    assert screen.rindex("spent ~$2.50") < screen.rindex("\x1b[?25h")  # cursor shown after
    assert set(engine.readers) == {engine.loop_thread}
    assert sys.stderr is out  # rich's redirection of stderr undone


class _Recorder:
    """A view that notes what it was asked to do."""

    interval = 0.25

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def refresh(self) -> None:
        self.calls.append("refresh")

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.mark.parametrize("ending", ["returns", "raises", "cancelled"])
@pytest.mark.usefixtures("virtual_loop")
def test_shown_stops_the_view_and_its_redraws_however_the_body_ends(ending: str) -> None:
    """Redraws come each interval of the clock; once the body ends, however it ends,
    the view stops once and no redraw task is left on the loop."""
    view, clock = _Recorder(), FakeClock()

    async def body(waiting: asyncio.Event) -> None:
        async with progress.shown(view, clock):
            await clock.advance(1.0)
            if ending == "raises":
                raise ApixoError("the journal is held by another run")
            if ending == "cancelled":
                waiting.set()
                await asyncio.Event().wait()

    async def main() -> tuple[BaseException | None, list[asyncio.Task[Any]]]:
        waiting = asyncio.Event()
        task = asyncio.create_task(body(waiting))
        if ending == "cancelled":
            reached = asyncio.ensure_future(waiting.wait())
            await asyncio.wait({task, reached}, return_when=asyncio.FIRST_COMPLETED)
            reached.cancel()
            task.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        return outcome, [t for t in asyncio.all_tasks() if t.get_name() == "progress"]

    outcome, left = runtime.run(main())
    assert view.calls == ["start"] + ["refresh"] * 4 + ["stop"]
    assert left == []
    expected = {"returns": type(None), "raises": ApixoError, "cancelled": asyncio.CancelledError}
    assert type(outcome) is expected[ending]


class _Broken(_Recorder):
    """A view whose terminal went away after its first frame."""

    def refresh(self) -> None:
        super().refresh()
        raise OSError(5, "Input/output error")


@pytest.mark.usefixtures("virtual_loop")
def test_a_view_that_breaks_is_told_and_leaves_the_runs_outcome_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The terminal goes away mid-run (EIO on a redraw): the run's own result comes back
    as it was (a CI script reads its exit code), the view is still stopped, and one line
    says the view stopped."""
    view, clock = _Broken(), FakeClock()

    async def body() -> str:
        async with progress.shown(view, clock):
            await clock.advance(1.0)
            return "the run's result"

    assert runtime.run(body()) == "the run's result"
    assert view.calls == ["start", "refresh", "stop"]
    assert "the progress view stopped" in capsys.readouterr().err


def _started(queued: int) -> Any:
    from apixo_batch.events import Started

    zero = dict.fromkeys(["spent_usd", "jobs", "queued", "in_flight", "to_download", "done"], 0)
    return Started(
        per_model={"m": {"queued": queued}},
        **zero,
        estimated_cost_usd=0.0,
        unknown_price_jobs=0,
        planned_wall_s=None,
    )


@pytest.mark.looptime
async def test_the_eta_waits_for_a_pace_and_counts_down_while_nothing_ends() -> None:
    """On the run's (virtual) clock: no ETA before ``started`` nor before three jobs have
    ended; while submits take every request and nothing ends, it counts down instead of
    growing with the wait (it was 9:50, then 19:40, then 4:51); at a steady pace it
    lands near the truth without a jump."""
    from apixo_batch.events import Downloaded, Submitted, Succeeded

    clock = FakeClock()
    tally = Tally(clock=clock)
    assert tally.eta_s() is None  # nothing known yet: not "0 s"
    tally(_started(60))
    for i in range(60):
        tally(Submitted(f"j{i}", task_id=f"t{i}", model="m"))

    def end(i: int) -> None:
        tally(Succeeded(f"j{i}", task_id=f"t{i}", model="m", via="poll", urls=1))
        tally(Downloaded(f"j{i}", model="m", files=[f"j{i}.mp4"], bytes=1))

    await clock.advance(300.0)  # the first generations take five minutes
    for i in range(2):
        end(i)
        assert tally.eta_s() is None  # one or two ends give no pace
        await clock.advance(10.0)
    end(2)
    first = tally.eta_s()
    assert first is not None  # 57 left at one per 10 s: about 570 s
    assert 500 <= first <= 640
    readings = [first]
    for _ in range(12):  # two minutes in which nothing ends
        await clock.advance(10.0)
        eta = tally.eta_s()
        assert eta is not None and eta < readings[-1]  # it counts down, never up
        readings.append(eta)
    assert readings[-1] == pytest.approx(first - 120.0)
    # Then one end every 10 s to the last: each end moves the ETA a little, and half-way
    # the ETA is within a fifth of the time actually left.
    for i in range(3, 60):
        await clock.advance(10.0)
        before = tally.eta_s()
        end(i)
        after = tally.eta_s()
        if before is not None and after is not None and i < 59:  # the last end says 0
            assert abs(after - before) <= 0.25 * before + 1e-6
        if i == 30:
            truth = (59 - i) * 10.0
            assert after is not None and abs(after - truth) <= 0.2 * truth + 30.0
    assert tally.eta_s() == 0.0  # all ended


def test_the_eta_counts_only_the_run_clock_it_is_given() -> None:
    """Tally reads the clock it was given (the engine's), never the process's own."""
    clock = FakeClock(start=50.0)
    tally = Tally(clock=clock)
    tally(_started(10))
    from apixo_batch.events import Downloaded

    for i in range(3):
        tally(Downloaded(f"j{i}", model="m", files=[], bytes=0))
    # FakeClock off a virtual loop stands still: three ends at one instant give no pace.
    assert tally.predicted_end is None and tally.eta_s() is None
