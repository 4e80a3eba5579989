"""The fake Exchange Online's AUTH XOAUTH2: which tokens open which mailbox, in which SMTP forms."""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiosmtplib
import pytest

from smtp_oauth.sandbox.exchange.server import DEFAULT_HOSTNAME, FakeExchange
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.smtp import xoauth2
from tests.sandbox.exchange_helpers import (
    APP_ID,
    MAILBOX,
    OTHER_MAILBOX,
    ExchangeKit,
    app_only_token,
    client,
    delegated_token,
    message,
)

REFUSED = f"5.7.3 Authentication unsuccessful [{DEFAULT_HOSTNAME}]"


async def refusal(kit: ExchangeKit, exchange: FakeExchange, token: str, *, username: str = MAILBOX) -> Any:
    """The SMTPAuthenticationError a client gets when it logs in with ``token``."""
    smtp = client(kit, exchange, token=token, username=username)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await smtp.connect()
    smtp.close()
    return info.value


async def test_app_only_token_is_accepted_and_can_send(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A client-credentials token with SMTP.SendAsApp, granted the mailbox, logs in and sends."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        refused, reply = await smtp.send_message(message())
    assert refused == {}
    assert reply.startswith("2.6.0 ")
    assert [m.auth_user for m in exchange.delivered()] == [MAILBOX]
    assert (exchange.auth_attempts, exchange.auth_failures) == (1, 0)


async def test_delegated_token_is_accepted_and_can_send(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A delegated token with scp SMTP.Send whose upn is the user= mailbox logs in and sends."""
    async with client(kit, exchange, token=delegated_token(kit.key)) as smtp:
        await smtp.send_message(message())
    assert len(exchange.delivered()) == 1


async def test_user_is_compared_case_insensitively(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """user= and upn match whatever their case, as Exchange resolves addresses."""
    token = delegated_token(kit.key, upn=MAILBOX.upper())
    async with client(kit, exchange, token=token, username=MAILBOX.title()) as smtp:
        assert smtp.is_connected


@pytest.mark.parametrize(
    "audience",
    ["https://outlook.office365.com", "https://outlook.office.com", "00000002-0000-0ff1-ce00-000000000000"],
)
async def test_every_exchange_audience_is_accepted(
    kit: ExchangeKit, exchange: FakeExchange, audience: str
) -> None:
    """Both Exchange Online audiences and its resource app id are accepted."""
    async with client(kit, exchange, token=app_only_token(kit.key, aud=audience)) as smtp:
        assert smtp.is_connected


async def test_expired_token_is_refused_with_535_5_7_3(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An expired token gets Exchange's generic 535 5.7.3 naming the front-end host."""
    error = await refusal(kit, exchange, app_only_token(kit.key, lifetime=-10))
    assert (error.code, error.message) == (535, REFUSED)
    assert (exchange.auth_attempts, exchange.auth_failures) == (1, 1)


async def test_wrong_audience_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A token for another resource (Microsoft Graph) is refused."""
    error = await refusal(kit, exchange, app_only_token(kit.key, aud="https://graph.microsoft.com"))
    assert error.code == 535


async def test_wrong_tenant_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A token issued by another tenant is refused."""
    error = await refusal(kit, exchange, app_only_token(kit.key, tid="11111111-2222-3333-4444-555555555555"))
    assert error.code == 535


async def test_token_signed_by_another_key_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A token whose signature is not the sandbox identity provider's is refused."""
    error = await refusal(kit, exchange, app_only_token(SigningKey()))
    assert error.code == 535


async def test_app_only_token_without_send_as_app_role_is_refused(
    kit: ExchangeKit, exchange: FakeExchange
) -> None:
    """An app-only token lacking the SMTP.SendAsApp role is refused."""
    error = await refusal(kit, exchange, app_only_token(kit.key, roles=["Mail.Send"]))
    assert error.code == 535


async def test_delegated_token_without_smtp_send_scope_is_refused(
    kit: ExchangeKit, exchange: FakeExchange
) -> None:
    """A delegated token lacking the SMTP.Send scope is refused."""
    error = await refusal(kit, exchange, delegated_token(kit.key, scp="Mail.Read openid"))
    assert error.code == 535


async def test_delegated_token_for_another_user_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A delegated token whose upn is not the user= mailbox is refused."""
    error = await refusal(kit, exchange, delegated_token(kit.key, upn=OTHER_MAILBOX))
    assert error.code == 535


async def test_app_not_granted_the_mailbox_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An app-only token for a mailbox the app has no permission on is refused."""
    error = await refusal(kit, exchange, app_only_token(kit.key), username=OTHER_MAILBOX)
    assert error.code == 535


async def test_unregistered_app_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An app-only token from an application with no grants at all is refused."""
    error = await refusal(kit, exchange, app_only_token(kit.key, appid="unknown-app", azp="unknown-app"))
    assert error.code == 535


async def test_refusal_reason_is_logged_without_the_token(
    kit: ExchangeKit, exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """The real reason goes to the smtp_oauth.sandbox log at INFO; the token never does."""
    token = app_only_token(kit.key, lifetime=-10)
    with caplog.at_level(logging.INFO, logger="smtp_oauth.sandbox"):
        await refusal(kit, exchange, token)
    assert "token expired" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


async def test_two_step_form_with_bare_334_is_accepted(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """AUTH XOAUTH2 alone gets a bare '334 ', then the base64 blob on its own line logs in."""
    async with client(kit, exchange) as smtp:
        await smtp.ehlo()
        challenge = await smtp.execute_command(b"AUTH", b"XOAUTH2")
        assert (challenge.code, challenge.message) == (334, "")
        blob = xoauth2.encode(MAILBOX, app_only_token(kit.key))
        reply = await smtp.execute_command(blob.encode("ascii"))
    assert (reply.code, reply.message) == (235, "2.7.0 Authentication successful")


async def test_two_step_form_with_bad_token_gets_535(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """The two-step form refuses a bad token with the same 535 5.7.3."""
    async with client(kit, exchange) as smtp:
        await smtp.ehlo()
        await smtp.execute_command(b"AUTH", b"XOAUTH2")
        blob = xoauth2.encode(MAILBOX, app_only_token(kit.key, lifetime=-10))
        reply = await smtp.execute_command(blob.encode("ascii"))
    assert (reply.code, reply.message) == (535, REFUSED)


async def test_eight_kilobyte_token_is_accepted(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A token of over 8 KB (an AUTH line of about 11.5 KB) is read and accepted."""
    token = app_only_token(kit.key, padding="x" * 6000)
    assert 8 * 1024 < len(token) < 9 * 1024
    async with client(kit, exchange, token=token) as smtp:
        await smtp.send_message(message())
    assert len(exchange.delivered()) == 1


async def test_malformed_xoauth2_response_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A base64 blob that is not user=...^Aauth=Bearer ...^A^A gets 535 5.7.3."""
    async with client(kit, exchange) as smtp:
        await smtp.ehlo()
        blob = base64.b64encode(b"user=" + MAILBOX.encode() + b"\x01Bearer nothing\x01\x01")
        reply = await smtp.execute_command(b"AUTH", b"XOAUTH2", blob)
    assert (reply.code, reply.message) == (535, REFUSED)


async def test_auth_is_not_offered_before_starttls(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """Before STARTTLS the EHLO reply offers STARTTLS and no AUTH; after it, only XOAUTH2."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=exchange.port, start_tls=False, timeout=10)
    async with smtp:
        await smtp.ehlo()
        before = dict(smtp.esmtp_extensions)
        await smtp.starttls(tls_context=kit.certs.client_context())
        await smtp.ehlo()
        after = dict(smtp.esmtp_extensions)
    assert "starttls" in before
    assert "auth" not in before
    assert after["auth"] == "XOAUTH2"


async def test_client_without_starttls_cannot_log_in(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A client that skips STARTTLS finds no XOAUTH2 to use."""

    async def token() -> str:
        return app_only_token(kit.key)

    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=exchange.port,
        start_tls=False,
        username=MAILBOX,
        oauth_token_generator=token,
        timeout=10,
    )
    with pytest.raises(aiosmtplib.SMTPException, match="does not support XOAUTH2"):
        await smtp.connect()
    smtp.close()


async def test_second_auth_on_a_session_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A session that already logged in cannot AUTH again (503)."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        reply = await smtp.execute_command(
            b"AUTH", b"XOAUTH2", xoauth2.encode(MAILBOX, app_only_token(kit.key)).encode("ascii")
        )
    assert reply.code == 503
    assert APP_ID not in reply.message


async def test_two_step_form_can_be_aborted(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """Answering the 334 with '*' cancels the AUTH (501) and counts no attempt."""
    async with client(kit, exchange) as smtp:
        await smtp.ehlo()
        await smtp.execute_command(b"AUTH", b"XOAUTH2")
        reply = await smtp.execute_command(b"*")
    assert reply.code == 501
    assert exchange.auth_attempts == 0
