"""Helpers for the Mailer and log handler tests: ids, settings, and a token provider that signs.

The token provider stands in for MSAL at the ``TokenProvider`` seam: it signs tokens with the
sandbox key exactly as the sandbox IdP does, so the fake Exchange verifies them for real.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.settings.models import Settings
from smtp_oauth.smtp.xoauth2 import encode

TENANT_ID = "7f3c2a1e-0000-4000-8000-00000000a11c"
CLIENT_ID = "0b7a5d52-1111-4222-8333-444455556666"
MAILBOX = "sender@sandbox.test"
EXCHANGE_AUDIENCE = "https://outlook.office365.com"
OTHER_MAILBOX = "other@sandbox.test"


class SigningTokenProvider:
    """Issues app-only tokens for CLIENT_ID; the first ``refused`` ones name the wrong tenant."""

    def __init__(self, key: SigningKey, *, refused: int = 0) -> None:
        self._key = key
        self._refused = refused
        self.calls: list[bool] = []  # force_refresh of each call
        self.issued: list[str] = []

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        """A token for Exchange Online, or for the resource of ``scopes`` ("<resource>/.default")."""
        self.calls.append(force_refresh)
        now = int(time.time())
        tenant = "wrong-tenant" if len(self.calls) <= self._refused else TENANT_ID
        audience = scopes[0].removesuffix("/.default") if scopes else EXCHANGE_AUDIENCE
        token = self._key.sign(
            {
                "aud": audience,
                "tid": tenant,
                "appid": CLIENT_ID,
                "roles": ["SMTP.SendAsApp"],
                "iat": now,
                "exp": now + 600,
            }
        )
        self.issued.append(token)
        return token

    def secrets(self, user: str = MAILBOX) -> list[str]:
        """Every token issued and its XOAUTH2 blob: none of these may show up in logs."""
        return [*self.issued, *(encode(user, token) for token in self.issued)]


def make_settings(port: int, ca_file: Path | None, **smtp: object) -> Settings:
    """Settings pointing at 127.0.0.1:port, trusting ``ca_file``."""
    return Settings(
        identity={"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": "not-used-here"},
        smtp={
            "host": "127.0.0.1",
            "port": port,
            "username": MAILBOX,
            "ca_file": ca_file,
            "timeout": 5,
            **smtp,
        },
    )
