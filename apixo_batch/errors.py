"""One exception tree for everything apixo-batch raises on purpose.

::

    ApixoError
    ├── JobFileError            the job file or command line is invalid (exit 2)
    ├── ApiError                APIXO answered with a non-200 code
    │   ├── InvalidRequest      400: the input was rejected; the job fails, no retry
    │   ├── AuthError           401: bad or missing key            (fatal)
    │   ├── InsufficientBalance 402, or 400 "Insufficient credits"  (fatal)
    │   ├── Forbidden           403: no access (fatal) / content rejected
    │   ├── NotFound            404: unknown model or task
    │   ├── RateLimited         429: slow down; carries Retry-After (retryable)
    │   └── ServerError         5xx: server or upstream trouble     (retryable)
    ├── TransportError          connection reset, timeout, bad JSON (retryable)
    ├── DownloadError           a result file could not be fetched
    │   ├── ResultExpired       403/404/410 from the file host: the URL is gone
    │   └── IntegrityError      short body, wrong length, not an MP4
    ├── JournalError            the journal refuses (locked, illegal transition)
    └── MissingApiKey           a run with API work to do was given no key

Leaves carry the context a user needs (job id, field, HTTP status) and never
the API key: messages are built from API answers and our own text only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ApiError",
    "ApixoError",
    "AuthError",
    "DownloadError",
    "FieldIssue",
    "Forbidden",
    "InsufficientBalance",
    "IntegrityError",
    "InvalidRequest",
    "JobFileError",
    "JournalError",
    "JournalUnreadable",
    "MissingApiKey",
    "NotFound",
    "OutputTaken",
    "PathError",
    "RateLimited",
    "ResultExpired",
    "ServerError",
    "StorageError",
    "TransportError",
    "api_error_for",
    "connection_trouble",
]


class ApixoError(Exception):
    """Base of every error apixo-batch raises on purpose."""

    #: retrying the same request later may succeed
    retryable: bool = False
    #: no further submits make sense for this account (bad key, no money, no access)
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One problem in a job file: where it is, which field, and what is wrong."""

    where: str  # "job 'drone-snow'", "prompts.csv row 12", "line 7"
    field: str  # "input.duration", "id", "" when the problem is not about one field
    message: str

    def __str__(self) -> str:
        field = f" field '{self.field}'" if self.field else ""
        return f"{self.where}{field}: {self.message}"


class JobFileError(ApixoError):
    """The job file (or command line) is invalid; every problem found is listed."""

    def __init__(self, issues: Sequence[FieldIssue], source: str = "") -> None:
        self.issues: tuple[FieldIssue, ...] = tuple(issues)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.issues)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} found"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class ApiError(ApixoError):
    """APIXO answered with an error code (in the HTTP status, the JSON code, or both)."""

    def __init__(self, status: int, message: str, *, endpoint: str = "") -> None:
        self.status = status
        self.api_message = message
        self.endpoint = endpoint
        where = f" ({endpoint})" if endpoint else ""
        super().__init__(f"APIXO {status}{where}: {message}")


class InvalidRequest(ApiError):
    """400: the request or its input was rejected; retrying the same input is pointless."""


class AuthError(ApiError):
    """401: the API key is missing or invalid."""

    fatal = True


class InsufficientBalance(ApiError):
    """402, or the documented 400 "Insufficient credits" body."""

    fatal = True


#: words of a 403 that refuses the content, not the key (kling-2-6's page: "Key or route
#: cannot access the model, or content was rejected")
_CONTENT_WORDS = ("content", "policy", "sensitive", "nsfw", "prohibited")


class Forbidden(ApiError):
    """403: the key cannot use this model or route (fatal: no submit of it can pass), or
    the content was rejected (``content_rejected``: the job's own input, not fatal)."""

    def __init__(self, status: int, message: str, *, endpoint: str = "") -> None:
        super().__init__(status, message, endpoint=endpoint)
        lowered = message.lower()
        self.content_rejected = any(word in lowered for word in _CONTENT_WORDS)
        self.fatal = not self.content_rejected


class NotFound(ApiError):
    """404: unknown model, route or task."""


