"""fallback_transport = "graph": SMTP first; a 535 5.7.139 (SMTP AUTH disabled) sends through Graph."""

from __future__ import annotations

import logging
from email.message import EmailMessage

import pytest

from smtp_oauth.errors import AuthenticationError
from smtp_oauth.graph.client import GraphClient
from smtp_oauth.graph.fallback import FallbackTransport
from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.models import Settings
from smtp_oauth.transport import create_transport

SMTP_AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
    "Visit https://aka.ms/smtp_auth_disabled for more information."
)


@pytest.fixture
def fallback_settings(smtp_oauth_sandbox: Sandbox) -> Settings:
    smtp_oauth_sandbox.write_config(fallback_transport="graph")
    return smtp_oauth_sandbox.settings()


def _message(sandbox: Sandbox) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sandbox.tenant.mailbox
    message["To"] = "rcpt@example.test"
    message["Subject"] = "fallback"
    message.set_content("SMTP or Graph.\n")
    return message


async def test_smtp_is_used_while_it_works(smtp_oauth_sandbox: Sandbox, fallback_settings: Settings) -> None:
    """With the fallback configured and SMTP AUTH working, the message goes through SMTP."""
    async with create_transport(fallback_settings) as transport:
        assert isinstance(transport, FallbackTransport)
        await transport.send(_message(smtp_oauth_sandbox))
    assert len(smtp_oauth_sandbox.delivered()) == 1
    assert smtp_oauth_sandbox.graph_delivered() == []


async def test_a_5_7_139_refusal_sends_the_message_through_graph_and_says_so_once(
    smtp_oauth_sandbox: Sandbox, fallback_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """535 5.7.139 -> the same message via Graph; a second message goes to Graph directly; one log line."""
    smtp_oauth_sandbox.inject("AUTH", SMTP_AUTH_DISABLED, times=2)  # the Mailer retries once with a new token
    client = GraphClient(fallback_settings)
    caplog.set_level(logging.WARNING, logger="smtp_oauth.graph")
    try:
        for _ in range(2):
            async with create_transport(fallback_settings, graph_client=client) as transport:
                result = await transport.send(_message(smtp_oauth_sandbox))
            assert "Microsoft Graph" in result.reply
    finally:
        await client.aclose()
    assert smtp_oauth_sandbox.delivered() == []
    assert len(smtp_oauth_sandbox.graph_delivered()) == 2
    assert smtp_oauth_sandbox.exchange.auth_attempts == 2  # the second message did not try SMTP
    notes = [r for r in caplog.records if "SMTP AUTH is disabled" in r.getMessage()]
    assert len(notes) == 1
    assert smtp_oauth_sandbox.tenant.mailbox in notes[0].getMessage()
    assert "Set-CASMailbox" in notes[0].getMessage()


async def test_other_authentication_failures_do_not_fall_back(
    smtp_oauth_sandbox: Sandbox, fallback_settings: Settings
) -> None:
    """535 5.7.3 (a refused token) is the SMTP error it is: Graph is not tried."""
    smtp_oauth_sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful", times=2)
    async with create_transport(fallback_settings) as transport:
        with pytest.raises(AuthenticationError) as caught:
            await transport.send(_message(smtp_oauth_sandbox))
    assert caught.value.enhanced_status == "5.7.3"
    assert smtp_oauth_sandbox.graph.requests() == []
