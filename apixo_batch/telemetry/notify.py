"""Notifications through Apprise: a line to a chat, a webhook or a mailbox when a run ends,
stops, stalls or recovers (``--notify``, ``notify:``; docs/recipes.md).

:class:`Notifier` is an event sink. An event worth telling becomes one short
message (a title and one line), redacted of the API key, and leaves on a daemon
thread of its own per URL: Apprise's send is synchronous, and a receiver that
refuses or hangs must cost the run a warning, never its loop nor its end.
:meth:`Notifier.close` waits for what is still on its way for at most
``NOTIFY_GRACE_S``, then gives it up.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..apixo.secret import ApiKey, redact
from ..clock import human_duration
from ..errors import ApixoError
from ..events import Event, Stopped, Summary, Warned
from ..exitcodes import MEANINGS, ExitCode

__all__ = [
    "DEFAULT_NOTIFY_ON",
    "NOTIFY_EVENTS",
    "NOTIFY_GRACE_S",
    "Message",
    "Notifier",
    "apprise_sender",
    "parse_notify_on",
]

#: what can be told: the end of a run, a stop of its submits, an outage, its end
NOTIFY_EVENTS = ("end", "stop", "stall", "recover")
DEFAULT_NOTIFY_ON = ("end", "stop")
#: real seconds the end of a run waits for notifications still on their way: with the
#: process's own exit, a receiver that hangs delays the end by less than 10 s
NOTIFY_GRACE_S = 8.0
#: Apprise's own connect and read timeouts (seconds) for the URLs that take them: a
#: refusal or a silence is known before the grace runs out
APPRISE_TIMEOUT_S = 4
#: messages one run sends at most: an API that flaps must not flood a channel
MAX_MESSAGES = 20
#: characters of a reason quoted in a message (a chat line, not a log)
_QUOTE = 240

#: sends one message to one URL: True when the receiver took it
Sender = Callable[[str, "Message"], bool]


@dataclass(frozen=True, slots=True)
class Message:
    #: ``end``, ``stop``, ``stall`` or ``recover``
    event: str
    title: str
    body: str
    #: Apprise's notify type: ``info``, ``success``, ``warning`` or ``failure``
    level: str


def parse_notify_on(text: str) -> tuple[str, ...]:
    """``--notify-on``'s comma-separated list; ValueError naming what is unknown."""
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [c for c in chosen if c not in NOTIFY_EVENTS]
    if unknown or not chosen:
        raise ValueError(
            f"--notify-on: {', '.join(unknown) or 'nothing given'} "
            f"(choose from {', '.join(NOTIFY_EVENTS)}, comma-separated)"
        )
    return chosen


def _scheme(url: str) -> str:
    # Only the scheme: the rest of a notification URL often is a token (Slack, Discord).
    head, sep, _ = url.partition("://")
    return f"{head}://…" if sep else "?"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"


def apprise_sender(urls: Sequence[str]) -> Sender:
    """A :data:`Sender` through Apprise, every URL checked now: ApixoError names the first
    one Apprise cannot read (by its place and scheme, never its text), or the extra missing."""
    # Apprise imports modules Python deprecates (imghdr), some only when a URL is first
    # read: its business, not a warning for our users (nor an error under -W error).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _apprise_sender(urls)


def _apprise_sender(urls: Sequence[str]) -> Sender:
    try:
        import apprise
    except ImportError:
        raise ApixoError(
            "--notify needs the notify extra: pip install 'apixo-batch[notify]'"
        ) from None
    # Apprise logs a failed delivery with the URL in it, and a URL may hold a token: its
    # failures are told by our one warning line instead.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    by_url: dict[str, apprise.Apprise] = {}
    for i, url in enumerate(urls, 1):
        one = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not one.add(url):
            raise ApixoError(
                f"notify URL {i} ({_scheme(url)}) is not one Apprise can send to: "
                "see https://github.com/caronc/apprise/wiki for the URL of each service"
            )
        for service in one:
            # Bounded waits for the services that take them (every HTTP one does).
            if hasattr(service, "socket_connect_timeout"):
                service.socket_connect_timeout = APPRISE_TIMEOUT_S
                service.socket_read_timeout = APPRISE_TIMEOUT_S
        by_url[url] = one

    def send(url: str, message: Message) -> bool:
        return bool(
            by_url[url].notify(body=message.body, title=message.title, notify_type=message.level)
        )

    return send


