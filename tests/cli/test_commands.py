"""run, status, plan and download as people and scripts see them: text, exit codes, no leaks."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    SIM_KEY,
    assert_byte_exact,
    cli_env,
    finish,
    kill_when,
    read_manifest,
    run_cli,
    run_env,
    simple_jobs,
    start_cli,
    write_campaign,
)

from apixo_batch.cli import entry as cli
from apixo_batch.simulator import Simulator

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]
ESC = "\x1b["


def plain_env(sim: Simulator, *, key: str | None = SIM_KEY, **extra: str) -> dict[str, str]:
    """The CLI's environment: a colour-capable TERM, no NO_COLOR / FORCE_COLOR unless given."""
    env = cli_env(sim, key or "unused")
    for name in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "COLUMNS"):
        env.pop(name, None)
    if key is None:
        del env["APIXO_API_KEY"]
    env["TERM"] = "xterm-256color"
    env.update(extra)
    return env


async def run_on_terminal(*args: str, env: dict[str, str], limit: float = 60.0) -> tuple[int, str]:
    """``apixo-batch ARGS`` with stdout and stderr on a pseudo-terminal: (exit code, screen)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    screen = bytearray()
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def drain() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer is gone
            data = b""
        if data:
            screen.extend(data)
        else:
            loop.remove_reader(master)
            closed.set()

    loop.add_reader(master, drain)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apixo_batch",
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        code = await asyncio.wait_for(proc.wait(), limit)
        await asyncio.wait_for(closed.wait(), 10)
    finally:
        loop.remove_reader(master)
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return code, screen.decode("utf-8", "replace")


_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colour_codes(text: str) -> list[str]:
    """Every SGR escape in ``text`` that sets a foreground or background colour."""
    found = []
    for match in _SGR.finditer(text):
        params = [int(p) if p else 0 for p in match.group(1).split(";")]
        i = 0
        while i < len(params):
            p = params[i]
            if p in (38, 48) or 30 <= p <= 37 or 40 <= p <= 47 or 90 <= p <= 97 or 100 <= p <= 107:
                found.append(match.group(0))
                break
            i += 1
    return found


def with_one_failure(n: int) -> list[dict[str, Any]]:
    jobs = simple_jobs(n)
    jobs[-1]["input"]["prompt"] = "an nsfw scene"
    return jobs


# --- no escape codes in pipes; NO_COLOR ------------------------------------------------


async def test_piped_output_has_no_escape_codes(simulator, tmp_path: Path) -> None:
    """stdout and stderr are pipes: run, status, plan and download print no escape codes."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, with_one_failure(4)))
    env = plain_env(sim)
    results = {
        "plan": await run_env("plan", job_file, env=env),
        "run": await run_env("run", job_file, *FAST, env=env),
        "status": await run_env("status", job_file, env=env),
        "download": await run_env("download", job_file, *FAST, env=env),
        "run -v": await run_env("run", job_file, *FAST, "-v", env=env),
    }
    assert results["plan"].code == 0 and results["status"].code == 0
    assert results["run"].code == 1  # the nsfw job failed
    assert "failed: job-0003 SensitiveContentDetected" in results["run"].stderr
    assert "4 jobs: 3 done, 1 failed" in results["run"].stderr
    for name, res in results.items():
        assert ESC not in res.stdout and ESC not in res.stderr, name
        assert "\x1b" not in res.stdout + res.stderr, name


