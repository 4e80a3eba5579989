"""Fixtures of the relay's end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import clean_environment, relay_section


@pytest.fixture
async def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    """A running sandbox whose config has a [relay] section for the harness's legacy user."""
    clean_environment(monkeypatch, tmp_path)
    async with Sandbox(tmp_path / "sandbox") as running:
        running.write_config(relay=relay_section())
        yield running
