"""Fixtures of the sandbox tests: a fake Entra ID; a fake Exchange Online with its keys and certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.testing import SandboxKeys
from tests.sandbox.exchange_helpers import ExchangeKit, make_kit, running_exchange
from tests.sandbox.idp_helpers import RunningIdp, running_idp


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ExchangeKit:
    """Signing key and TLS certificates, made once per module (key generation is the slow part)."""
    return make_kit(tmp_path_factory.mktemp("exchange-kit"))


@pytest.fixture
async def exchange(kit: ExchangeKit, tmp_path: Path) -> AsyncIterator[FakeExchange]:
    """A fake Exchange Online running on this test's loop, storing mail under tmp_path."""
    async with running_exchange(kit, tmp_path / "mail") as running:
        yield running


@pytest.fixture
def sandbox_idp(tmp_path: Path, smtp_oauth_sandbox_keys: SandboxKeys) -> Iterator[RunningIdp]:
    """A fake Entra ID with default options, serving HTTPS on loopback for this test."""
    with running_idp(tmp_path, smtp_oauth_sandbox_keys) as running:
        yield running
