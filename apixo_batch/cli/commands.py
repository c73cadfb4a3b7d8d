"""``run``, ``status`` and ``download``: thin glue from parsed arguments to the Python API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runtime
from ..api import build_engine
from ..apixo.receiver import callback_url_with_token, new_token, parse_listen
from ..apixo.secret import ApiKey, KeySpec, redact
from ..clock import Clock, human_duration
from ..defaults import STATE_FILE, STATE_FOLDER, state_path
from ..errors import ApixoError, JobFileError, MissingApiKey, StorageError
from ..events import (
    Event,
    EventSink,
    Expired,
    Failed,
    Pending,
    Preflight,
    Retried,
    Stopped,
    Warned,
)
from ..exitcodes import ExitCode
from ..jobs import Campaign, load_campaign
from ..journal import DoneFiles, JobRow, JobState, Journal, Totals, last_runs
from ..journal.pg import is_database
from ..location import Destination, is_s3, parse_s3
from ..pipeline import Engine, RunOptions, RunResult, RunStatistics
from ..pipeline.owner import other_campaign
from ..planning.selection import Selection
from ..reports.manifest import event_line, render_summary
from .database import database_of, shown_state, state_option
from .environment import KEY_VAR, base_url, load_api_keys, runner_lease
from .progress import LiveView, PlainView, Tally, View, shown
from .select import flat, selection_of, unmatched_only
from .terminal import note_when_stdout_closes, stop_signals

if TYPE_CHECKING:
    from rich.console import Console

    from ..outputs.output import Output
    from ..telemetry import Telemetry

__all__ = ["campaign_command"]

EXPIRY_WARN_S = 48 * 3600


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


def _other_campaign(journal: Journal, state: Path | str, campaign: Campaign) -> str | None:
    """The refusal of a journal kept for another campaign (the journal closed then), or
    None: its jobs are never told as this campaign's."""
    refused = other_campaign(state, journal.get_meta("campaign"), campaign.name)
    if refused is not None:
        journal.close()
    return refused


