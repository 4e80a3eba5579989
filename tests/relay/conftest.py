"""Fixtures of the relay's end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import relay_section


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A running sandbox whose config has a [relay] section for the harness's legacy user."""
    async with Sandbox(tmp_path / "sandbox") as running:
        running.write_config(relay=relay_section())
        yield running
