"""Shared fixtures: real SQLite files and throwaway PostgreSQL databases for the backend tests.

Nothing heavy is imported at module level: some tests check what `import crossfade` pulls in.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("CROSSFADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _libpq(url: str) -> str:
    """The URL as psycopg takes it (no `+driver` suffix in the scheme)."""
    parts = urlsplit(url)
    return parts._replace(scheme="postgresql").geturl()


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    """The PostgreSQL server URL, once checked reachable; skips (fails on CI) when it is not."""
    try:
        import psycopg

        psycopg.connect(_libpq(POSTGRES_URL), connect_timeout=3, autocommit=True).close()
    except Exception as e:  # noqa: BLE001 - any failure to connect means the same to the suite
        message = f"PostgreSQL not reachable at URL: {POSTGRES_URL} ({e})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLite URL naming a file that does not exist yet, in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'crossfade.db'}"


@pytest.fixture
def postgres_url(_postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"cf_{uuid.uuid4().hex[:16]}"
    admin = _libpq(_postgres_server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(_postgres_server)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request) -> str:
    """A URL of a fresh, empty store: a SQLite file, then a PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_url")
