"""Finding a real browser for the review page's tests: Debian's Chromium, driven by
Playwright (its own browsers are never downloaded: offline, the system's is used)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["browser_page", "chromium_path", "why_no_browser"]


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


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A fresh Chromium tab (1280x900) that records and dismisses every dialog in
    ``tab.dialogs``: a script that a page runs by mistake shows there."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 900})
            tab.dialogs = []

            async def dialog(d: Any) -> None:
                tab.dialogs.append(d.message)
                await d.dismiss()

            tab.on("dialog", dialog)
            yield tab
        finally:
            await browser.close()