async def test_no_color_drops_colours_on_a_terminal(simulator, tmp_path: Path) -> None:
    """On a terminal the live view is coloured; with NO_COLOR set, run and plan print none."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, with_one_failure(4)))
    code, screen = await run_on_terminal(
        "run", job_file, *FAST, "--out", str(tmp_path / "a"), env=plain_env(sim)
    )
    assert code == 1, screen
    assert colour_codes(screen), "a terminal without NO_COLOR should get colours (control)"
    nc = plain_env(sim, NO_COLOR="1")
    code, screen = await run_on_terminal(
        "run", job_file, *FAST, "--out", str(tmp_path / "b"), env=nc
    )
    assert code == 1, screen
    assert "4 jobs: 3 done, 1 failed" in screen
    assert colour_codes(screen) == []
    code, screen = await run_on_terminal("plan", job_file, env=nc)
    assert code == 0 and "kling-2-6" in screen
    assert colour_codes(screen) == []
    code, screen = await run_on_terminal("status", job_file, "--out", str(tmp_path / "b"), env=nc)
    assert code == 0 and "done" in screen
    assert colour_codes(screen) == []


# --- -q ----------------------------------------------------------------------------------


async def test_quiet_prints_only_errors_and_the_summary(simulator, tmp_path: Path) -> None:
    """-q: the failure line and the summary on stderr, nothing else; stdout empty."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, with_one_failure(3)))
    res = await run_env("run", job_file, *FAST, "-q", env=plain_env(sim))
    assert res.code == 1
    assert res.stdout == ""
    head, sep, summary = res.stderr.partition("\napixo-batch: 3 jobs: 2 done, 1 failed")
    assert sep, res.stderr
    assert "balance" not in head
    [line] = [line for line in head.splitlines() if line]
    assert line.startswith("apixo-batch: failed: job-0002 SensitiveContentDetected")
    assert "manifest" in summary


async def test_quiet_clean_run_prints_just_the_summary(simulator, tmp_path: Path) -> None:
    """-q on a run without trouble: stderr is the summary alone."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_env("run", job_file, *FAST, "-q", env=plain_env(sim))
    assert res.code == 0, res.stderr
    assert res.stdout == ""
    assert res.stderr.lstrip("\n").startswith("apixo-batch: 2 jobs: 2 done, 0 failed")


# --- status ------------------------------------------------------------------------------


async def test_status_before_any_run_exits_1_and_creates_nothing(simulator, tmp_path: Path) -> None:
    """`status` on a campaign that never ran: exit 1, says so, leaves no journal behind."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_env("status", job_file, env=plain_env(sim))
    assert res.code == 1
    assert "has not run yet" in res.stderr
    assert res.stdout == ""
    assert not (tmp_path / "out" / ".apixo-batch.sqlite").exists()
    as_json = await run_env("status", job_file, "--json", env=plain_env(sim))
    # --json: still the one object on stdout, saying there is no journal yet.
    data = json.loads(as_json.stdout)
    assert as_json.code == 1 and data["journal"] is None and data["counts"] == {}
    assert "has not run yet" in data["error"]
    assert sim.stats()["requests_total"] == 0