class _Printer:
    """Events to the terminal: JSON lines on stdout, or progress and short lines on stderr.

    stderr a terminal: a live rich view (``NO_COLOR`` drops the colours, not the view).
    Otherwise (cron, CI): a plain status line every 10 s and one line per failure,
    no escape codes. ``-q``: failures and the summary only. ``-v``: every event.
    """

    def __init__(
        self, *, json_mode: bool, quiet: bool, verbose: bool, key: Sequence[ApiKey] | None
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.key = key
        self.tally = Tally()
        #: the progress view, drawn by _drive on the run's loop (None: no view)
        self.view: View | None = None
        self._console: Console | None = None
        self._flush_pending = False

    def attach(self, stats: Callable[[], RunStatistics], clock: Clock) -> None:
        """Make the progress view for an engine (its statistics() feed the rpm and spend,
        its clock the ETA)."""
        self.tally.clock = clock
        if self.json_mode or self.quiet or self.verbose:
            return
        if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
            from rich.console import Console

            self._console = Console(stderr=True)
            self.view = LiveView(self.tally, stats, self._console)
        else:
            self.view = PlainView(self.tally, stats, sys.stderr, interval=10.0)

    def close(self) -> None:
        self._flush()
        self.view = None

    def ended_in_error(self, code: ExitCode, message: str) -> ExitCode:
        return ended_in_error(
            code, message, json_mode=self.json_mode, verbose=self.verbose, key=self.key
        )

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
        if isinstance(event, Warned):
            self._say(event.message)
        elif isinstance(event, Stopped):
            self._say(event.reason)
        elif isinstance(event, Preflight) and not self.quiet:
            self._say(event.message)
        elif isinstance(event, Failed | Expired):
            why, msg = (
                (event.fail_code, event.fail_msg)
                if isinstance(event, Failed)
                else (None, event.message)
            )
            line = " ".join([f"{event.kind}: {event.job_id}", *filter(None, (why, msg))])
            hint = _FAIL_HINTS.get(event.fail_class or "") if isinstance(event, Failed) else None
            self._say(f"{line} ({hint})" if hint else line)
        elif isinstance(event, Retried) and event.call == "download":
            # The only sign in the human output of why a job ends pending with its result
            # paid: the status it got and the command that fetches it later.
            self._say(f"download: {event.job_id}: {event.error}")
        elif isinstance(event, Pending) and not self.quiet:
            self._say(f"pending: {event.job_id}: {event.message}")


#: what to do about a failed task, by its fail code's class (catalog/failcodes.py)
_FAIL_HINTS = {
    "input": "the input was refused: fix the job, then --retry-failed",
    "content": "the content was flagged: change it, then --retry-failed",
    "transient": "APIXO's provider was busy: --retry-failed may succeed, and pays again",
}


def _selection_refused(args: argparse.Namespace, campaign: Campaign) -> str | None:
    """The one line that refuses the selectors as given (``--fail-code`` without
    ``--retry-failed``, an ``--only`` pattern that matches no job), or None."""
    if getattr(args, "fail_code", None) and not args.retry_failed:
        return "--fail-code narrows --retry-failed: give --retry-failed too"
    if not getattr(args, "only", None):
        return None
    try:
        if campaign.from_journal or args.command != "run":
            return unmatched_only(args, _journal_ids(_state_path(args, campaign)))
        return unmatched_only(args, (job.id for job in campaign.iter_jobs()))
    except (JobFileError, StorageError) as exc:
        return str(exc)


def _journal_ids(state: Path) -> Iterator[str]:
    """Every job id a journal holds (a job removed from the file but paid for included)."""
    if not state.is_file():
        return
    journal = Journal(state, lock=False)
    try:
        yield from (r.id for r in journal.iter_all())
    finally:
        journal.close()


def ended_in_error(
    code: ExitCode,
    message: str,
    *,
    json_mode: bool,
    verbose: bool,
    key: Sequence[ApiKey] | None = None,
) -> ExitCode:
    """A run that could not go on, or start: one line on stderr, and with --json a summary
    as the stream's last line (``exit_code`` and ``error``), as every run ends."""
    message = redact(message, key)
    summary = replace(RunResult(code, counts={}).summary(), at=time.time(), error=message)
    line = event_line(summary)
    if verbose and not json_mode:
        sys.stderr.write(line + "\n")  # -v: the error is in its JSON summary
        return code
    _err(message)
    if json_mode:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return code


def _refused(args: argparse.Namespace, code: ExitCode, message: str) -> ExitCode:
    """``run`` or ``download`` refused before a key was read: told as every run ends."""
    return ended_in_error(code, message, json_mode=args.json, verbose=args.verbose)


def _fail(args: argparse.Namespace, code: ExitCode, message: str) -> ExitCode:
    """A command that cannot start: ``download`` ends as a run does (--json: a summary
    last), ``status`` and ``review`` with one line."""
    if args.command == "download":
        return _refused(args, code, message)
    _err(message)
    return code


def _load(args: argparse.Namespace) -> Campaign:
    return load_campaign(args.jobfile, out_dir=args.out)


def _state_path(args: argparse.Namespace, campaign: Campaign) -> Path:
    if args.state:
        return Path(args.state).resolve()
    return state_path(campaign.output_dir, campaign.path, campaign.name)


def campaign_command(args: argparse.Namespace) -> int:
    if args.command == "status":
        return _status_command(args)
    try:
        campaign = _load(args)
    except (JobFileError, OSError) as exc:
        if (
            args.command in ("status", "download", "review")
            and not is_database(args.state)
            and database_of(args) is None
        ):
            # Paid results are fetched, told and reviewed from the journal alone.
            found = _from_journal(args, _why(exc))
            if isinstance(found, int):
                return found
            campaign = found
        elif isinstance(exc, JobFileError):
            return _refused(args, ExitCode.INVALID, str(exc))
        else:
            return _refused(args, ExitCode.INVALID, f"cannot read the job file: {exc}")
    refused = _selection_refused(args, campaign)
    if refused is not None:
        if args.command in ("run", "download"):
            return _refused(args, ExitCode.INVALID, refused)
        _err(refused)
        return ExitCode.INVALID
    if args.command == "status":
        return _status(args, campaign)
    if args.command == "review":
        return _review(args, campaign)
    return _run(args, campaign)


def _why(exc: Exception) -> str:
    """Why the job file cannot be read, in a few words on one line."""
    if isinstance(exc, JobFileError) and exc.issues:
        more = len(exc.issues) - 1
        return f"{exc.issues[0]}" + (f", and {more} more problem(s)" if more else "")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0]


