"""``run``, ``status`` and ``download``: thin glue from parsed arguments to the Python API."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runtime
from ..api import build_engine
from ..apixo.receiver import callback_url_with_token, new_token, parse_listen
from ..apixo.secret import ApiKey, load_api_key, redact
from ..clock import human_duration
from ..defaults import state_path
from ..errors import ApixoError, JobFileError, StorageError
from ..events import Event
from ..exitcodes import ExitCode
from ..jobs import Campaign, load_campaign
from ..journal import JobRow, JobState, Journal
from ..pipeline import Engine, RunResult, summary_dict
from ..reports.manifest import event_line, render_summary
from .progress import LiveView, PlainView, Tally

if TYPE_CHECKING:
    from rich.console import Console

    from ..outputs.output import Output

__all__ = ["campaign_command"]

EXPIRY_WARN_S = 48 * 3600


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


class _Printer:
    """Events to the terminal: JSON lines on stdout, or progress and short lines on stderr.

    stderr a terminal: a live rich view (``NO_COLOR`` drops the colours, not the view).
    Otherwise (cron, CI): a plain status line every 10 s and one line per failure,
    no escape codes. ``-q``: failures and the summary only. ``-v``: every event.
    """

    def __init__(self, *, json_mode: bool, quiet: bool, verbose: bool, key: ApiKey | None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.key = key
        self.tally = Tally()
        self._view: LiveView | PlainView | None = None
        self._console: Console | None = None
        self._flush_pending = False

    def attach(self, stats: Callable[[], dict[str, object]]) -> None:
        """Start the progress view for an engine (its statistics() feed the rpm and spend)."""
        if self.json_mode or self.quiet or self.verbose:
            return
        if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
            from rich.console import Console

            self._console = Console(stderr=True)
            self._view = LiveView(self.tally, stats, self._console)
        else:
            self._view = PlainView(self.tally, stats, sys.stderr, interval=10.0)
        self._view.start()

    def close(self) -> None:
        self._flush()
        if self._view is not None:
            self._view.stop()
            self._view = None

    def ended_in_error(self, code: ExitCode, message: str) -> ExitCode:
        """A run that could not go on: one line on stderr, and with --json a summary as
        the stream's last line (``exit_code`` and ``error``), as every run ends."""
        message = redact(message, self.key)
        summary = {**summary_dict(RunResult(exit_code=code, counts={})), "error": message}
        line = event_line(Event("summary", time.time(), None, summary))
        if self.verbose and not self.json_mode:
            sys.stderr.write(line + "\n")  # -v: the error is in its JSON summary
            return code
        _err(message)
        if self.json_mode:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return code

    def _flush_soon(self) -> None:
        # Events of one loop turn leave in one write; a reader still gets each line
        # within that turn, and no write is made per event.
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        sys.stdout.flush()

    def _say(self, text: str) -> None:
        text = redact(text, self.key)
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            _err(text)

    def __call__(self, event: Event) -> None:
        self.tally(event)
        if self.json_mode:
            sys.stdout.write(redact(event_line(event), self.key) + "\n")
            self._flush_soon()
            return
        if self.verbose:
            # -v: every event, the summary last, each a JSON line on stderr and nothing else.
            sys.stderr.write(redact(event_line(event), self.key) + "\n")
            return
        d = event.data
        if event.kind in ("warning", "stopped"):
            self._say(str(d.get("message") or d.get("reason")))
        elif event.kind == "preflight" and not self.quiet:
            self._say(str(d.get("message")))
        elif event.kind in ("failed", "expired"):
            why = d.get("fail_code") or ""
            msg = d.get("fail_msg") or d.get("message") or ""
            self._say(f"{event.kind}: {event.job_id} {why} {msg}".rstrip())
        elif event.kind == "pending" and not self.quiet:
            self._say(f"pending: {event.job_id}: {d.get('message', '')}")


def _load(args: argparse.Namespace) -> Campaign:
    return load_campaign(args.jobfile, out_dir=args.out)


def _state_path(args: argparse.Namespace, campaign: Campaign) -> Path:
    if args.state:
        return Path(args.state).resolve()
    return state_path(campaign.output_dir, campaign.path, campaign.name)