async def test_status_after_run_shows_counts_without_requests(simulator, tmp_path: Path) -> None:
    """After a run `status` shows counts per state (text and --json) and sends no request."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, with_one_failure(4)))
    assert (await run_cli(sim, "run", job_file, *FAST)).code == 1
    before = sim.stats()["requests_total"]
    res = await run_env("status", job_file, env=plain_env(sim))
    assert res.code == 0, res.stderr
    counts = dict(re.findall(r"^\s+(\w+)\s+(\d+)\s*$", res.stdout, re.MULTILINE))
    assert counts == {"done": "3", "failed": "1"}
    as_json = await run_env("status", job_file, "--json", env=plain_env(sim))
    assert as_json.code == 0
    doc = json.loads(as_json.stdout)
    assert doc["counts"] == {"done": 3, "failed": 1}
    assert doc["in_flight"] == [] and doc["not_downloaded"] == []
    assert doc["possibly_duplicated"] == 0
    assert sim.stats()["requests_total"] == before


async def test_status_json_lists_tasks_left_in_flight(simulator, tmp_path: Path) -> None:
    """A task left pending by --max-wait shows in `status --json` in_flight with its task id."""
    sim = await simulator(time_scale=0.01, duration_override_s=(3.0, 3.0))
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    res = await run_cli(sim, "run", job_file, *FAST, "--json", "--max-wait", "0.005")
    assert res.code == 1, res.stderr
    [entry] = read_manifest(tmp_path / "out")
    doc = json.loads((await run_env("status", job_file, "--json", env=plain_env(sim))).stdout)
    assert doc["in_flight"] == [{"id": "job-0000", "task_id": entry["task_id"]}]
    text = await run_env("status", job_file, env=plain_env(sim))
    assert "in flight" in text.stdout


async def test_status_lists_results_not_downloaded_then_download_gets_them(
    simulator, tmp_path: Path
) -> None:
    """Results the file host refused: `status` lists them with their expiry; `download`
    later brings them home byte-exact without a single API submit."""
    sim = await simulator(time_scale=0.01, file_error_rate=1.0)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_cli(sim, "run", job_file, *FAST, "--json")
    assert res.code == 1, res.stderr
    assert {e["state"] for e in read_manifest(tmp_path / "out")} == {"pending"}
    doc = json.loads((await run_env("status", job_file, "--json", env=plain_env(sim))).stdout)
    assert doc["counts"] == {"succeeded": 2}
    assert [w["id"] for w in doc["not_downloaded"]] == ["job-0000", "job-0001"]
    assert all(w["expires_in_s"] > 0 for w in doc["not_downloaded"])
    text = (await run_env("status", job_file, env=plain_env(sim))).stdout
    assert "2 result(s) not downloaded yet" in text
    assert re.search(r"job-0000: expires in [0-9.]+ h", text), text
    # 15 days x 0.01 = 3.6 h left: under 48 h, but not under 48 h x 0.01, the scale the
    # run used; status and download's warning agree on which one applies.
    assert text.count("EXPIRES SOON") == 2
    scaled = await run_env("status", job_file, *FAST, "--json", env=plain_env(sim))
    assert [w["expires_soon"] for w in json.loads(scaled.stdout)["not_downloaded"]] == [False] * 2
    assert (
        "EXPIRES SOON" not in (await run_env("status", job_file, *FAST, env=plain_env(sim))).stdout
    )
    sim.config.file_error_rate = 0.0
    submits = sim.stats()["submits_accepted"]
    dl = await run_env("download", job_file, *FAST, env=plain_env(sim))
    assert dl.code == 0, dl.stderr
    assert sim.stats()["submits_accepted"] == submits
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)


# --- download ----------------------------------------------------------------------------


async def test_download_with_nothing_left_sends_no_request(simulator, tmp_path: Path) -> None:
    """`download` after a finished run: exit 0, not one request of any kind."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    assert (await run_cli(sim, "run", job_file, *FAST)).code == 0
    before = sim.stats()["requests_total"]
    res = await run_env("download", job_file, *FAST, env=plain_env(sim))
    assert res.code == 0, res.stderr
    assert sim.stats()["requests_total"] == before


async def test_download_never_submits(simulator, tmp_path: Path) -> None:
    """`download` on a campaign never run submits nothing: all pending, exit 1, no request."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    res = await run_env("download", job_file, *FAST, env=plain_env(sim, key=None))
    assert res.code == 1, res.stderr
    assert sim.stats()["requests_total"] == 0
    assert {e["state"] for e in read_manifest(tmp_path / "out")} == {"pending"}


# --- refusals before any request ---------------------------------------------------------


async def test_run_without_api_key_exits_2_and_sends_nothing(simulator, tmp_path: Path) -> None:
    """No APIXO_API_KEY and no --api-key-file: exit 2, a message naming the variable."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    res = await run_env("run", job_file, *FAST, env=plain_env(sim, key=None))
    assert res.code == 2
    assert "APIXO_API_KEY" in res.stderr
    assert "Traceback" not in res.stderr
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--callback-url", "http://127.0.0.1:9/cb"],
        ["--listen", "127.0.0.1:0"],
    ],
    ids=["callback-url-alone", "listen-alone"],
)
async def test_callback_flags_need_each_other(simulator, tmp_path: Path, flags: list[str]) -> None:
    """--callback-url without --listen (or the reverse): exit 2, said clearly, no request."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    res = await run_env("run", job_file, *FAST, *flags, env=plain_env(sim))
    assert res.code == 2
    assert "--callback-url" in res.stderr and "--listen" in res.stderr
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-concurrent", "1000"),
        ("--rpm", "10000"),
        ("--max-concurrent", "0"),
        ("--rpm", "many"),
        ("--time-scale", "0"),
        ("--budget", "-1"),
    ],
)
async def test_out_of_range_options_exit_2(
    simulator, tmp_path: Path, flag: str, value: str
) -> None:
    """Options past the API's limits or malformed: argparse exits 2 naming the option."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    res = await run_env("run", job_file, flag, value, env=plain_env(sim))
    assert res.code == 2
    assert flag in res.stderr
    assert sim.stats()["requests_total"] == 0
    assert not (tmp_path / "out").exists()