def _journal_beside(job_file: Path, out: str | None) -> list[Path]:
    """The journals a job file's campaign may have, found without reading it: in --out,
    in ``.apixo-batch/`` beside it, or in an output folder up to two levels below it."""
    if out:
        return [p for p in [Path(out).absolute() / STATE_FILE] if p.is_file()]
    base = job_file.parent
    found = sorted(base.glob(f"{STATE_FOLDER}/*.sqlite"))
    found += sorted(base.glob(f"*/{STATE_FILE}")) + sorted(base.glob(f"*/*/{STATE_FILE}"))
    return [p for p in found if p.is_file()]


def _from_journal(args: argparse.Namespace, why: str) -> Campaign | int:
    """The campaign as its journal knows it (no jobs from the file), or the exit code when
    no one journal is found; ``args.state`` is set to the journal found."""
    job_file = Path(args.jobfile).absolute()
    head = f"job file {args.jobfile} cannot be read ({why})"
    if args.state:
        state = Path(args.state).absolute()
        if not state.is_file():
            return _fail(
                args, ExitCode.INVALID, f"{head}, and there is no journal at --state {state}"
            )
    else:
        found = _journal_beside(job_file, args.out)
        if not found:
            where = args.out or f"{job_file.parent} ({STATE_FOLDER}/*.sqlite, */{STATE_FILE})"
            return _fail(
                args,
                ExitCode.INVALID,
                f"{head}, and no journal was found in {where}: fix the file or give --state",
            )
        if len(found) > 1:
            listed = ", ".join(str(p) for p in found[:5])
            return _fail(
                args,
                ExitCode.INVALID,
                f"{head}, and {len(found)} journals were found ({listed}): give --state",
            )
        state = found[0]
    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        return _fail(args, ExitCode.IO_ERROR, f"{head}, and its journal cannot be read: {exc}")
    try:
        recorded, kept_name = journal.get_meta("output"), journal.get_meta("campaign")
    finally:
        journal.close()
    output: Destination | None = Path(args.out).absolute() if args.out else None
    if output is None:
        if recorded is not None and is_s3(recorded):
            output = parse_s3(recorded)
        elif recorded is not None:
            output = Path(recorded)
        elif state.name == STATE_FILE:
            output = state.parent
        elif args.command != "status":
            return _fail(
                args,
                ExitCode.INVALID,
                f"{head}, and the journal {state} does not say where its results are: give --out",
            )
    _err(f"{head}: working from the journal {state} alone")
    args.state = str(state)
    # The campaign the journal is for (kept by its first run); older journals did not
    # keep it: then the journal's own name, or the job file's.
    name = kept_name or (state.stem if state.parent.name == STATE_FOLDER else job_file.stem)
    return Campaign(
        name=name,
        path=job_file,
        output_dir=output if output is not None else state.parent,
        filename_template="{id}.mp4",
        prices={},
        job_count=0,
        from_journal=True,
    )


