"""Fault injection on the fake Exchange Online: the next N replies to a command, optionally a hang-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import pytest

from smtp_oauth.sandbox.exchange.server import FakeExchange
from tests.sandbox.exchange_helpers import (
    MAILBOX,
    RECIPIENT,
    ExchangeKit,
    app_only_token,
    client,
    message,
)

TENANT_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
    "Visit https://aka.ms/smtp_auth_disabled for more information."
)
THREAD_LIMIT = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
QUOTA = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"
SHUTTING_DOWN = "421 4.3.2 Service not available, closing transmission channel"


async def test_injected_auth_reply_is_sent_once(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An injected 535 5.7.139 answers the next AUTH; the AUTH after it is checked normally."""
    exchange.inject("AUTH", TENANT_DISABLED)
    token = app_only_token(kit.key)
    smtp = client(kit, exchange, token=token)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await smtp.connect()
    smtp.close()
    assert f"{info.value.code} {info.value.message}" == TENANT_DISABLED
    async with client(kit, exchange, token=token) as smtp:
        assert smtp.is_connected
    assert (exchange.auth_attempts, exchange.auth_failures) == (2, 1)


async def test_injected_reply_repeats_times_times(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """times=2 answers the next two AUTH commands, then no more."""
    exchange.inject("AUTH", TENANT_DISABLED, times=2)
    for _ in range(2):
        smtp = client(kit, exchange, token=app_only_token(kit.key))
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.connect()
        smtp.close()
    assert exchange.pending_injections("AUTH") == 0
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        assert smtp.is_connected


async def test_injected_mail_reply_refuses_the_sender(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An injected 432 4.3.2 answers MAIL FROM; the retried message then goes through."""
    exchange.inject("MAIL", THREAD_LIMIT)
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.send_message(message())
        await smtp.send_message(message())
    assert f"{info.value.code} {info.value.message}" == THREAD_LIMIT
    assert len(exchange.delivered()) == 1


async def test_injected_rcpt_reply_refuses_the_recipient(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An injected reply to RCPT refuses that recipient only."""
    exchange.inject(
        "RCPT", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    )
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        refused, _ = await smtp.send_message(message(), recipients=["gone@example.test", RECIPIENT])
    assert list(refused) == ["gone@example.test"]
    assert refused["gone@example.test"].code == 550
    assert exchange.delivered()[0].rcpt_tos == [RECIPIENT]


async def test_injected_data_reply_refuses_the_message(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An injected 554 5.2.0 quota reply answers the end of DATA and nothing is stored."""
    exchange.inject("DATA", QUOTA)
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await smtp.send_message(message())
    assert f"{info.value.code} {info.value.message}" == QUOTA
    assert exchange.delivered() == []
    assert list(exchange.store_dir.iterdir()) == []


async def test_injected_421_with_disconnect_hangs_up(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """disconnect=True closes the connection right after the injected reply."""
    exchange.inject("MAIL", SHUTTING_DOWN, disconnect=True)
    smtp = client(kit, exchange, token=app_only_token(kit.key))
    await smtp.connect()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await smtp.send_message(message())
    assert info.value.code == 421
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.noop()
    smtp.close()


async def test_server_hangs_up_even_if_the_client_stays(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """After an injected reply with disconnect=True, the server's side of the socket is closed."""
    exchange.inject("RCPT", "451 4.7.500 Server busy. Please try again later.", disconnect=True)
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        await smtp.ehlo()
        await smtp.mail(MAILBOX)
        # execute_command (not rcpt()) so that aiosmtplib does not close the socket itself.
        reply = await smtp.execute_command(f"RCPT TO:<{RECIPIENT}>".encode())
        assert reply.code == 451
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.execute_command(b"NOOP")


async def test_injected_greeting_refuses_the_connection(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """CONNECT replaces the 220 banner, e.g. with 421 and a hang-up."""
    exchange.inject("CONNECT", SHUTTING_DOWN, disconnect=True)
    smtp = client(kit, exchange, token=app_only_token(kit.key))
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
        await smtp.connect()
    smtp.close()
    assert info.value.code == 421


async def test_injected_ehlo_reply_refuses_the_greeting(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """An injected reply to EHLO is what the client sees instead of the extension list."""
    exchange.inject("EHLO", "554 5.7.1 Access denied")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=exchange.port, start_tls=False, timeout=10) as smtp:
        refused = await smtp.execute_command(b"EHLO", b"client.test")
        accepted = await smtp.execute_command(b"EHLO", b"client.test")
    assert (refused.code, refused.message) == (554, "5.7.1 Access denied")
    assert accepted.code == 250


async def test_inject_is_safe_from_another_thread(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """inject() may be called from a thread other than the server's loop."""
    await asyncio.to_thread(exchange.inject, "DATA", QUOTA, times=2)
    assert exchange.pending_injections("DATA") == 2
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPDataError):
                await smtp.send_message(message())
        await smtp.send_message(message())
    assert len(exchange.delivered()) == 1


async def test_clear_injections_drops_unused_replies(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """clear_injections() forgets replies not yet used."""
    exchange.inject("AUTH", TENANT_DISABLED, times=3)
    exchange.clear_injections()
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        assert smtp.is_connected


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("HELO", "421 4.3.2 Service not available"),
        ("AUTH", "235 2.7.0 Authentication successful"),
        ("MAIL", "43 too short a code"),
        ("DATA", "554 5.2.0 first line\r\n554 second line"),
    ],
)
def test_inject_rejects_what_it_cannot_send(
    kit: ExchangeKit, tmp_path: Path, command: str, reply: str
) -> None:
    """Unknown commands, success replies and malformed lines are refused with ValueError."""
    exchange = FakeExchange(
        signing_key=kit.key,
        tls_context=kit.certs.server_context(),
        store_dir=tmp_path,
        mailboxes=[MAILBOX],
        app_grants={},
        tenant_id="tenant",
    )
    with pytest.raises(ValueError, match="inject"):
        exchange.inject(command, reply)
