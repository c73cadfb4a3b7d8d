"""Shared fixtures. Kept small: anything used by one test module lives in that module."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses
from simfixture import *  # noqa: F403  (simulator factory fixture, tests/simfixture.py)

import apixo_batch.journal as journal_package
from apixo_batch.journal import InlineJournal, Journal


class _StubStreamWriter:
    """Stands in for the request writer aiohttp >= 3.14 hands every ClientResponse."""

    output_size = 0


class _CompatResponse(ClientResponse):
    """A ClientResponse that aioresponses 0.7.9 can build under aiohttp >= 3.14.

    Remove this class (and the ``_CompatAioresponses`` subclass below) once an
    aioresponses release passes ``stream_writer`` itself, i.e. supports
    aiohttp >= 3.14; aiohttp must not be pinned below 3.14 (security fix).
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _StubStreamWriter())
        super().__init__(method, url, **kwargs)


class _CompatAioresponses(aioresponses):  # type: ignore[misc]
    """aioresponses whose every mocked answer, callbacks included, uses ``_CompatResponse``."""

    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:
        if kwargs.get("response_class") is None:
            kwargs["response_class"] = _CompatResponse
        callback = kwargs.get("callback")
        if callback is not None:
            kwargs["callback"] = _compat_callback(callback)
        super().add(url, method, **kwargs)


def _compat_callback(callback: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(url: Any, **kwargs: Any) -> Any:
        result = callback(url, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, CallbackResult) and result.response_class is None:
            result.response_class = _CompatResponse
        return result

    return wrapped


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    """Close the loop looptime makes for a plain (not async) test.

    looptime's plugin asks the loop policy for the test's loop even when the test is
    not a coroutine, and on Python 3.11 that makes a loop nobody closes: its
    ResourceWarning then fails whichever later test the garbage collector runs in."""
    plain = pyfuncitem.get_closest_marker("asyncio") is None
    try:
        return (yield)
    finally:
        if plain:
            with warnings.catch_warnings(), contextlib.suppress(RuntimeError):
                warnings.simplefilter("ignore", DeprecationWarning)
                # (RuntimeError: no loop, e.g. the test ran asyncio.run: nothing to close)
                stray = asyncio.get_event_loop_policy().get_event_loop()
                if not stray.is_running():
                    stray.close()  # still the current loop: the next plain test reuses it


@pytest.fixture
def inline_run_journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[InlineJournal]]:
    """A whole run's journal answers on the loop's own thread, at once (runs on looptime).

    The journal thread's answers arrive from outside the loop: while the loop waits for
    one it looks idle, and virtual time would jump to the next timer (a poll, a task's
    end) at whatever moment the thread happens to be slow."""
    made: list[InlineJournal] = []

    def inline(journal: Journal, **_: Any) -> InlineJournal:
        made.append(InlineJournal(journal))
        return made[-1]

    monkeypatch.setattr(journal_package, "AsyncJournal", inline)
    yield made
    assert made, "the run no longer builds its journal in journal.open_ledger: patch it there"


@pytest.fixture
def mock_api() -> Iterator[aioresponses]:
    """aioresponses, patched to work with aiohttp >= 3.14 (see ``_CompatResponse``)."""
    with _CompatAioresponses() as mocked:
        yield mocked


#: fixtures of tests that wait on real processes or real time (a cluster, a browser)
_SLOW_FIXTURES = frozenset({"pg_cluster", "page", "rgw"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run real processes in real time first: with pytest-xdist's work
    stealing the quick unit tests then fill the workers' gaps and the run ends with
    them, not with one worker alone on a 30 s campaign (a longest-first schedule)."""

    def slow(item: pytest.Item) -> bool:
        names = getattr(item, "fixturenames", ())
        return item.get_closest_marker("e2e") is not None or not _SLOW_FIXTURES.isdisjoint(names)

    items.sort(key=lambda item: not slow(item))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (tests/pg.py); skips where none can
    be had, with the line that says why."""
    from pg import pg_missing, start_cluster

    why = pg_missing()
    if why is not None:
        pytest.skip(f"PostgreSQL tests: {why}")
    # Without fsync: a server crash (``pg_ctl -m immediate``, what the tests do) keeps
    # all that reached the OS, so no test's outcome changes, while six workers' clusters
    # flushing the one disk at every commit made every PostgreSQL test wait on it. The
    # bench keeps fsync: it counts WAL flushes.
    cluster = start_cluster(fsync=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh database on the session's cluster, one per test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:55]
    url: str = pg_cluster.new_database(name)
    return url


def _skipped_suites() -> list[str]:
    """One line for each suite that needs what this machine lacks."""
    from browser import why_no_browser
    from pg import pg_missing
    from rgw import rgw_missing

    lines = []
    if (why := pg_missing()) is not None:
        lines.append(f"PostgreSQL journal tests: SKIPPED, {why}")
    if (why := why_no_browser()) is not None:
        lines.append(f"browser tests: SKIPPED, {why}")
    if (why := rgw_missing()) is not None:
        lines.append(f"S3 tests (tests/end_to_end/test_s3_e2e.py): SKIPPED, {why}")
    return lines


def pytest_report_header(config: object) -> list[str]:
    """At the top of every run: whether the review page is tested in a browser, and the
    s3:// output against a real S3 server."""
    from browser import chromium_path, why_no_browser
    from pg import pg_missing
    from rgw import rgw_missing

    lines = _skipped_suites()
    if why_no_browser() is None:
        lines.append(f"browser tests: Chromium at {chromium_path()}")
    if rgw_missing() is None:
        lines.append("S3 tests: Ceph RGW from this machine's packages")
    if pg_missing() is None:
        lines.append("PostgreSQL journal tests: a throwaway cluster from this machine's packages")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The skip lines again at the end, where `pytest -q` (make test) shows them too."""
    for line in _skipped_suites():
        terminalreporter.write_line(line)