def _run(args: argparse.Namespace, campaign: Campaign) -> int:
    try:
        keys = load_api_keys(args.api_key_file)
    except (OSError, ValueError) as exc:
        return _refused(args, ExitCode.INVALID, f"cannot read --api-key-file: {exc}")
    key = [k.key for k in keys]
    callback_url = getattr(args, "callback_url", None)
    listen = getattr(args, "listen", None)
    if bool(callback_url) != bool(listen):
        return _refused(
            args,
            ExitCode.INVALID,
            "callback mode needs both --callback-url (public URL) and --listen HOST:PORT",
        )
    listen_at = None
    if listen and callback_url:
        try:
            listen_at = parse_listen(listen)
            callback_url_with_token(callback_url, new_token())  # validates the URL
        except ValueError as exc:
            return _refused(args, ExitCode.INVALID, str(exc))
    printer = _Printer(json_mode=args.json, quiet=args.quiet, verbose=args.verbose, key=key)
    try:
        telemetry = _telemetry(args, campaign, key)
    except (ApixoError, ValueError) as exc:  # a URL, a port, a path: nothing was sent
        return printer.ended_in_error(ExitCode.INVALID, str(exc))
    try:
        return _run_with(args, campaign, keys, printer, telemetry, callback_url, listen_at)
    finally:
        if telemetry is not None:
            telemetry.close()


def _run_with(
    args: argparse.Namespace,
    campaign: Campaign,
    keys: Sequence[KeySpec],
    printer: _Printer,
    telemetry: Telemetry | None,
    callback_url: str | None,
    listen_at: tuple[str, int] | None,
) -> int:
    def ended_in_error(code: ExitCode, message: str) -> int:
        printer.ended_in_error(code, message)
        if telemetry is not None:
            # Every run ends in a summary, one that could not go on too: to the receivers.
            error = redact(message, [k.key for k in keys])
            telemetry(replace(RunResult(code, counts={}).summary(), at=time.time(), error=error))
        return code

    sink: EventSink = printer if telemetry is None else _Both(printer, telemetry)
    try:
        engine = _engine(args, campaign, keys, sink, callback_url, listen_at)
    except (ApixoError, ValueError) as exc:  # a path that cannot exist, options out of range
        return ended_in_error(ExitCode.INVALID, str(exc))
    printer.attach(engine.statistics, engine.clock)
    note_when_stdout_closes(
        "stdout was closed (its reader went away): the run goes on, and every event still "
        "reaches the journal, the files and the manifest (`apixo-batch status` tells where "
        "it stands)"
    )
    try:
        if args.command == "download" and engine.database is None:
            _warn_expiring(engine.state_path, args.time_scale)
        result = runtime.run(_drive(engine, printer.view, telemetry))
    except StorageError as exc:  # the journal unreadable
        printer.close()
        return ended_in_error(ExitCode.IO_ERROR, str(exc))
    except MissingApiKey:
        printer.close()
        return ended_in_error(ExitCode.INVALID, f"{KEY_VAR} is not set (or give --api-key-file)")
    except ApixoError as exc:  # the journal held by another run
        printer.close()
        return ended_in_error(ExitCode.INVALID, str(exc))
    finally:
        printer.close()
    if not args.json and not args.verbose:
        render_summary(result.summary())
    if telemetry is not None and telemetry.metrics is not None:
        telemetry.metrics.refresh(engine.statistics())
    return result.exit_code


class _Both:
    """The printer first (what the terminal shows), then the telemetry."""

    __slots__ = ("_first", "_then")

    def __init__(self, first: EventSink, then: EventSink) -> None:
        self._first = first
        self._then = then

    def __call__(self, event: Event) -> None:
        try:
            self._first(event)
        finally:
            self._then(event)