def campaign_command(args: argparse.Namespace) -> int:
    try:
        campaign = _load(args)
    except JobFileError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    except OSError as exc:
        _err(f"cannot read the job file: {exc}")
        return ExitCode.INVALID
    if args.command == "status":
        return _status(args, campaign)
    if args.command == "review":
        return _review(args, campaign)
    return _run(args, campaign)


def _run(args: argparse.Namespace, campaign: Campaign) -> int:
    try:
        key = load_api_key(args.api_key_file)
    except (OSError, ValueError) as exc:
        _err(f"cannot read --api-key-file: {exc}")
        return ExitCode.INVALID
    callback_url = getattr(args, "callback_url", None)
    listen = getattr(args, "listen", None)
    if bool(callback_url) != bool(listen):
        _err("callback mode needs both --callback-url (public URL) and --listen HOST:PORT")
        return ExitCode.INVALID
    listen_at = None
    if listen and callback_url:
        try:
            listen_at = parse_listen(listen)
            callback_url_with_token(callback_url, new_token())  # validates the URL
        except ValueError as exc:
            _err(str(exc))
            return ExitCode.INVALID
    printer = _Printer(json_mode=args.json, quiet=args.quiet, verbose=args.verbose, key=key)
    try:
        engine = _engine(args, campaign, key, printer, callback_url, listen_at)
    except (ApixoError, ValueError) as exc:  # a path that cannot exist, options out of range
        return printer.ended_in_error(ExitCode.INVALID, str(exc))
    printer.attach(engine.statistics)
    try:
        if args.command == "download":
            _warn_expiring(engine.state_path, args.time_scale)
        result = runtime.run(_drive(engine))
    except StorageError as exc:  # the journal unreadable
        printer.close()
        return printer.ended_in_error(ExitCode.IO_ERROR, str(exc))
    except ApixoError as exc:  # the journal held by another run, no key
        printer.close()
        return printer.ended_in_error(ExitCode.INVALID, str(exc))
    finally:
        printer.close()
    if not args.json and not args.verbose:
        render_summary(summary_dict(result))
    return result.exit_code


def _engine(
    args: argparse.Namespace,
    campaign: Campaign,
    key: ApiKey | None,
    printer: _Printer,
    callback_url: str | None,
    listen_at: tuple[str, int] | None,
) -> Engine:
    return build_engine(
        campaign,
        api_key=key,
        on_event=printer,
        state_path=_state_path(args, campaign),
        max_concurrent=args.max_concurrent,
        rpm=args.rpm,
        time_scale=args.time_scale,
        callback_url=callback_url,
        listen=listen_at,
        budget=getattr(args, "budget", None),
        allow_partial=getattr(args, "allow_partial", False),
        max_wait_min=args.max_wait,
        retry_failed=getattr(args, "retry_failed", False),
        order=getattr(args, "order", "longest"),
        review=getattr(args, "review", True),
        mode="download" if args.command == "download" else "run",
        **({"base_url": args.base_url} if args.base_url else {}),
    )


async def _drive(engine: Engine) -> RunResult:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    # remove_signal_handler leaves SIG_DFL behind (SIGTERM would then kill the process
    # while the summary is printed): what was there before is put back instead.
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, engine.request_stop)
    try:
        return await engine.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            handler = previous[sig]
            if handler is not None:
                signal.signal(sig, handler)


def _warn_expiring(state: Path | None, time_scale: float) -> None:
    if state is None or not state.exists():
        return
    journal = Journal(state, lock=False)
    try:
        now = time.time()
        soon = [
            r
            for r in journal.in_states([JobState.SUCCEEDED])
            if r.expires_at is not None and r.expires_at - now < EXPIRY_WARN_S * time_scale
        ]
    finally:
        journal.close()
    if soon:
        hours = EXPIRY_WARN_S * time_scale / 3600
        within = (
            f"{hours:.3g} hours" if time_scale == 1 else f"{hours:.3g} hours (48 h x --time-scale)"
        )
        _err(f"WARNING: {len(soon)} result(s) expire within {within}; downloading them first:")
        for r in soon[:20]:
            _err(f"  {r.id}: {time_left(r.expires_at, now)}")