# --- --api-key-file ----------------------------------------------------------------------


async def test_api_key_file_works_and_is_never_printed(simulator, tmp_path: Path) -> None:
    """--api-key-file supplies the key; neither it nor a wrong one shows in output or files."""
    key = "sk-live-FROM-A-FILE-abcdef0123456789"
    sim = await simulator(time_scale=0.01, api_key=key)
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n", encoding="utf-8")
    job_file = str(write_campaign(tmp_path, simple_jobs(2)))
    env = plain_env(sim, key=None)
    res = await run_env("run", job_file, *FAST, "-v", "--api-key-file", str(key_file), env=env)
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 2
    wrong = "sk-live-WRONG-FILE-KEY-9876543210"
    key_file.write_text(wrong, encoding="utf-8")
    other = tmp_path / "other"
    other.mkdir()
    other_job = str(write_campaign(other, simple_jobs(2)))
    bad = await run_env("run", other_job, *FAST, "-v", "--api-key-file", str(key_file), env=env)
    assert bad.code == 3
    bad_json = await run_env(
        "run", other_job, *FAST, "--json", "--api-key-file", str(key_file), env=env
    )
    assert bad_json.code == 3
    for out in (res, bad, bad_json):
        assert key not in out.stdout + out.stderr
        assert wrong not in out.stdout + out.stderr
    for path in [*(tmp_path / "out").rglob("*"), *(other / "out").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and wrong.encode() not in data, path


async def test_unreadable_or_empty_api_key_file_exits_2(simulator, tmp_path: Path) -> None:
    """An --api-key-file that is missing or empty: exit 2 with a message, no request."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(1)))
    missing = str(tmp_path / "no-such-key.txt")
    res = await run_env("run", job_file, "--api-key-file", missing, env=plain_env(sim))
    assert res.code == 2
    assert "--api-key-file" in res.stderr
    empty = tmp_path / "empty-key.txt"
    empty.write_text("\n", encoding="utf-8")
    res = await run_env("run", job_file, "--api-key-file", str(empty), env=plain_env(sim))
    assert res.code == 2
    assert "--api-key-file" in res.stderr and "empty" in res.stderr
    assert sim.stats()["requests_total"] == 0


class _CountingOut:
    """A stdout that records what reached the reader: only flushed text counts."""

    def __init__(self) -> None:
        self.buffered: list[str] = []
        self.flushed: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.buffered.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1
        self.flushed.append("".join(self.buffered))
        self.buffered.clear()


async def test_json_events_of_one_loop_turn_leave_in_one_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--json: events emitted in one loop turn reach the reader together, by the next turn."""
    from apixo_batch.cli.commands import _Printer
    from apixo_batch.events import Submitted
    from apixo_batch.pipeline import RunResult

    out = _CountingOut()
    monkeypatch.setattr(sys, "stdout", out)
    printer = _Printer(json_mode=True, quiet=False, verbose=False, key=None)
    for i in range(5):
        printer(Submitted(f"job-{i}", task_id=f"t{i}", model="kling-2-6", at=1.0))
    assert out.flushes == 0  # nothing written per event
    await asyncio.sleep(0)
    assert out.flushes == 1
    lines = out.flushed[0].splitlines()
    assert [json.loads(line)["job"] for line in lines] == [f"job-{i}" for i in range(5)]
    printer(RunResult(0, counts={}).summary())
    printer.close()  # the last line is not left in the buffer at exit
    assert json.loads(out.flushed[-1])["event"] == "summary"


def test_json_event_outside_a_loop_is_flushed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event emitted with no loop running (before or after a run) is written immediately."""
    from apixo_batch.cli.commands import _Printer
    from apixo_batch.events import Warned

    out = _CountingOut()
    monkeypatch.setattr(sys, "stdout", out)
    printer = _Printer(json_mode=True, quiet=False, verbose=False, key=None)
    printer(Warned(message="x", at=1.0))
    assert out.flushes == 1
    assert json.loads(out.flushed[0])["message"] == "x"


def test_command_line_imports_neither_rich_nor_aiohttp_server_until_needed() -> None:
    """Every CLI process pays its imports: the live view's rich and the callback
    receiver's aiohttp.web are imported only by a run that draws or listens."""
    import subprocess

    code = (
        "import sys, apixo_batch.cli.entry, apixo_batch.cli.commands; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' "
        "or m.startswith('aiohttp.web')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- signals outside the run -------------------------------------------------------------


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads SigCgt from /proc")
async def test_sigterm_while_the_cli_starts_exits_130_and_sends_nothing(
    simulator, tmp_path: Path
) -> None:
    """SIGTERM as soon as the CLI can catch it (still importing, before the run): exit 130
    with a message, no traceback, not one request; the same command then runs to the end."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    proc = await start_cli(sim, "run", job_file, *FAST)
    await kill_when(proc, lambda: _catches(proc.pid, signal.SIGTERM), sig=signal.SIGTERM)
    res = await finish(proc)
    assert res.code == 130, res.stderr
    assert res.stderr.startswith("apixo-batch: interrupted") and "Traceback" not in res.stderr
    assert sim.stats()["requests_total"] == 0
    again = await run_cli(sim, "run", job_file, *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 3


def test_main_puts_back_the_sigterm_handler_it_found(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() turns SIGTERM into an interrupt only while it runs: an embedder's own
    handler is not called meanwhile, and is back afterwards."""
    seen: list[int] = []

    def embedders(signum: int, frame: object) -> None:
        seen.append(signum)

    def terminated(args: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # a no-op syscall: the handler runs before the next line
        raise AssertionError("SIGTERM did not interrupt")

    previous = signal.signal(signal.SIGTERM, embedders)
    try:
        monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", terminated)
        assert cli.main(["status", "jobs/campaign.yaml"]) == 130
        assert signal.getsignal(signal.SIGTERM) is embedders
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == []
    assert "interrupted" in capsys.readouterr().err


def test_sighup_before_the_run_is_an_interrupt_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal that hangs up while the CLI starts: exit 130 and a message, as SIGTERM,
    not death by SIGHUP (129); the handler found is back afterwards."""

    def hung_up(args: object) -> int:
        os.kill(os.getpid(), signal.SIGHUP)
        signal.sigtimedwait([], 0)  # a no-op syscall: the handler runs before the next line
        raise AssertionError("SIGHUP did not interrupt")

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", hung_up)
        assert cli.main(["status", "jobs/campaign.yaml"]) == 130
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert "interrupted" in capsys.readouterr().err


def test_a_run_puts_back_the_signal_handlers_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the run's own handlers come off, SIGTERM is an interrupt again (exit 130 while
    the summary prints), not SIG_DFL (death by signal), which is what the loop leaves."""
    from apixo_batch import runtime
    from apixo_batch.cli.commands import _drive

    class Finished:
        def request_stop(self) -> None:
            raise AssertionError("no signal was sent")

        async def run(self) -> str:
            return "result"

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        assert runtime.run(_drive(Finished())) == "result"  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_main_leaves_sigterm_alone_when_the_handler_it_found_is_not_pythons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """signal.signal answers None for a handler set outside Python: nothing to put back,
    and the command's own exit code comes through (no TypeError)."""
    real = signal.signal
    calls: list[object] = []

    def fake(signum: int, handler: object) -> object:
        calls.append(handler)
        real(signum, handler)  # type: ignore[arg-type]
        return None

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr("apixo_batch.cli.entry.signal.signal", fake)
    monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", lambda args: 7)
    try:
        assert cli.main(["status", "jobs/campaign.yaml"]) == 7
        # SIGTERM and SIGHUP (the hangup of a terminal is a stop too), nothing put back
        assert calls == [signal.default_int_handler] * 2
    finally:
        for sig, handler in before.items():
            real(sig, handler)


@pytest.mark.parametrize(
    ("expires_at", "text"),
    [
        (None, "expiry unknown"),
        (1_000 + 5_400, "expires in 1.5 h"),
        (1_000 - 7_200, "expired 2.0 h ago"),
        (1_000 + 60, "expires now"),
        (1_000.0, "expired just now"),
    ],
)
def test_time_left_says_unknown_and_past_expiries_plainly(
    expires_at: float | None, text: str
) -> None:
    """No '0.0 h' for an expiry the journal does not have, nor a negative one."""
    from apixo_batch.cli.commands import time_left

    assert time_left(expires_at, 1_000.0) == text


def test_download_warning_names_the_scaled_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --time-scale 0.01 the warning threshold is 48 h x 0.01, and it says so."""
    import hashlib
    import time

    from apixo_batch.cli.commands import _warn_expiring
    from apixo_batch.journal import JobState, Journal, NewJob

    path = tmp_path / "state.sqlite"
    journal = Journal(path)
    now = time.time()
    text = json.dumps({"prompt": "x"})
    digest = hashlib.sha256(text.encode()).hexdigest()
    journal.sync([NewJob("a", 0, "kling-2-6", "auto", text, digest, "a.mp4", 0.3)], now)
    journal.transition("a", JobState.SUBMITTING, now)
    journal.transition("a", JobState.SUBMITTED, now, task_id="t-a", submitted_at=now)
    journal.transition("a", JobState.SUCCEEDED, now, result_urls=["u"], expires_at=now + 1_000)
    journal.close()
    _warn_expiring(path, 0.01)
    err = capsys.readouterr().err
    assert "1 result(s) expire within 0.48 hours (48 h x --time-scale)" in err
    assert re.search(r"a: expires in 0\.[23] h", err), err


@pytest.mark.parametrize("quiet", [False, True])
def test_plain_lines_tell_people_what_went_wrong(
    quiet: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json: warnings, stops, failures and downloads given up always get a
    line (one space between words); the balance check and tasks left pending only when
    not -q. Retries of calls still being tried are no news."""
    from apixo_batch.cli.commands import _Printer
    from apixo_batch.events import Expired, Failed, Pending, Preflight, Retried, Stopped, Warned

    printer = _Printer(json_mode=False, quiet=quiet, verbose=False, key=None)
    for event in [
        Preflight(
            message="balance $9.00", balance_usd=9.0, estimated_usd=1.0, unknown_price_jobs=0
        ),
        Warned("j", message="careful"),
        Stopped(reason="budget reached"),
        Failed("j", model="m", fail_code="E", fail_msg="bad input"),
        Failed("k", task_id="t", model="m", fail_code=None, fail_msg=None),
        Expired("j", model="m", message="gone"),
        Pending("j", task_id="t", model="m", message="still running"),
        Retried("j", call="status", error="reset"),
        Retried("j", call="submit", attempt=2, error="reset"),
        Retried(
            "d",
            call="download",
            error="http://h/0.mp4: gave up after 6 attempts (HTTP 503); "
            "left for `apixo-batch download`",
        ),
    ]:
        printer(event)
    lines = capsys.readouterr().err.splitlines()
    chatty = ["apixo-batch: balance $9.00"] if not quiet else []
    assert lines == [
        *chatty,
        "apixo-batch: careful",
        "apixo-batch: budget reached",
        "apixo-batch: failed: j E bad input",
        "apixo-batch: failed: k",
        "apixo-batch: expired: j gone",
        *(["apixo-batch: pending: j: still running"] if not quiet else []),
        "apixo-batch: download: d: http://h/0.mp4: gave up after 6 attempts (HTTP 503); "
        "left for `apixo-batch download`",
    ]