def _telemetry(
    args: argparse.Namespace, campaign: Campaign, key: Sequence[ApiKey] | None
) -> Telemetry | None:
    """The notifier and the metrics the options and the job file ask for (None: neither);
    ValueError or ApixoError with one line naming what is wrong."""
    # getattr: an embedder's or a test's namespace may hold only the options it knew of.
    notify_on: str | None = getattr(args, "notify_on", None)
    given: list[str] = getattr(args, "notify", None) or []
    port: int | None = getattr(args, "metrics_port", None)
    textfile_arg: str | None = getattr(args, "metrics_textfile", None)
    if not (
        given or getattr(campaign, "notify", None) or port is not None or textfile_arg or notify_on
    ):
        return None
    # Imported only when asked for: prometheus_client alone costs a run ~0.08 s of CPU.
    from ..telemetry import RunMetrics, Telemetry, serve_metrics, write_textfile
    from ..telemetry.notify import Notifier, parse_notify_on

    on = parse_notify_on(notify_on or "end,stop")
    try:
        urls = [*campaign.notify_urls(os.environ), *given]
    except JobFileError as exc:
        raise ValueError(str(exc)) from None
    notifier = None
    if urls:
        notifier = Notifier(urls, campaign=campaign.name, on=on, key=key, warn=_err)
    if port is None and textfile_arg is None:
        return Telemetry(notifier=notifier) if notifier else None
    metrics = RunMetrics(campaign.name)
    textfile = None
    if textfile_arg is not None:
        textfile = Path(textfile_arg).absolute()
        try:
            write_textfile(metrics, textfile)  # a path that cannot be written: said now
        except OSError as exc:
            raise ValueError(
                f"--metrics-textfile {textfile}: cannot write it: {exc.strerror or exc}"
            ) from None
    server = None
    if port is not None:
        host = getattr(args, "metrics_host", None) or "127.0.0.1"
        try:
            server = serve_metrics(metrics, host, port)
        except OSError as exc:
            raise ValueError(
                f"--metrics-port {port}: cannot listen on {host}: {exc.strerror or exc}"
            ) from None
        if port == 0:
            bound_host, port = server.address
            _err(f"metrics on http://{bound_host}:{port}/metrics")
    return Telemetry(notifier=notifier, metrics=metrics, server=server, textfile=textfile)


def _engine(
    args: argparse.Namespace,
    campaign: Campaign,
    keys: Sequence[KeySpec],
    sink: EventSink,
    callback_url: str | None,
    listen_at: tuple[str, int] | None,
) -> Engine:
    lease_s, grace_s = runner_lease()
    options = RunOptions(
        base_url=base_url(args.base_url),
        state_path=None if is_database(args.state) else _state_path(args, campaign),
        state_url=args.state if is_database(args.state) else None,
        max_concurrent=args.max_concurrent,
        rpm=args.rpm,
        time_scale=args.time_scale,
        callback_url=callback_url,
        listen=listen_at,
        budget=getattr(args, "budget", None),
        allow_partial=getattr(args, "allow_partial", False),
        max_wait_min=args.max_wait,
        retry_failed=getattr(args, "retry_failed", False),
        fail_codes=flat(getattr(args, "fail_code", None)),
        retry_expired=getattr(args, "retry_expired", False),
        reroll=getattr(args, "reroll", None) is not None,
        reroll_rejected=getattr(args, "reroll", None) == "rejected",
        only=flat(getattr(args, "only", None)),
        models=flat(getattr(args, "model", None)),
        limit=getattr(args, "limit", None),
        order=getattr(args, "order", "longest"),
        review=getattr(args, "review", True),
        mode="download" if args.command == "download" else "run",
        lease_s=lease_s,
        grace_s=grace_s,
        leave_early=getattr(args, "leave_early", False),
        shared_out=getattr(args, "shared_out", False) or campaign.shared_out,
    )
    return build_engine(campaign, options, api_key=keys or None, on_event=sink)


async def _drive(
    engine: Engine, view: View | None = None, telemetry: Telemetry | None = None
) -> RunResult:
    loop = asyncio.get_running_loop()
    fresh = None
    if telemetry is not None:
        fresh = asyncio.create_task(telemetry.keep_fresh(engine.statistics))
    # SIGHUP too: an SSH session that drops must leave what SIGTERM leaves (answers on the
    # wire journaled, the manifest written), not a run killed mid-submit.
    signals = (signal.SIGINT, *stop_signals())
    # remove_signal_handler leaves SIG_DFL behind (SIGTERM would then kill the process
    # while the summary is printed): what was there before is put back instead.
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, engine.request_stop)
    try:
        async with shown(view, engine.clock) if view else contextlib.nullcontext():
            return await engine.run()
    finally:
        if fresh is not None:
            fresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fresh
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


