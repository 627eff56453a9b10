"""Ledger locations for tests run against both backends: an SQLite file and a real PostgreSQL.

Load it in a test module with ``pytest_plugins = ("tests.ledger_backends",)`` and ask for
``ledger_at``: every test then runs once per
backend (ids ``sqlite`` and ``postgres``). ``ledger_at(name)`` is a fresh location per name and
test -- a file in ``tmp_path``, or an empty schema of the session's PostgreSQL server as a
``postgresql://`` URL -- and the same location for the same name within the test, so a test can
reopen "the same file".

The server is real, not a mock: the ``pgserver`` wheel (a dev dependency) carries PostgreSQL's
binaries and starts one server per test session in a temporary folder (listening on a Unix
socket only), deleted when the session ends. If it cannot start, every PostgreSQL test FAILS
with the reason -- it is never skipped silently; deselect them explicitly with
``-k "not postgres"`` on a machine that cannot run PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("sqlite", "postgres")

_server: dict[str, Any] = {}  # one server per session, whichever module asks first


def _start_server() -> str:
    """The admin URL of the session's PostgreSQL server (started on first use)."""
    if "url" in _server:
        return str(_server["url"])
    if "error" in _server:
        raise RuntimeError(_server["error"])
    try:
        import psycopg

        from scripts.local_postgres import start_postgres

        url, srv = start_postgres()
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("SELECT 1")
    except Exception as err:  # any failure: reported (once) by every test
        _server["error"] = (
            f"the PostgreSQL test server could not start ({type(err).__name__}: {err}). It is "
            "started from the pgserver wheel (pip install -e '.[dev]'). These tests fail rather "
            "than skip; on a machine that cannot run PostgreSQL deselect them explicitly with "
            "-k 'not postgres'"
        )
        raise RuntimeError(_server["error"]) from err
    _server["url"] = url
    _server["handle"] = srv  # keeps it running until the session's end (then deleted)
    return url


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL (``postgresql://postgres@<socket folder>/postgres``) of a real server."""
    try:
        return _start_server()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


def new_schema(server: str) -> str:
    """A ledger URL naming a new, empty schema of ``server``."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:20]}"
    with psycopg.connect(server, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    return f"{server}?options=-csearch_path%3D{schema}"


def run_sql(url: str, *statements: str) -> None:
    """Run SQL in the ledger's schema, outside dpface (to tamper with it, in tests)."""
    import psycopg

    with psycopg.connect(url) as con:
        for stmt in statements:
            con.execute(stmt)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger_at(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``ledger_at(name="l.db")``: a fresh ledger location of this test's backend."""
    if backend == "sqlite":
        return lambda name="l.db": tmp_path / name
    server = request.getfixturevalue("postgres_server")
    made: dict[str, str] = {}

    def at(name: str = "l.db") -> str:
        if name not in made:
            made[name] = new_schema(server)
        return made[name]

    return at
