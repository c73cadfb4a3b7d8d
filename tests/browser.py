"""Finding a real browser for the review page's tests: Debian's Chromium, driven by
Playwright (its own browsers are never downloaded: offline, the system's is used)."""

from __future__ import annotations

import importlib.util
import os
import shutil

__all__ = ["chromium_path", "why_no_browser"]


def chromium_path() -> str | None:
    """APIXO_CHROMIUM, else chromium or chromium-browser on PATH."""
    given = os.environ.get("APIXO_CHROMIUM")
    if given is not None:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def why_no_browser() -> str | None:
    """One line saying why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set APIXO_CHROMIUM)"
    return None