@dataclass(frozen=True)
class _FileChanges:
    """The job file against the journal's jobs: the same file as at the last sync, or the
    jobs added to it and removed from it since (counts, and the first few ids)."""

    unchanged: bool = True
    added: int = 0
    added_ids: tuple[str, ...] = ()
    removed: int = 0
    removed_ids: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "unchanged": self.unchanged,
            "added": self.added,
            "added_ids": list(self.added_ids),
            "removed": self.removed,
            "removed_ids": list(self.removed_ids),
        }


SHOWN_IDS = 5


def _status_command(args: argparse.Namespace) -> int:
    """``status``: the settings read (the jobs only if the file changed since the last
    run), else the journal alone."""
    try:
        settings = load_campaign(args.jobfile, out_dir=args.out, check_jobs=False)
    except (JobFileError, OSError) as exc:
        if database_of(args) is not None:
            # A database can hold several campaigns: the job file names the one to tell.
            why = str(exc) if isinstance(exc, JobFileError) else f"cannot read the job file: {exc}"
            return _refused(args, ExitCode.INVALID, why)
        found = _from_journal(args, _why(exc))
        return found if isinstance(found, int) else _status(args, found)
    state = _state_path(args, settings)
    changes = None
    if state.is_file() and getattr(args, "only", None):
        refused = unmatched_only(args, _journal_ids(state))
        if refused is not None:
            _err(refused)
            return ExitCode.INVALID
    if state.is_file():
        try:
            changes = _file_changes(args, settings, state)
        except StorageError:
            pass  # _status tells it
        except (JobFileError, OSError) as exc:
            _err(
                f"job file {args.jobfile} cannot be read ({_why(exc)}): "
                f"working from the journal {shown_state(args, state)} alone"
            )
    return _status(args, settings, changes)


def _file_changes(args: argparse.Namespace, settings: Campaign, state: Path) -> _FileChanges:
    """Unchanged when the file's stamp is the one of the last sync (nothing read); else
    the file's ids (its shape, ids and models checked, its inputs not: ``run`` and
    ``plan`` check those) compared with the journal's."""
    journal = Journal(state, lock=False)
    try:
        if journal.file_stamp() == settings.stamp:
            return _FileChanges()
        known = journal.file_ids()
    finally:
        journal.close()
    added: list[str] = []
    n_added = 0
    for job_id in settings.iter_ids():
        if job_id in known:
            known.discard(job_id)
        else:
            n_added += 1
            if len(added) < SHOWN_IDS:
                added.append(job_id)
    removed = sorted(known)
    return _FileChanges(False, n_added, tuple(added), len(removed), tuple(removed[:SHOWN_IDS]))