def time_left(expires_at: float | None, now: float) -> str:
    """When a result URL expires, for people: a journal without the time says so."""
    if expires_at is None:
        return "expiry unknown"
    left = expires_at - now
    if abs(left) < 180:  # it would say 0.0 h
        return "expires now" if left > 0 else "expired just now"
    if left > 0:
        return f"expires in {human_duration(left, unit='h')}"
    return f"expired {human_duration(-left, unit='h')} ago"


def _status(args: argparse.Namespace, campaign: Campaign) -> int:
    import json as _json

    state = _state_path(args, campaign)
    if not state.exists():
        message = f"no journal at {state}: this campaign has not run yet"
        if args.json:
            # The same object as ever, on stdout: a script reads "nothing yet", not a gap.
            empty: dict[str, object] = {"journal": None, "counts": {}, "possibly_duplicated": 0}
            print(_json.dumps({**empty, "in_flight": [], "not_downloaded": [], "error": message}))
        _err(message)
        return ExitCode.FAILED_JOBS
    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        if args.json:
            print(_json.dumps({"journal": str(state), "counts": {}, "error": str(exc)}))
        _err(str(exc))
        return ExitCode.IO_ERROR
    try:
        counts = journal.counts()
        waiting = journal.in_states([JobState.SUCCEEDED])
        in_flight = journal.in_states([JobState.SUBMITTED])
        totals = journal.totals()
    finally:
        journal.close()
    now = time.time()
    # The same threshold as `download`'s warning, so the two agree on what is in danger.
    warn_s = EXPIRY_WARN_S * args.time_scale

    def soon(r: JobRow) -> bool:
        return r.expires_at is not None and r.expires_at - now < warn_s

    if args.json:
        print(
            _json.dumps(
                {
                    "journal": str(state),
                    "counts": counts,
                    "possibly_duplicated": int(totals["possibly_duplicated"]),
                    "in_flight": [{"id": r.id, "task_id": r.task_id} for r in in_flight],
                    "not_downloaded": [
                        {
                            "id": r.id,
                            "expires_at": r.expires_at,
                            "expires_in_s": (round(r.expires_at - now) if r.expires_at else None),
                            "expires_soon": soon(r),
                        }
                        for r in waiting
                    ],
                }
            )
        )
        return ExitCode.OK
    print(f"{campaign.name}: journal {state}")
    for st in JobState:
        if counts.get(st.value):
            print(f"  {st.value:<11} {counts[st.value]}")
    if in_flight:
        print(
            f"  {len(in_flight)} task(s) in flight at APIXO: `apixo-batch run` or `download` "
            "follows them"
        )
    if waiting:
        print(f"  {len(waiting)} result(s) not downloaded yet:")
        for r in sorted(waiting, key=lambda r: r.expires_at or 0)[:50]:
            flag = "  EXPIRES SOON" if soon(r) else ""
            print(f"    {r.id}: {time_left(r.expires_at, now)}{flag}")
    return ExitCode.OK


def _review(args: argparse.Namespace, campaign: Campaign) -> int:
    from ..outputs.output import open_output
    from ..reports.review import REVIEW_FILE, write_review

    state = _state_path(args, campaign)
    if not state.exists():
        _err(f"no journal at {state}: this campaign has not run yet")
        return ExitCode.FAILED_JOBS
    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    try:
        output = open_output(campaign.output_dir, state)
    except ApixoError as exc:  # the s3 extra missing
        journal.close()
        _err(str(exc))
        return ExitCode.INVALID
    try:
        path = write_review(
            journal.iter_all(), output.local_dir, name=campaign.name, job_file=args.jobfile
        )
    except OSError as exc:
        _err(f"cannot write {output.local_dir / REVIEW_FILE}: {exc.strerror or exc}")
        return ExitCode.IO_ERROR
    finally:
        journal.close()
    try:
        print(runtime.run(_publish(output, REVIEW_FILE, "text/html")))
    except ApixoError as exc:
        _err(f"{path} written, not uploaded: {exc}")
        return ExitCode.IO_ERROR
    return ExitCode.OK


async def _publish(output: Output, name: str, content_type: str) -> Path | str:
    try:
        return await output.publish(name, content_type)
    finally:
        await output.close()
