"""What the command line reads from the environment: the API key, the API's URL, and
the lease of a runner on a shared (PostgreSQL) campaign.

Only the CLI reads them; the Python API takes both as arguments, so an embedder's
run does what its code says whatever the process's environment holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..apixo.secret import ApiKey, KeySpec, parse_keys, redact, unique_keys
from ..defaults import DEFAULT_BASE_URL, GRACE_S, LEASE_S

__all__ = [
    "BASE_URL_VAR",
    "GRACE_VAR",
    "KEY_VAR",
    "LEASE_VAR",
    "base_url",
    "load_api_key",
    "load_api_keys",
    "redact_env",
    "runner_lease",
]

KEY_VAR = "APIXO_API_KEY"
BASE_URL_VAR = "APIXO_BASE_URL"
LEASE_VAR = "APIXO_BATCH_LEASE_S"
GRACE_VAR = "APIXO_BATCH_GRACE_S"


def runner_lease() -> tuple[float, float]:
    """(lease, grace) in seconds of a runner on a PostgreSQL campaign: the defaults, or
    ``$APIXO_BATCH_LEASE_S`` (the grace then scales with it, unless
    ``$APIXO_BATCH_GRACE_S`` says). Short leases are for tests: a dead runner's work is
    adopted sooner, and a runner stalled longer than its lease stops (exit 75).
    ValueError naming the variable."""

    def seconds(var: str) -> float | None:
        text = os.environ.get(var, "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ValueError(f"${var}: {text!r} is not a number of seconds above zero")
        return value

    lease = seconds(LEASE_VAR)
    grace = seconds(GRACE_VAR)
    if lease is None:
        return LEASE_S, GRACE_S if grace is None else grace
    return lease, lease * GRACE_S / LEASE_S if grace is None else grace


def load_api_key(
    key_file: str | Path | Sequence[str | Path] | None = None, env: str = KEY_VAR
) -> ApiKey | None:
    """The (first) key from ``--api-key-file`` if given, else from the environment, else
    None."""
    keys = load_api_keys(key_file, env)
    return keys[0].key if keys else None


def load_api_keys(
    key_files: str | Path | Sequence[str | Path] | None = None, env: str = KEY_VAR
) -> list[KeySpec]:
    """Every key of every ``--api-key-file`` (one per line, each with its optional
    limits), else the comma-separated keys of the environment; a key given twice counts
    once. Raises OSError or ValueError (naming the file and line, never a key)."""
    if isinstance(key_files, str | Path):
        key_files = [key_files]
    if key_files:
        found: list[KeySpec] = []
        for path in key_files:
            keys = parse_keys(Path(path).read_text(encoding="utf-8"), str(path))
            if not keys:
                raise ValueError(f"{path}: no API key in it (one per line; # starts a comment)")
            found.extend(keys)
        return unique_keys(found)
    value = os.environ.get(env, "")
    return unique_keys([KeySpec(ApiKey(part)) for part in value.split(",") if part.strip()])


def base_url(flag: str | None) -> str:
    """``--base-url``, else ``$APIXO_BASE_URL``, else the real API."""
    return flag or os.environ.get(BASE_URL_VAR) or DEFAULT_BASE_URL


def redact_env(text: str) -> str:
    """``text`` without the key of the environment (where no ApiKey is at hand)."""
    try:
        keys = load_api_keys()
    except (OSError, ValueError):
        return text
    return redact(text, [k.key for k in keys])