class Notifier:
    """Tells a run's end, stops and outages to every URL, never blocking the run."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        campaign: str,
        on: Iterable[str] = DEFAULT_NOTIFY_ON,
        key: ApiKey | Sequence[ApiKey] | None,
        warn: Callable[[str], None],
        send: Sender | None = None,
    ) -> None:
        self.urls = list(urls)
        self.campaign = campaign
        self.on = frozenset(on)
        self._key = key
        self._warn = warn
        self._send = send if send is not None else apprise_sender(self.urls)
        self._threads: list[tuple[threading.Thread, Message, int]] = []
        self._lock = threading.Lock()
        self.sent = 0
        #: deliveries that failed or were given up
        self.failed = 0
        self._dropped = 0

    # -- events ---------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        message = self.message_for(event)
        if message is not None and message.event in self.on:
            self.post(message)

    def message_for(self, event: Event) -> Message | None:
        """The message ``event`` makes, if it is one worth telling (redacted)."""
        name = self.campaign
        if isinstance(event, Summary):
            message = self._end(event)
        elif isinstance(event, Stopped):
            kind = event.stop or "stop"
            message = Message(
                "stop",
                f"apixo-batch {name}: stopped submitting ({kind})",
                _quote(event.reason),
                "failure" if kind in ("refused", "fatal", "storage") else "warning",
            )
        elif isinstance(event, Warned) and event.about == "outage":
            message = Message(
                "stall",
                f"apixo-batch {name}: stalled, API unreachable",
                _quote(event.message),
                "warning",
            )
        elif isinstance(event, Warned) and event.about == "recovered":
            message = Message(
                "recover", f"apixo-batch {name}: recovered", _quote(event.message), "info"
            )
        else:
            return None
        return Message(
            message.event,
            redact(message.title, self._key),
            redact(message.body, self._key),
            message.level,
        )

    def _end(self, s: Summary) -> Message:
        try:
            meaning = MEANINGS[ExitCode(s.exit_code)]
        except ValueError:
            meaning = "unknown exit code"
        counts = ", ".join(f"{n} {state}" for state, n in s.counts.items() if n) or "no jobs"
        parts = [counts]
        if s.spent_usd is None:
            parts.append("spend unknown (journal unread)")
        else:
            spend = f"spent ${s.spent_usd:,.2f}"
            if s.unknown_price_jobs:
                spend += f" + {s.unknown_price_jobs} job(s) of unknown price"
            parts.append(spend)
        wall = f"took {human_duration(s.wall_s)}"
        if s.planned_wall_s is not None:
            wall += f" (forecast {human_duration(s.planned_wall_s)})"
        parts.append(wall)
        if s.fail_counts:
            top = sorted(s.fail_counts.items(), key=lambda kv: -kv[1])[:5]
            parts.append("failed by code: " + ", ".join(f"{code} {n}" for code, n in top))
        if s.error:
            parts.append(_quote(s.error))
        elif s.stop_reason:
            parts.append("stopped: " + _quote(s.stop_reason))
        if s.review:
            parts.append(f"review: {s.review}")
        level = "success" if s.exit_code == 0 else "warning" if s.exit_code == 1 else "failure"
        title = f"apixo-batch {self.campaign}: exit {s.exit_code}, {meaning}"
        return Message("end", title, "; ".join(parts), level)

    # -- delivery -------------------------------------------------------------
    def post(self, message: Message) -> None:
        """Send ``message`` to every URL, each on a thread of its own; returns at once."""
        with self._lock:
            if self.sent >= MAX_MESSAGES and message.event != "end":
                self._dropped += 1
                if self._dropped == 1:
                    self._warn(
                        f"{MAX_MESSAGES} notifications sent in this run: later ones are not "
                        "sent, but the end of the run still is"
                    )
                return
            self.sent += 1
        for i, url in enumerate(self.urls, 1):
            thread = threading.Thread(
                target=self._deliver,
                args=(i, url, message),
                name=f"apixo-batch-notify-{i}",
                daemon=True,  # a receiver that never answers must not hold the exit
            )
            thread.start()
            with self._lock:
                self._threads.append((thread, message, i))

    def _deliver(self, i: int, url: str, message: Message) -> None:
        try:
            ok = self._send(url, message)
            why = "the receiver refused it or did not answer in time"
        except Exception as exc:  # a plugin's bug must cost a warning, not the run
            ok, why = False, type(exc).__name__
        if not ok:
            with self._lock:
                self.failed += 1
            self._warn(
                f"WARNING: the {message.event!r} notification was not delivered to notify URL "
                f"{i} ({_scheme(url)}): {why}; the run is not affected"
            )

    def close(self, grace: float = NOTIFY_GRACE_S) -> None:
        """Wait for deliveries on their way, ``grace`` real seconds at most in all, then
        give up on the rest (their daemon threads die with the process)."""
        deadline = time.monotonic() + grace
        with self._lock:
            waiting, self._threads = self._threads, []
        late = []
        for thread, message, i in waiting:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                late.append((message, i))
        for message, i in late:
            with self._lock:
                self.failed += 1
            self._warn(
                f"WARNING: the {message.event!r} notification to notify URL {i} "
                f"({_scheme(self.urls[i - 1])}) had no answer within {grace:g} s: given up"
            )
