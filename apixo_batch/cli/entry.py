"""The ``apixo-batch`` command line: parse, then call the Python API. Nothing else lives here."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from .. import __version__
from ..defaults import ORDERS
from ..exitcodes import ExitCode
from .terminal import guarded_streams, stop_signals

__all__ = ["build_parser", "main"]


def _bounded_int(name: str, low: int, high: int) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be between {low} and {high}, got {value}"
            )
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


def _positive_float(name: str) -> type[float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or not value > 0:
            raise argparse.ArgumentTypeError(
                f"{name} must be a finite number greater than 0, got {text!r}"
            )
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on bad usage already, which is our "invalid command line" code;
    # the message is one line that names the option, not the whole usage block.
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_no_review(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-review",
        dest="review",
        action="store_false",
        help="do not write <out>/review.html at the end",
    )


def _add_order(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="longest",
        help="which queued jobs start first: the longest expected generations (the "
        "campaign ends sooner), or the job file's order (a priority list) [default: longest]",
    )


def _add_limits(p: argparse.ArgumentParser) -> None:
    # Here, not at the top: importing the limits imports asyncio, and until main() has
    # installed its SIGTERM handler every millisecond of start-up is a window.
    from ..apixo.limits import MAX_CONCURRENT_CAP, RPM_CAP
    from ..defaults import MAX_CONCURRENT, RPM

    p.add_argument(
        "--max-concurrent",
        type=_bounded_int("--max-concurrent", 1, MAX_CONCURRENT_CAP),
        default=MAX_CONCURRENT,
        help=f"tasks in flight at once (at most {MAX_CONCURRENT_CAP}; default {MAX_CONCURRENT})",
    )
    p.add_argument(
        "--rpm",
        type=_bounded_int("--rpm", 1, RPM_CAP),
        default=RPM,
        help=f"API requests per minute (at most {RPM_CAP:,}; default {RPM:,})",
    )


def _names(text: str) -> list[str]:
    """``a,b`` or ``a``: the names one option gives (the option may be repeated too)."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty name in {text!r}")
    return names


def _models(text: str) -> list[str]:
    from ..catalog.models import MODELS  # here, not at the top: see _add_limits

    names = _names(text)
    for name in names:
        if name not in MODELS:
            raise argparse.ArgumentTypeError(
                f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})"
            )
    return names


_models.__name__ = "--model"


def _add_selection(p: argparse.ArgumentParser, *, limit: bool) -> None:
    """``--only``, ``--model`` (and ``--limit`` where jobs are submitted)."""
    p.add_argument(
        "--only",
        action="append",
        type=_names,
        default=[],
        metavar="ID[,ID...]",
        help="act only on these job ids; shell-style patterns ('hero-*', 'shot-0[1-3]'); "
        "repeatable. A pattern that matches no job is an error (exit 2)",
    )
    p.add_argument(
        "--model",
        action="append",
        type=_models,
        default=[],
        metavar="NAME[,NAME...]",
        help="act only on jobs of this model; repeatable",
    )
    if limit:
        p.add_argument(
            "--limit",
            type=_bounded_int("--limit", 1, 10**9),
            default=None,
            metavar="N",
            help="submit at most N jobs: the first N that run would submit now, in its "
            "start order (--order); the rest stay queued for the next run",
        )


def _add_again(p: argparse.ArgumentParser, *, plan: bool = False) -> None:
    """What ``run`` sends again: failed (by fail code), expired and done jobs."""
    verb = "count as submitted again" if plan else "submit again (a new task, paid again)"
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help=f"{verb} the failed jobs (within --only/--model); a job whose input APIXO "
        "refused (content violation, bad image...) is skipped unless its input changed "
        "or --fail-code names its code",
    )
    p.add_argument(
        "--fail-code",
        action="append",
        type=_names,
        default=[],
        metavar="CODE[,CODE...]",
        help="with --retry-failed: only the failed jobs with one of these fail codes "
        "(as the manifest's fail_code); named, a refused input is sent again as it is",
    )
    p.add_argument(
        "--retry-expired",
        action="store_true",
        help=f"{verb} the expired jobs (their result URLs lapsed before the download)",
    )
    p.add_argument(
        "--reroll",
        nargs="?",
        const="done",
        default=None,
        choices=("done", "rejected"),
        metavar="rejected",
        help=f"{verb} the done jobs as a new take (a new seed where the model takes one): "
        "the earlier files stay, the new take lands as NAME-take2.mp4, -take3...; "
        "'--reroll rejected': only the jobs rejected on the review page (review --serve)",
    )


