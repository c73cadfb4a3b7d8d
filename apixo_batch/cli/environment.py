"""What the command line reads from the environment: the API key and the API's URL.

Only the CLI reads them; the Python API takes both as arguments, so an embedder's
run does what its code says whatever the process's environment holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..apixo.secret import ApiKey, redact
from ..defaults import DEFAULT_BASE_URL

__all__ = ["BASE_URL_VAR", "KEY_VAR", "base_url", "load_api_key", "redact_env"]

KEY_VAR = "APIXO_API_KEY"
BASE_URL_VAR = "APIXO_BASE_URL"


def load_api_key(key_file: str | Path | None = None, env: str = KEY_VAR) -> ApiKey | None:
    """The key from ``--api-key-file`` if given, else from the environment, else None."""
    if key_file is not None:
        return ApiKey(Path(key_file).read_text(encoding="utf-8"))
    value = os.environ.get(env, "").strip()
    return ApiKey(value) if value else None


def base_url(flag: str | None) -> str:
    """``--base-url``, else ``$APIXO_BASE_URL``, else the real API."""
    return flag or os.environ.get(BASE_URL_VAR) or DEFAULT_BASE_URL


def redact_env(text: str) -> str:
    """``text`` without the key of the environment (where no ApiKey is at hand)."""
    try:
        key = load_api_key()
    except (OSError, ValueError):
        return text
    return redact(text, key)
