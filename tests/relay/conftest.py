"""Fixtures of the relay's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.relay.spool.base import Spool
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import relay_section

SPOOL_BACKENDS = ["sqlite"]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A running sandbox whose config has a [relay] section for the harness's legacy user."""
    async with Sandbox(tmp_path / "sandbox") as running:
        running.write_config(relay=relay_section())
        yield running


@pytest.fixture(params=SPOOL_BACKENDS)
async def any_spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Spool]:
    """A fresh, empty spool of each backend, opened as a relay opens it."""
    opened = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    yield opened
    await opened.close()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[SqliteSpool]:
    """A fresh SQLite spool, opened as a relay opens it."""
    opened = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    yield opened
    await opened.close()