def _add_api(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default=None, help="API base URL [APIXO_BASE_URL]")
    p.add_argument(
        "--api-key-file",
        action="append",
        default=None,
        help="read the API key(s) from this file, one per line with optional "
        "max_concurrent=N rpm=N; repeat for a pool of keys "
        "[APIXO_API_KEY, comma-separated]",
    )


def _add_telemetry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="URL",
        help="send the run's end (and stops, see --notify-on) to this Apprise URL "
        "(repeatable; adds to the job file's notify:; needs the notify extra)",
    )
    p.add_argument(
        "--notify-on",
        default="end,stop",
        metavar="EVENTS",
        help="what to notify, comma-separated: end, stop, stall (API unreachable), "
        "recover [default: end,stop]",
    )
    p.add_argument(
        "--metrics-port",
        type=_bounded_int("--metrics-port", 0, 65535),
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics during the run "
        "(0 picks a free port, told on stderr)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of --metrics-port (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--metrics-textfile",
        default=None,
        metavar="PATH",
        help="write the metrics to PATH every 5 s and at the end, atomically "
        "(node_exporter's textfile collector)",
    )


def _add_common(p: argparse.ArgumentParser, command: str) -> None:
    from ..defaults import STATE_FILE  # here, not at the top: see _add_limits

    p.add_argument("jobfile", help="the campaign's job file (YAML)")
    p.add_argument("--out", default=None, help="output folder (overrides the job file)")
    p.add_argument(
        "--state",
        default=None,
        help=f"journal path (default <out>/{STATE_FILE}), or a postgresql:// URL "
        "[APIXO_BATCH_STATE]",
    )
    if command == "status":
        p.add_argument("--json", action="store_true", help="the journal's state as one JSON object")
        p.add_argument("-q", "--quiet", action="store_true", help="accepted; no effect on status")
        p.add_argument("-v", "--verbose", action="store_true", help="accepted; no effect on status")
        p.add_argument(
            "--time-scale",
            type=_positive_float("--time-scale"),
            default=1.0,
            help="multiply the 48 h threshold of 'expires soon' (default 1.0)",
        )
        p.add_argument(
            "--check-files",
            action="store_true",
            help="also stat every done job's files: missing or resized ones are listed",
        )
        return
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout: every event, then a summary"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings, failures and the summary"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="every event, the summary last, as JSON lines on stderr",
    )
    p.add_argument(
        "--time-scale",
        type=_positive_float("--time-scale"),
        default=1.0,
        help="multiply every built-in wait: first poll, poll interval, backoff, the pause of "
        "a 429 without Retry-After, the 15-day result expiry; for the simulator "
        "(default 1.0)",
    )


