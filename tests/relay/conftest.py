"""Fixtures of the relay's tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from smtp_oauth.relay.spool.base import Spool
from smtp_oauth.relay.spool.postgres import PostgresSpool, PostgresTuning
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox
from tests.relay.postgres_server import PostgresServer, find_bin
from tests.relay.relay_harness import relay_section

SPOOL_BACKENDS = ["sqlite", "postgresql"]
FAST_LEASES = PostgresTuning(lease_ttl=1.0, lease_renew=0.2, handover_delay=0.1)

SqliteKind = TypeVar("SqliteKind", bound=SqliteSpool)
PostgresKind = TypeVar("PostgresKind", bound=PostgresSpool)


async def open_backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite: type[SqliteKind],
    postgres: type[PostgresKind],
) -> SqliteKind | PostgresKind:
    """A fresh, empty spool of the backend ``request.param`` names, opened as a relay opens it."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return await postgres.open(url, staging_dir=tmp_path / "incoming", deliver=True, tuning=FAST_LEASES)
    return await sqlite.open(tmp_path / "spool", exclusive=True)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A running sandbox whose config has a [relay] section for the harness's legacy user."""
    async with Sandbox(tmp_path / "sandbox") as running:
        running.write_config(relay=relay_section())
        yield running


@pytest.fixture(params=SPOOL_BACKENDS)
async def any_spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Spool]:
    """A fresh, empty spool of each backend, opened as a relay opens it."""
    opened: Spool = await open_backend(request, tmp_path, SqliteSpool, PostgresSpool)
    yield opened
    await opened.close()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[SqliteSpool]:
    """A fresh SQLite spool, opened as a relay opens it."""
    opened = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for this test process (skipped only where none is installed)."""
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (initdb not found); .ci/run installs it with apt-get")
    server = PostgresServer.start(bin_dir)
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the test server."""
    return postgres_server.create_database(f"t_{secrets.token_hex(6)}")