def _status(
    args: argparse.Namespace, campaign: Campaign, changes: _FileChanges | None = None
) -> int:
    import json as _json

    state = _state_path(args, campaign)
    at = shown_state(args, state)
    if not state.exists():
        message = f"no journal at {at}: this campaign has not run yet"
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
            print(_json.dumps({"journal": at, "counts": {}, "error": str(exc)}))
        _err(str(exc))
        return ExitCode.IO_ERROR
    refused = _other_campaign(journal, at, campaign)
    if refused is not None:
        if args.json:
            print(_json.dumps({"journal": at, "counts": {}, "error": refused}))
        _err(refused)
        return ExitCode.INVALID
    selection = selection_of(args)
    try:
        if selection.filtered:
            counts, waiting, in_flight, doubt = _selected_status(journal, selection)
        else:
            counts = journal.counts()
            waiting = journal.in_states([JobState.SUCCEEDED])
            in_flight = journal.in_states([JobState.SUBMITTED])
            doubt = int(journal.totals()["possibly_duplicated"])
        decided = journal.decision_counts()
        disk = _disk(journal, campaign.output_dir) if getattr(args, "check_files", False) else None
    finally:
        journal.close()
    url = database_of(args)
    runners = None
    if url is not None:
        from .roster import runners_of_database

        runners = runners_of_database(url)
    now = time.time()
    # The same threshold as `download`'s warning, so the two agree on what is in danger.
    warn_s = EXPIRY_WARN_S * args.time_scale

    def soon(r: JobRow) -> bool:
        return r.expires_at is not None and r.expires_at - now < warn_s

    if args.json:
        extra: dict[str, object] = {}
        if url is not None:  # a journal file has no runners: its object is as it was
            extra["runners"] = None if runners is None else [r.as_json() for r in runners]
        print(
            _json.dumps(
                {
                    "journal": at,
                    "counts": counts,
                    "possibly_duplicated": doubt,
                    "review": {"keep": decided.get("keep", 0), "reject": decided.get("reject", 0)},
                    "file_changes": changes.as_json() if changes else None,
                    "disk": disk.as_json() if disk else None,
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
                    **extra,
                }
            )
        )
        return ExitCode.OK
    print(f"{campaign.name}: journal {at}")
    for st in JobState:
        if counts.get(st.value):
            print(f"  {st.value:<11} {counts[st.value]}")
    if decided:
        # What people decided on the review page (review --serve), beside the states.
        print(f"  review      {decided.get('keep', 0)} kept, {decided.get('reject', 0)} rejected")
    if runners is not None:
        from .roster import runner_lines

        for line in runner_lines(runners):
            print(line)
    if changes is not None:
        print(f"  job file: {_told(changes)}")
    if disk is not None:
        print(f"  on disk: {disk.told()}")
    if in_flight:
        print(
            f"  {len(in_flight)} task(s) in flight at APIXO: `apixo-batch run` or `download`"
            f"{state_option(args)} follows them"
        )
    if waiting:
        print(f"  {len(waiting)} result(s) not downloaded yet:")
        for r in sorted(waiting, key=lambda r: r.expires_at or 0)[:50]:
            flag = "  EXPIRES SOON" if soon(r) else ""
            print(f"    {r.id}: {time_left(r.expires_at, now)}{flag}")
    return ExitCode.OK


def _selected_status(
    journal: Journal, selection: Selection
) -> tuple[dict[str, int], list[JobRow], list[JobRow], int]:
    """(counts by state, results not downloaded, tasks in flight, possibly duplicated) of
    the jobs ``--only``/``--model`` pick: one pass over the journal."""
    counts: dict[str, int] = {}
    waiting: list[JobRow] = []
    in_flight: list[JobRow] = []
    doubt = 0
    for r in journal.iter_all():
        if not (r.in_file or r.task_id is not None) or not selection.picks(r.id, r.model):
            continue
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
        doubt += r.possibly_duplicated
        if r.state is JobState.SUCCEEDED:
            waiting.append(r)
        elif r.state is JobState.SUBMITTED:
            in_flight.append(r)
    return counts, waiting, in_flight, doubt


@dataclass(frozen=True)
class _Disk:
    """``status --check-files``: the ``done`` jobs' files against the journal (a stat
    each: their presence and total size, not their bytes; ``verify`` hashes them)."""

    checked: int
    #: "<kind>: job <id>: <path>: <detail>" for each problem found (missing, size)
    problems: tuple[str, ...] = ()
    bad_jobs: int = 0
    #: object storage: not checked
    skipped: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "bad_jobs": self.bad_jobs,
            "problems": list(self.problems[: SHOWN_IDS * 10]),
            "skipped": self.skipped,
        }

    def told(self) -> str:
        if self.skipped:
            return f"not checked ({self.skipped})"
        if not self.bad_jobs:
            return f"the files of all {self.checked} done job(s) are there, with their sizes"
        lines = "".join(f"\n    {line}" for line in self.problems[:SHOWN_IDS])
        more = len(self.problems) - SHOWN_IDS
        lines += f"\n    and {more} more" if more > 0 else ""
        return (
            f"{self.bad_jobs} of {self.checked} done job(s) not as journaled: `run` or "
            f"`download` fetches them again while their URL lives{lines}"
        )


