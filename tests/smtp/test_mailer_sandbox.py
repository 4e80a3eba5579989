"""The Mailer end to end on the sandbox: real MSAL against the fake Entra ID, the fake Exchange Online."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from email.message import EmailMessage

import pytest

from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.models import Settings
from smtp_oauth.smtp.mailer import Mailer
from smtp_oauth.smtp.xoauth2 import encode
from smtp_oauth.tokens.provider import create_token_provider
from smtp_oauth.tokens.types import TokenProvider
from smtp_oauth.transport import send_message


class RecordingProvider:
    """Passes tokens through from the real provider and remembers them, to look for leaks."""

    def __init__(self, inner: TokenProvider) -> None:
        self._inner = inner
        self.calls: list[bool] = []
        self.issued: list[str] = []

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        self.calls.append(force_refresh)
        token = await self._inner.access_token(force_refresh=force_refresh, scopes=scopes)
        self.issued.append(token)
        return token


def note(to: str = "alice@example.test") -> EmailMessage:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = "sandbox"
    msg.set_content("Hello through the sandbox.\n")
    return msg


@pytest.fixture
def sandbox_settings(smtp_oauth_sandbox: Sandbox) -> Settings:
    return smtp_oauth_sandbox.settings()


async def test_mailer_sends_with_a_token_from_msal(
    smtp_oauth_sandbox: Sandbox, sandbox_settings: Settings
) -> None:
    """With no token_provider the Mailer gets its token through MSAL and the message is delivered."""
    async with Mailer(sandbox_settings) as mailer:
        result = await mailer.send(note())
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == sandbox_settings.smtp.username
    assert result.accepted == ["alice@example.test"]


async def test_refused_token_is_replaced_through_msal(
    smtp_oauth_sandbox: Sandbox, sandbox_settings: Settings
) -> None:
    """One 535: the retry asks MSAL for a new token with force_refresh=True and the send succeeds."""
    provider = RecordingProvider(create_token_provider(sandbox_settings))
    smtp_oauth_sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful")
    async with Mailer(sandbox_settings, token_provider=provider) as mailer:
        await mailer.send(note())
    assert provider.calls == [False, True]
    assert provider.issued[0] != provider.issued[1]
    assert len(smtp_oauth_sandbox.delivered()) == 1


async def test_send_message_from_synchronous_code(
    smtp_oauth_sandbox: Sandbox, sandbox_settings: Settings
) -> None:
    """send_message() connects, sends and quits from plain synchronous code."""
    result = await asyncio.to_thread(send_message, note("bob@example.test"), settings=sandbox_settings)
    assert result.accepted == ["bob@example.test"]
    assert [d.rcpt_tos for d in smtp_oauth_sandbox.delivered()] == [["bob@example.test"]]


async def test_send_message_refuses_a_running_loop(sandbox_settings: Settings) -> None:
    """Inside an event loop send_message() raises and points to create_transport instead of blocking."""
    with pytest.raises(RuntimeError, match="create_transport"):
        send_message(note(), settings=sandbox_settings)


async def test_debug_logs_and_transcript_hold_no_token(
    smtp_oauth_sandbox: Sandbox, sandbox_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, neither the captured logs nor the transcript contain a token or an XOAUTH2 blob."""
    caplog.set_level(logging.DEBUG)
    provider = RecordingProvider(create_token_provider(sandbox_settings))
    lines: list[tuple[str, str]] = []
    smtp_oauth_sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful")  # two tokens, two AUTHs

    def record(direction: str, text: str) -> None:
        lines.append((direction, text))

    async with Mailer(sandbox_settings, token_provider=provider, transcript=record) as mailer:
        await mailer.send(note())
    mailbox = sandbox_settings.smtp.username
    secrets = [*provider.issued, *(encode(mailbox, token) for token in provider.issued)]
    transcript = "\n".join(f"{direction}: {text}" for direction, text in lines)
    assert len(provider.issued) == 2
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in transcript
    assert "C: AUTH XOAUTH2 [redacted]" in transcript
    assert "C: STARTTLS" in transcript
    assert f"C: MAIL FROM:<{mailbox}>" in transcript
    assert transcript.startswith("S: 220 ")  # the greeting first, as on the wire
    assert "S: 354" in transcript
    assert "C: [message: " in transcript
    assert "S: 235" in transcript
