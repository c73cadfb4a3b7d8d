"""The journal backend of the end-to-end modules that run on both (issue 33).

A module opts in with ``pytestmark = [..., pytest.mark.usefixtures("backend")]``;
its tests then run on SQLite and, through ``--state`` added to every command
(tests/e2e.py ``with_backend``), on a fresh PostgreSQL database per campaign.
A test that reads the SQLite file itself is marked ``sqlite_only``.

The whole PostgreSQL matrix doubles those modules' time, so by default only the
first test of each module (that is not ``sqlite_only``) also runs on PostgreSQL;
``APIXO_TEST_PG_ALL=1`` runs every one on both (docs/contributing.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import e2e
import pytest

_PG_ALL = os.environ.get("APIXO_TEST_PG_ALL") == "1"
_first_seen: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: reads the SQLite journal file itself (no PostgreSQL param)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    params = ["sqlite"]
    if metafunc.definition.get_closest_marker("sqlite_only") is None:
        module = metafunc.module.__name__
        if _PG_ALL or module not in _first_seen:
            params.append("pg")
        _first_seen.add(module)
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """``sqlite`` (nothing to do), or ``pg``: every command of the test keeps its journal
    in a fresh database of the session's cluster (skipped where none can be had)."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    cluster: Any = request.getfixturevalue("pg_cluster")
    prefix = "e_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    databases = e2e.DATABASES = e2e.Databases(cluster.new_database, prefix)
    try:
        yield "pg"
    finally:
        e2e.DATABASES = None
    # The param means something only if no command fell back to a journal file.
    files = [out / ".apixo-batch.sqlite" for out in databases.folders()]
    assert not any(f.exists() for f in files), f"a SQLite journal beside a database: {files}"
