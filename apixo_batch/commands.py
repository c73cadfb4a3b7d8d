"""``run``, ``status`` and ``download``: thin glue from parsed arguments to the Python API."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO

from .client import DEFAULT_BASE_URL
from .engine import Engine, RunOptions, RunResult, summary_dict
from .errors import ApixoError, JobFileError, JournalError
from .events import Event
from .jobs import Campaign, load_campaign
from .journal import JobState, Journal
from .receiver import parse_listen
from .report import event_line, render_summary
from .secret import ApiKey, load_api_key, redact

__all__ = ["campaign_command"]

EXPIRY_WARN_S = 48 * 3600


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


class _Printer:
    """Events to the terminal: JSON lines on stdout, or short plain lines on stderr."""

    def __init__(self, *, json_mode: bool, quiet: bool, verbose: bool, key: ApiKey | None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.key = key
        self.out: IO[str] = sys.stdout
        self._last_status = 0.0
        self.counts: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        if self.json_mode:
            print(redact(event_line(event), self.key), file=self.out, flush=True)
            return
        d = event.data
        if event.kind in ("warning", "stopped"):
            _err(redact(str(d.get("message") or d.get("reason")), self.key))
        elif event.kind in ("failed", "expired") and not self.quiet:
            why = d.get("fail_code") or ""
            msg = d.get("fail_msg") or d.get("message") or ""
            _err(f"{event.kind}: {event.job_id} {why} {msg}".rstrip())
        elif event.kind == "pending" and not self.quiet:
            _err(f"pending: {event.job_id}: {d.get('message', '')}")
        elif self.verbose and event.kind != "summary":
            _err(redact(event_line(event), self.key))
        elif event.kind not in ("summary", "started") and not self.quiet:
            now = time.monotonic()
            if now - self._last_status >= 5.0:
                self._last_status = now
                c = self.counts
                _err(
                    f"submitted {c.get('submitted', 0)}, done {c.get('downloaded', 0)}, "
                    f"failed {c.get('failed', 0)}, retries {c.get('retried', 0)}, "
                    f"429s {c.get('rate-limited', 0)}"
                )


def _load(args: argparse.Namespace) -> Campaign:
    return load_campaign(args.jobfile, out_dir=args.out)


def _state_path(args: argparse.Namespace, campaign: Campaign) -> Path:
    if args.state:
        return Path(args.state).resolve()
    return campaign.output_dir / ".apixo-batch.sqlite"


def campaign_command(args: argparse.Namespace) -> int:
    try:
        campaign = _load(args)
    except JobFileError as exc:
        _err(str(exc))
        return 2
    except OSError as exc:
        _err(f"cannot read the job file: {exc}")
        return 2
    if args.command == "status":
        return _status(args, campaign)
    return _run(args, campaign)


def _run(args: argparse.Namespace, campaign: Campaign) -> int:
    try:
        key = load_api_key(args.api_key_file)
    except (OSError, ValueError) as exc:
        _err(f"cannot read --api-key-file: {exc}")
        return 2
    callback_url = getattr(args, "callback_url", None)
    listen = getattr(args, "listen", None)
    if bool(callback_url) != bool(listen):
        _err("callback mode needs both --callback-url (public URL) and --listen HOST:PORT")
        return 2
    listen_at = None
    if listen:
        try:
            listen_at = parse_listen(listen)
        except ValueError as exc:
            _err(str(exc))
            return 2
    options = RunOptions(
        base_url=args.base_url or os.environ.get("APIXO_BASE_URL") or DEFAULT_BASE_URL,
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
        mode="download" if args.command == "download" else "run",
    )
    printer = _Printer(json_mode=args.json, quiet=args.quiet, verbose=args.verbose, key=key)
    if args.command == "download":
        _warn_expiring(options.state_path, options.time_scale)
    try:
        result = asyncio.run(_drive(Engine(campaign, key, options, on_event=printer)))
    except JournalError as exc:
        _err(str(exc))
        return 2
    except ApixoError as exc:
        _err(redact(str(exc), key))
        return 2
    if not args.json:
        render_summary(summary_dict(result))
    return result.exit_code


async def _drive(engine: Engine) -> RunResult:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, engine.request_stop)
    try:
        return await engine.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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
        _err(f"WARNING: {len(soon)} result(s) expire within 48 hours; downloading them first:")
        for r in soon[:20]:
            left = max(0.0, (r.expires_at or now) - now) / 3600
            _err(f"  {r.id}: {left:.1f} h left")


def _status(args: argparse.Namespace, campaign: Campaign) -> int:
    import json as _json

    state = _state_path(args, campaign)
    if not state.exists():
        _err(f"no journal at {state}: this campaign has not run yet")
        return 1
    journal = Journal(state, lock=False)
    try:
        counts = journal.counts()
        waiting = journal.in_states([JobState.SUCCEEDED])
        in_flight = journal.in_states([JobState.SUBMITTED])
        totals = journal.totals()
    finally:
        journal.close()
    now = time.time()
    if args.json:
        print(
            _json.dumps(
                {
                    "counts": counts,
                    "possibly_duplicated": int(totals["possibly_duplicated"]),
                    "in_flight": [{"id": r.id, "task_id": r.task_id} for r in in_flight],
                    "not_downloaded": [
                        {
                            "id": r.id,
                            "expires_at": r.expires_at,
                            "expires_in_s": (round(r.expires_at - now) if r.expires_at else None),
                        }
                        for r in waiting
                    ],
                }
            )
        )
        return 0
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
            left = ((r.expires_at or now) - now) / 3600
            flag = "  EXPIRES SOON" if left < 48 else ""
            print(f"    {r.id}: expires in {left:.1f} h{flag}")
    return 0
