"""Fixtures of the fake Exchange Online tests: keys and certificates per module, a server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox.exchange import FakeExchange
from tests.sandbox.exchange_helpers import ExchangeKit, make_kit, running_exchange


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ExchangeKit:
    """Signing key and TLS certificates, made once per module (key generation is the slow part)."""
    return make_kit(tmp_path_factory.mktemp("exchange-kit"))


@pytest.fixture
async def exchange(kit: ExchangeKit, tmp_path: Path) -> AsyncIterator[FakeExchange]:
    """A fake Exchange Online running on this test's loop, storing mail under tmp_path."""
    async with running_exchange(kit, tmp_path / "mail") as running:
        yield running
