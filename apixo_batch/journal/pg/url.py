"""A journal in PostgreSQL is named by a URL: told apart from a path, shown without secrets.

Nothing here imports psycopg: a run without the ``pg`` extra must still tell a
database URL from a path, and say which extra it needs in one line.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import JournalError

__all__ = ["EXTRA", "is_database", "needs_driver", "scrub", "shown"]

#: what to install for a journal in PostgreSQL
EXTRA = "pip install 'apixo-batch[pg]'"
_SCHEMES = ("postgresql://", "postgres://")
# key=value conninfo words that hold secrets (libpq's names)
_SECRET_KEYS = frozenset({"password", "sslpassword"})


def is_database(state: str | None) -> bool:
    """True if ``--state`` (or ``APIXO_BATCH_STATE``) names a PostgreSQL database."""
    return state is not None and state.lower().startswith(_SCHEMES)


def shown(url: str) -> str:
    """``url`` as output, logs and the manifest may show it: its password replaced by
    ``***`` (in the user part and in the query), everything else as given."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs])
    text = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # A URL urlsplit could not take apart still loses anything after a "password=".
    return re.sub(r"(password=)[^&\s]*", r"\1***", text, flags=re.IGNORECASE)


def needs_driver(url: str) -> None:
    """Raise :class:`JournalError` (one line naming the extra) when psycopg 3 and its pool
    are not installed."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise JournalError(
            f"--state {shown(url)} keeps the journal in PostgreSQL, which needs psycopg 3 "
            f"and psycopg-pool: {EXTRA}"
        ) from None


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with the URL's password, should it appear, masked."""
    parts = urlsplit(url)
    secrets = [parts.password or ""]
    secrets += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_KEYS]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text.replace(url, shown(url))