class RateLimited(ApiError):
    """429: request-rate or concurrent-task limit reached."""

    retryable = True

    def __init__(
        self, status: int, message: str, *, endpoint: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(status, message, endpoint=endpoint)
        self.retry_after = retry_after
        #: the account's slot limit, not its request rate (the client decides, see there)
        self.slots = "concurren" in message.lower()


class ServerError(ApiError):
    """5xx: server or upstream provider trouble (a 503's Retry-After, if any, is kept)."""

    retryable = True

    def __init__(
        self, status: int, message: str, *, endpoint: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(status, message, endpoint=endpoint)
        self.retry_after = retry_after


class TransportError(ApixoError):
    """The request did not get a usable answer: reset, timeout, unparsable body.

    ``sent`` is False when the request provably never left (the connection was refused,
    the name did not resolve): a submit then cannot have created a task."""

    retryable = True

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class DownloadError(ApixoError):
    """A result file could not be fetched whole.

    ``unreachable``: the last attempts could not even connect to the file host (an
    outage): worth trying again later in the same run. ``local``: our own disk refused
    the file (full, read-only, permissions), not the host."""

    retryable = True

    def __init__(self, message: str, *, unreachable: bool = False, local: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.local = local


class ResultExpired(DownloadError):
    """The file host says the result URL is gone (403/404/410): it will not come back."""

    retryable = False


class IntegrityError(DownloadError):
    """The bytes received are not the promised file (short, too long, not an MP4)."""


class OutputTaken(DownloadError):
    """A file the journal did not record as this job's holds the result's final name, with
    other bytes than the result: it is not written over (the whole result stays in its
    ``.part`` for a later try)."""

    retryable = False


class JournalError(ApixoError):
    """The journal refused: locked by another run, or an illegal state change."""


class MissingApiKey(ApixoError):
    """A run has tasks to submit or follow and was given no API key (the CLI names
    ``APIXO_API_KEY``; the Python API never reads the environment)."""


class PathError(ApixoError):
    """An output folder or journal path that cannot exist (a file in the way, no write
    permission): found before anything is created on disk."""


class StorageError(ApixoError):
    """The disk failed the run (full, read-only, I/O error): names the path and the cause."""


class JournalUnreadable(JournalError, StorageError):
    """The journal file is there but cannot be opened: not a journal, damaged, unreadable."""


def api_error_for(
    status: int, message: str, *, endpoint: str = "", retry_after: float | None = None
) -> ApiError:
    """Map an APIXO error code (HTTP or JSON) and message to the right leaf."""
    if status == 429:
        return RateLimited(status, message, endpoint=endpoint, retry_after=retry_after)
    if status == 402 or "insufficient" in message.lower():
        # The docs show {"code": 400, "message": "Insufficient credits"}: money, not input.
        return InsufficientBalance(status, message, endpoint=endpoint)
    if status == 401:
        return AuthError(status, message, endpoint=endpoint)
    if status == 403:
        return Forbidden(status, message, endpoint=endpoint)
    if status == 404:
        return NotFound(status, message, endpoint=endpoint)
    if status >= 500:
        return ServerError(status, message, endpoint=endpoint, retry_after=retry_after)
    if 400 <= status < 500:
        return InvalidRequest(status, message, endpoint=endpoint)
    # A JSON code we do not know (e.g. 1xx/3xx): treat as server trouble, retryable.
    return ServerError(status, message, endpoint=endpoint)


def connection_trouble(exc: BaseException) -> str:
    """A transport exception in plain words: a connection that could not be made says
    ``cannot connect to HOST:PORT (connection refused)``, not aiohttp's
    ``Cannot connect to host … ssl:default [Connect call failed (…)]``."""
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    os_error = getattr(exc, "os_error", None)
    if isinstance(host, str) and isinstance(os_error, OSError):
        if isinstance(os_error, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(os_error, TimeoutError):
            why = "timed out"
        elif type(os_error).__name__ == "gaierror":  # socket's: the name did not resolve
            why = "name not resolved"
        else:
            why = (os_error.strerror or type(os_error).__name__).lower()
        where = f"{host}:{port}" if port is not None else host
        return f"cannot connect to {where} ({why})"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
