"""Fixtures (a pytest plugin, named in ``pytest_plugins``) for the Mailer and log handler tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox.certs import SandboxCertificates, make_certificates
from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.settings.models import Settings
from tests.smtp.sender_fakes import (
    CLIENT_ID,
    MAILBOX,
    OTHER_MAILBOX,
    TENANT_ID,
    SigningTokenProvider,
    make_settings,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SandboxCertificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run in tmp_path (no ./smtp-oauth.toml of the checkout); tests/conftest.py cleans the environment."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def exchange(
    certs: SandboxCertificates, signing_key: SigningKey, tmp_path: Path
) -> AsyncIterator[FakeExchange]:
    server = FakeExchange(
        signing_key=signing_key,
        tls_context=certs.server_context(),
        store_dir=tmp_path / "exchange",
        mailboxes=[MAILBOX, OTHER_MAILBOX],
        app_grants={CLIENT_ID: [MAILBOX, OTHER_MAILBOX]},
        tenant_id=TENANT_ID,
    )
    async with server:
        yield server


@pytest.fixture
def settings(clean_env: None, exchange: FakeExchange, certs: SandboxCertificates) -> Settings:
    return make_settings(exchange.port, certs.ca_file)


@pytest.fixture
def tokens(signing_key: SigningKey) -> SigningTokenProvider:
    return SigningTokenProvider(signing_key)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections and never answers: the slowest SMTP server there is."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for writer in held:
            writer.close()