def build_parser() -> argparse.ArgumentParser:
    from ..defaults import MAX_WAIT_MIN  # here, not at the top: see _add_limits

    parser = _Parser(
        prog="apixo-batch",
        description="Turn a job file of video generations into MP4 files through APIXO.",
    )
    parser.add_argument("--version", action="version", version=f"apixo-batch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the campaign to the end")
    _add_common(run, "run")
    _add_api(run)
    _add_limits(run)
    run.add_argument("--callback-url", default=None, help="public URL APIXO posts results to")
    run.add_argument("--listen", default=None, help="HOST:PORT of the built-in callback receiver")
    run.add_argument(
        "--budget", type=_positive_float("--budget"), default=None, help="spend cap in USD"
    )
    run.add_argument(
        "--allow-partial",
        action="store_true",
        help="submit even when the balance cannot cover the whole campaign",
    )
    run.add_argument(
        "--max-wait",
        type=_positive_float("--max-wait"),
        default=MAX_WAIT_MIN,
        help="minutes to follow one task in this run before leaving it pending "
        f"(default {MAX_WAIT_MIN:g})",
    )
    run.add_argument(
        "--leave-early",
        action="store_true",
        help="with several runners on one postgresql:// journal: leave once every "
        "unfinished job is another live runner's (default: stay to adopt their work "
        "should they die)",
    )
    run.add_argument(
        "--shared-out",
        action="store_true",
        help="with runners on several hosts (postgresql:// journal): the local --out is "
        "one mount every runner writes to (default: refused once a second host joins; "
        "use s3://); job file: output.shared",
    )
    _add_selection(run, limit=True)
    _add_again(run)
    _add_order(run)
    _add_no_review(run)
    _add_telemetry(run)

    plan = sub.add_parser("plan", help="validate and estimate cost and time; no network")
    plan.add_argument("jobfile", help="the campaign's job file (YAML)")
    plan.add_argument("--json", action="store_true", help="the plan as one JSON object")
    plan.add_argument("--out", default=None, help="output folder (overrides the job file)")
    plan.add_argument(
        "--state",
        default=None,
        help="journal path (default <out>/.apixo-batch.sqlite), or a postgresql:// URL "
        "[APIXO_BATCH_STATE]",
    )
    plan.add_argument(
        "--budget", type=_positive_float("--budget"), default=None, help="spend cap in USD"
    )
    _add_selection(plan, limit=True)
    _add_again(plan, plan=True)
    _add_limits(plan)
    _add_order(plan)

    status = sub.add_parser("status", help="what the journal knows")
    _add_common(status, "status")
    _add_selection(status, limit=False)

    download = sub.add_parser("download", help="fetch results not on disk yet")
    _add_common(download, "download")
    _add_api(download)
    _add_limits(download)
    download.add_argument(
        "--max-wait",
        type=_positive_float("--max-wait"),
        default=MAX_WAIT_MIN,
        help=f"minutes to follow tasks still running (default {MAX_WAIT_MIN:g})",
    )
    _add_selection(download, limit=False)
    _add_no_review(download)
    _add_telemetry(download)

    review = sub.add_parser(
        "review", help="write <out>/review.html: every job as a card, videos playable"
    )
    review.add_argument("jobfile", help="the campaign's job file (YAML)")
    review.add_argument("--out", default=None, help="output folder (overrides the job file)")
    review.add_argument(
        "--state",
        default=None,
        help="journal path (default <out>/.apixo-batch.sqlite), or a postgresql:// URL "
        "[APIXO_BATCH_STATE]",
    )
    review.add_argument(
        "--serve",
        action="store_true",
        help="serve the page live from the journal (keep/reject decisions) until Ctrl-C",
    )
    review.add_argument(
        "--host", default=None, help="with --serve: address to listen on (default 127.0.0.1)"
    )
    review.add_argument(
        "--port",
        type=_bounded_int("--port", 0, 65535),
        default=None,
        help="with --serve: port to listen on (default 0: a free one)",
    )
    review.add_argument(
        "--reviewer", default=None, help="with --serve: the name kept with each decision"
    )
    _add_selection(review, limit=False)

    verify = sub.add_parser(
        "verify", help="hash every done job's files against the journal; --fix refetches"
    )
    verify.add_argument("jobfile", help="the campaign's job file (YAML)")
    verify.add_argument("--out", default=None, help="output folder (overrides the job file)")
    verify.add_argument(
        "--state",
        default=None,
        help="journal path (default <out>/.apixo-batch.sqlite), or a postgresql:// URL "
        "[APIXO_BATCH_STATE]",
    )
    verify.add_argument(
        "--fix",
        action="store_true",
        help="move the jobs with a problem back to succeeded: the next download fetches them",
    )

    export = sub.add_parser(
        "export", help="copy (hard-link) the takes kept on the review page into a folder"
    )
    export.add_argument("jobfile", help="the campaign's job file (YAML)")
    export.add_argument(
        "--kept",
        required=True,
        metavar="DIR",
        help="the folder the kept takes go to, under their job ids, with export.jsonl",
    )
    export.add_argument("--out", default=None, help="output folder (overrides the job file)")
    export.add_argument(
        "--state", default=None, help="journal path (default <out>/.apixo-batch.sqlite)"
    )

    adopt = sub.add_parser(
        "adopt", help="journal a paid task id as a job's task, once APIXO knows it; run follows it"
    )
    adopt.add_argument("jobfile", help="the campaign's job file (YAML)")
    adopt.add_argument("job_id", metavar="JOB_ID", help="the job, as the journal knows it")
    adopt.add_argument("task_id", metavar="TASK_ID", help="the APIXO task id it was paid for")
    adopt.add_argument("--out", default=None, help="output folder (overrides the job file)")
    adopt.add_argument(
        "--state",
        default=None,
        help="journal path (default <out>/.apixo-batch.sqlite), or a postgresql:// URL "
        "[APIXO_BATCH_STATE]",
    )
    _add_api(adopt)

    journal = sub.add_parser("journal", help="move a campaign's journal into PostgreSQL")
    journal_sub = journal.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = journal_sub.add_parser(
        "import",
        help="copy a SQLite journal (task ids, history, learned limits, runs, file names) "
        "into an empty PostgreSQL database; the file is left as it is",
    )
    imp.add_argument("source", metavar="OLD.sqlite", help="the SQLite journal to import")
    imp.add_argument(
        "--state",
        default=None,
        help="the postgresql:// URL of the database to import into [APIXO_BATCH_STATE]",
    )

    sim = sub.add_parser("simulate", help="serve a local APIXO simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument(
        "--port",
        type=_bounded_int("--port", 0, 65535),
        default=8787,
        help="port to listen on; 0 picks a free one (default 8787)",
    )
    sim.add_argument(
        "--time-scale",
        type=_positive_float("--time-scale"),
        default=None,
        help="multiply every generation time and expiry (default: the config's, else 1.0)",
    )
    sim.add_argument(
        "--config",
        default=None,
        help="simulator settings (YAML): limits, faults (error_rate_503, unavailable windows, "
        "forbidden routes answered 403), fail codes, callbacks; see docs/simulate.md",
    )
    # The account's limiter, as gateways play it (docs/simulate.md); each overrides the
    # config file's setting of the same name.
    limiter = sim.add_argument_group("the account's limiter (default: APIXO's)")
    limiter.add_argument(
        "--rpm-limit",
        type=_bounded_int("--rpm-limit", 1, 10_000_000),
        default=None,
        help="requests per window (rpm_limit, default 10000)",
    )
    limiter.add_argument(
        "--rpm-window-s",
        type=_positive_float("--rpm-window-s"),
        default=None,
        help="the window's length in real seconds (rpm_window_s, default 60)",
    )
    limiter.add_argument(
        "--rpm-window",
        choices=("sliding", "fixed"),
        default=None,
        help="sliding, or fixed windows that reset at once (default sliding)",
    )
    limiter.add_argument(
        "--rpm-count-refused",
        action="store_true",
        default=None,
        help="refused requests count against the window too",
    )
    limiter.add_argument(
        "--retry-after",
        choices=("truthful", "absent", "short"),
        default=None,
        help="the Retry-After of a rate 429 (default truthful; short: always 1 s)",
    )
    limiter.add_argument(
        "--status-rpm-limit",
        type=_bounded_int("--status-rpm-limit", 1, 10_000_000),
        default=None,
        help="status polls get their own window of this many requests",
    )
    limiter.add_argument(
        "--concurrency-limit",
        type=_bounded_int("--concurrency-limit", 1, 1_000_000),
        default=None,
        help="tasks pending or processing at once (default 1000)",
    )
    limiter.add_argument(
        "--concurrency-message",
        default=None,
        help='the message of a slot 429 (default "Concurrent task limit exceeded")',
    )
    sim.add_argument(
        "--api-key", default=None, help="key the simulator accepts [APIXO_API_KEY, else sim-key]"
    )
    return parser


