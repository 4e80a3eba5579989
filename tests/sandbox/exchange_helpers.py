"""Shared pieces for the fake Exchange tests: a tenant, tokens signed directly, a real aiosmtplib client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib

from smtp_oauth.sandbox.certs import SandboxCertificates, make_certificates
from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.sandbox.keys import SigningKey

TENANT_ID = "0b6c3a5e-1f1e-4c1a-9d5e-5a4d1e2f3a4b"
APP_ID = "5f2b8c1d-7a3e-4b6f-8c9d-0e1f2a3b4c5d"
MAILBOX = "sender@sandbox.test"
OTHER_MAILBOX = "other@sandbox.test"
RECIPIENT = "someone@example.test"


@dataclass(frozen=True)
class ExchangeKit:
    """What a test needs around the server: the IdP's signing key and the sandbox CA."""

    key: SigningKey
    certs: SandboxCertificates


def make_kit(directory: Path) -> ExchangeKit:
    """A fresh signing key and CA (RSA key generation: build once per module)."""
    return ExchangeKit(key=SigningKey(), certs=make_certificates(directory))


def _claims(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; an override of None removes the claim."""
    claims = {**base, **overrides}
    return {name: value for name, value in claims.items() if value is not None}


def app_only_token(key: SigningKey, *, lifetime: int = 300, **overrides: Any) -> str:
    """A client-credentials access token like Entra's for ``.../.default`` on Exchange Online."""
    now = int(time.time())
    base = {
        "aud": "https://outlook.office365.com",
        "iss": f"https://sts.windows.net/{TENANT_ID}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": TENANT_ID,
        "appid": APP_ID,
        "azp": APP_ID,
        "oid": "7d1c2b3a-0000-4000-8000-000000000001",
        "roles": ["SMTP.SendAsApp"],
    }
    return key.sign(_claims(base, overrides))


def delegated_token(key: SigningKey, *, lifetime: int = 300, **overrides: Any) -> str:
    """A delegated access token like Entra's for ``https://outlook.office.com/SMTP.Send``."""
    now = int(time.time())
    base = {
        "aud": "https://outlook.office.com",
        "iss": f"https://sts.windows.net/{TENANT_ID}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": TENANT_ID,
        "appid": APP_ID,
        "oid": "7d1c2b3a-0000-4000-8000-000000000002",
        "scp": "SMTP.Send",
        "upn": MAILBOX,
        "unique_name": MAILBOX,
        "name": "Sandbox Sender",
    }
    return key.sign(_claims(base, overrides))


@asynccontextmanager
async def running_exchange(kit: ExchangeKit, store_dir: Path, **options: Any) -> AsyncIterator[FakeExchange]:
    """A started fake Exchange for MAILBOX and OTHER_MAILBOX, APP_ID granted MAILBOX only."""
    exchange = FakeExchange(
        signing_key=kit.key,
        tls_context=kit.certs.server_context(),
        store_dir=store_dir,
        mailboxes=[MAILBOX, OTHER_MAILBOX],
        app_grants={APP_ID: [MAILBOX]},
        tenant_id=TENANT_ID,
        **options,
    )
    await exchange.start()
    try:
        yield exchange
    finally:
        await exchange.stop()


def client(
    kit: ExchangeKit, exchange: FakeExchange, *, token: str | None = None, username: str = MAILBOX
) -> aiosmtplib.SMTP:
    """An aiosmtplib client for ``exchange``: STARTTLS, the sandbox CA, XOAUTH2 with ``token`` if given."""
    options: dict[str, Any] = {}
    if token is not None:
        value = token

        async def token_generator() -> str:
            return value

        options = {"username": username, "oauth_token_generator": token_generator}
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=exchange.port,
        start_tls=True,
        tls_context=kit.certs.client_context(),
        timeout=10,
        **options,
    )


def message(
    *, sender: str = MAILBOX, to: str = RECIPIENT, subject: str = "Hello", body: str = "Hi.\n"
) -> EmailMessage:
    """A small text message."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content(body)
    return mail