def _disk(journal: Journal, where: Destination) -> _Disk:
    from ..outputs.ondisk import problems

    if not isinstance(where, Path):
        return _Disk(0, skipped="object storage")
    checked = 0
    bad: set[str] = set()
    found: list[str] = []

    def counted() -> Iterator[DoneFiles]:
        nonlocal checked
        for row in journal.iter_done_files():
            checked += 1
            yield row

    for problem in problems(counted(), where):
        bad.add(problem.job_id)
        found.append(problem.line())
    return _Disk(checked, tuple(found), len(bad))


def _told(changes: _FileChanges) -> str:
    if changes.unchanged:
        return "unchanged since the last run"
    if not changes.added and not changes.removed:
        return "no job added or removed since the last run"
    parts = []
    for n, ids, what in (
        (changes.added, changes.added_ids, "added"),
        (changes.removed, changes.removed_ids, "removed"),
    ):
        if n:
            more = f", +{n - len(ids)} more" if n > len(ids) else ""
            parts.append(f"{n} job(s) {what} ({', '.join(ids)}{more})")
    return " and ".join(parts) + " since the last run: `run` syncs them"


def _review(args: argparse.Namespace, campaign: Campaign) -> int:
    from ..outputs.output import open_output
    from ..reports.review import REVIEW_FILE, write_review

    alone = [f"--{o}" for o in ("host", "port", "reviewer") if getattr(args, o) is not None]
    if alone and not args.serve:
        _err(f"review: {', '.join(alone)} go with --serve (the static page takes no decisions)")
        return ExitCode.INVALID
    state = _state_path(args, campaign)
    at = shown_state(args, state)
    if not state.exists():
        _err(f"no journal at {at}: this campaign has not run yet")
        return ExitCode.FAILED_JOBS
    if args.serve:
        if database_of(args):
            # The commands read a database through a local copy (cli/database.py):
            # decisions written there would be lost with it.
            _err(f"review --serve: decisions are kept in a SQLite journal only, not in {at}")
            return ExitCode.INVALID
        return _serve_review(args, campaign, state)
    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    refused = _other_campaign(journal, at, campaign)
    if refused is not None:
        _err(refused)
        return ExitCode.INVALID
    try:
        output = open_output(campaign.output_dir, state)
    except ApixoError as exc:  # the s3 extra missing
        journal.close()
        _err(str(exc))
        return ExitCode.INVALID
    try:
        selection = selection_of(args)
        rows = journal.iter_all()
        if selection.filtered:
            rows = (r for r in rows if selection.picks(r.id, r.model))
        path = write_review(
            rows,
            output.local_dir,
            name=campaign.name,
            job_file=args.jobfile,
            totals=Totals(journal.totals()),
            runs=last_runs(journal),
            state=at if database_of(args) else None,
            decisions=journal.decisions(),
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


def _serve_review(args: argparse.Namespace, campaign: Campaign, state: Path) -> int:
    """``review --serve``: the live page until SIGINT or SIGTERM (0 then)."""
    from ..reports.live import ReviewServer

    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    try:
        refused = _other_campaign(journal, state, campaign)
    finally:
        journal.close()
    if refused is not None:
        _err(refused)
        return ExitCode.INVALID
    out_dir = campaign.output_dir if isinstance(campaign.output_dir, Path) else None
    server = ReviewServer(
        state,
        out_dir,
        name=campaign.name,
        job_file=args.jobfile,
        reviewer=args.reviewer,
        host=args.host or "127.0.0.1",
        port=args.port or 0,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, *stop_signals()):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(f"review page: {await server.start()}", flush=True)
            _err("serving the live review page (Ctrl-C stops it)")
            await stop.wait()
        finally:
            await server.close()

    try:
        runtime.run(serve())
    except OSError as exc:
        _err(f"review: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}")
        return ExitCode.FAILED_JOBS
    return ExitCode.OK


async def _publish(output: Output, name: str, content_type: str) -> Path | str:
    try:
        return await output.publish(name, content_type)
    finally:
        await output.close()