@contextmanager
def _terminate_is_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, until a command installs
    its own.

    A run installs handlers that stop submits and write the manifest; before that
    (imports, loading the job file, syncing the journal) nothing has been sent, and
    a CI cancel then should still end in 130 with a message, not a signal death.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in stop_signals():
            previous[sig] = signal.signal(sig, signal.default_int_handler)
        yield
    finally:
        for sig, handler in previous.items():
            # None: the handler was not set from Python (an embedding host); leave ours.
            if handler is not None:
                signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    # The try holds the handlers' context too: a SIGTERM that comes the very moment its
    # handler is in place, before the body has begun, still ends in 130 and a message.
    try:
        with _terminate_is_interrupt(), guarded_streams():
            try:
                return _main(argv)
            except Exception as exc:
                return _unexpected(exc)
    except KeyboardInterrupt:
        with guarded_streams():
            print("apixo-batch: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _unexpected(exc: Exception) -> int:
    """What nothing else caught: one line, never a traceback, unless asked for one."""
    import os

    from ..outputs.paths import storage_failure
    from .environment import redact_env

    if os.environ.get("APIXO_BATCH_DEBUG"):
        raise exc
    why = storage_failure(exc)
    if why is not None:
        print(f"apixo-batch: {redact_env(why)}", file=sys.stderr)
        return ExitCode.IO_ERROR
    bug: BaseException = exc
    while isinstance(bug, BaseExceptionGroup):
        bug = bug.exceptions[0]  # a stage's task group: the bug inside, not the group, is news
    print(
        f"apixo-batch: internal error: {type(bug).__name__}: {redact_env(str(bug))} (a bug: "
        "please report it; APIXO_BATCH_DEBUG=1 shows the traceback). The journal keeps "
        "what was paid: the same command resumes",
        file=sys.stderr,
    )
    return ExitCode.SOFTWARE


#: the commands that read a database's campaign from a local copy (cli.database)
COPY_COMMANDS = ("status", "plan", "review", "verify", "adopt")


def _state_of(args: argparse.Namespace) -> str | None:
    """``--state`` defaults to ``APIXO_BATCH_STATE``; a database URL given to a command
    that cannot use one, or without the ``pg`` extra: the one line that refuses it."""
    import os

    from ..errors import JournalError
    from ..journal.pg import is_database, needs_driver

    if not hasattr(args, "state"):
        return None
    if not args.state:
        args.state = os.environ.get("APIXO_BATCH_STATE") or None
    if not is_database(args.state):
        return None
    try:
        needs_driver(args.state)
    except JournalError as exc:
        return f"apixo-batch: {exc}"
    return None


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command
    refused = _state_of(args)
    if refused is not None:
        print(refused, file=sys.stderr)
        return ExitCode.INVALID
    from ..journal.pg.url import is_database

    if command in COPY_COMMANDS and is_database(args.state):
        from .database import local_copy

        with local_copy(args) as failed:
            return failed if failed is not None else _command(args)
    return _command(args)


def _command(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "journal":
        from .database import journal_command

        return journal_command(args)
    if command == "plan":
        from .plan import plan_command

        return plan_command(args)
    if command == "simulate":
        from ..simulator import simulate_command

        return simulate_command(args)
    if command == "verify":
        from .verify import verify_command

        return verify_command(args)
    if command == "export":
        from .export import export_command

        return export_command(args)
    if command == "adopt":
        from .adopt import adopt_command

        return adopt_command(args)
    if command in ("run", "status", "download", "review"):
        from .commands import campaign_command

        try:
            return campaign_command(args)
        except KeyboardInterrupt:
            # Outside the run itself (whose handlers stop it cleanly): nothing is on the wire.
            print(
                "apixo-batch: interrupted outside the run; nothing was sent meanwhile, "
                "and the same command goes on from the journal",
                file=sys.stderr,
            )
            return ExitCode.INTERRUPTED
    print(f"unknown command {command}", file=sys.stderr)
    return ExitCode.INVALID


if __name__ == "__main__":
    sys.exit(main())
