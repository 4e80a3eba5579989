"""The Mailer against the fake Exchange Online: sessions, TLS, AUTH retries, error mapping, envelopes."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import pytest

from smtp_oauth.cli.exit_codes import exit_code_of
from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryConnectionError,
    DeliveryTimeoutError,
    MessageError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from smtp_oauth.sandbox.certs import SandboxCertificates
from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.settings.models import Settings
from smtp_oauth.smtp.mailer import Mailer
from tests.smtp.sender_fakes import MAILBOX, OTHER_MAILBOX, SigningTokenProvider, make_settings

pytest_plugins = ["tests.smtp.sender_fixtures"]  # fixtures: certs, exchange, settings, tokens, ...


def message(to: str = "alice@example.test", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = "Report"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello from the Mailer.\n")
    return msg


async def test_send_delivers_as_the_mailbox(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """One message goes out authenticated as smtp.username, with MAIL FROM the mailbox."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        result = await mailer.send(message())
    [delivered] = exchange.delivered()
    assert (delivered.auth_user, delivered.mail_from, delivered.rcpt_tos) == (
        MAILBOX,
        MAILBOX,
        ["alice@example.test"],
    )
    assert result.accepted == ["alice@example.test"]
    assert result.refused == {}
    assert result.reply.startswith("250 2.6.0")
    assert result.message_id == delivered.message["Message-ID"]


async def test_many_messages_share_one_session(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Several sends reuse one authenticated session: one token, one AUTH."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        for index in range(3):
            await mailer.send(message(f"user{index}@example.test"))
    assert len(exchange.delivered()) == 3
    assert exchange.auth_attempts == 1
    assert tokens.calls == [False]


async def test_concurrent_sends_are_serialised(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Concurrent send() calls on one Mailer take turns on the one session."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        await asyncio.gather(*(mailer.send(message(f"u{index}@example.test")) for index in range(5)))
    assert len(exchange.delivered()) == 5
    assert exchange.auth_attempts == 1


async def test_missing_starttls_sends_nothing_in_clear(
    clean_env: None, certs: SandboxCertificates, tokens: SigningTokenProvider
) -> None:
    """A server that does not offer STARTTLS gets no AUTH and no message."""
    heard: list[str] = []

    async def plain_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 plain ESMTP\r\n")
        while line := await reader.readline():
            heard.append(line.decode().strip())
            verb = line[:4].upper()
            writer.write(b"250-plain\r\n250 AUTH XOAUTH2\r\n" if verb == b"EHLO" else b"221 bye\r\n")
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()

    server = await asyncio.start_server(plain_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        mailer = Mailer(make_settings(port, certs.ca_file), token_provider=tokens)
        with pytest.raises(TemporaryDeliveryError, match="does not offer STARTTLS") as caught:
            await mailer.send(message())
        await mailer.close()
    assert [line.split()[0] for line in heard] == ["EHLO"]
    assert tokens.calls == []
    assert "clear text" in (caught.value.explain() or "")


async def test_untrusted_certificate_is_a_tls_error(
    clean_env: None, exchange: FakeExchange, tokens: SigningTokenProvider
) -> None:
    """Without smtp.ca_file the sandbox certificate is not trusted: an error naming TLS, nothing sent."""
    async with Mailer(make_settings(exchange.port, None), token_provider=tokens) as mailer:
        with pytest.raises(TemporaryDeliveryError, match="TLS") as caught:
            await mailer.send(message())
    assert "smtp.ca_file" in (caught.value.explain() or "")
    assert exchange.auth_attempts == 0
    assert tokens.calls == []


async def test_refused_token_is_retried_once_with_a_fresh_one(
    settings: Settings, signing_key: SigningKey, exchange: FakeExchange
) -> None:
    """A 535 on AUTH leads to one new connection with force_refresh=True, which succeeds."""
    tokens = SigningTokenProvider(signing_key, refused=1)
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(message())
    assert tokens.calls == [False, True]
    assert exchange.auth_attempts == 2
    assert len(exchange.delivered()) == 1


async def test_token_refused_twice_raises_authentication_error(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Two 535 5.7.3 replies: AuthenticationError whose hint names 5.7.3; no third attempt."""
    exchange.inject("AUTH", "535 5.7.3 Authentication unsuccessful [SN2PR00CA0018]", times=2)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(AuthenticationError) as caught:
            await mailer.send(message())
    assert (caught.value.code, caught.value.enhanced_status) == (535, "5.7.3")
    assert "5.7.3" in (caught.value.explain() or "")
    assert f"127.0.0.1:{exchange.port} refused the XOAUTH2 login for {MAILBOX}" in str(caught.value)
    assert tokens.calls == [False, True]
    assert exchange.delivered() == []


async def test_smtp_auth_disabled_hint_names_set_casmailbox(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """535 5.7.139 (SMTP AUTH disabled) explains the Set-CASMailbox fix for this mailbox."""
    reply = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
    exchange.inject("AUTH", reply, times=2)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(AuthenticationError) as caught:
            await mailer.send(message())
    hint = caught.value.explain() or ""
    assert "Set-CASMailbox" in hint
    assert MAILBOX in hint


async def test_thread_limit_at_mail_is_temporary(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """432 4.3.2 at MAIL FROM raises TemporaryDeliveryError carrying the reply."""
    exchange.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await mailer.send(message())
    assert (caught.value.code, caught.value.enhanced_status) == (432, "4.3.2")
    assert caught.value.temporary
    assert f"<{MAILBOX}>" in str(caught.value)


async def test_session_stays_usable_after_a_refusal(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """After a refused MAIL FROM the envelope is reset and the next message goes over the same session."""
    exchange.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(TemporaryDeliveryError):
            await mailer.send(message())
        await mailer.send(message())
    assert len(exchange.delivered()) == 1
    assert exchange.auth_attempts == 1


async def test_rejection_at_data_is_permanent(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """A 554 after the content raises PermanentDeliveryError naming the server."""
    reply = "554 5.6.0 Corrupt message content"
    exchange.inject("DATA", reply)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(PermanentDeliveryError) as caught:
            await mailer.send(message())
    assert str(caught.value) == f"127.0.0.1:{exchange.port} refused the message: {reply}"


@pytest.mark.parametrize(
    ("reply", "hint_names"),
    [
        ("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", "10,000 recipients"),
        (
            "554 5.2.2 mailbox full; "
            "STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoff",
            "mailbox is full",
        ),
    ],
)
async def test_exchange_quota_replies_are_temporary(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, reply: str, hint_names: str
) -> None:
    """Exchange's 5xx quota replies clear by themselves: TemporaryDeliveryError (retry), with the hint."""
    exchange.inject("DATA", reply)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await mailer.send(message())
    assert caught.value.code == 554
    assert hint_names in (caught.value.explain() or "")


async def test_dropped_idle_session_reconnects_and_resends(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """421 and a hang-up at MAIL on a reused session: a new session sends the message once."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(message("first@example.test"))
        exchange.inject("MAIL", "421 4.4.2 Connection dropped due to idle timeout", disconnect=True)
        result = await mailer.send(message("second@example.test"))
    assert [d.rcpt_tos for d in exchange.delivered()] == [["first@example.test"], ["second@example.test"]]
    assert result.accepted == ["second@example.test"]
    assert exchange.auth_attempts == 2


async def test_session_closed_by_server_while_idle_is_reopened(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """A session the server closed between messages is replaced before the next one."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(message("first@example.test"))
        await exchange.stop()  # drops every connection; the same port is bound again
        await exchange.start()
        await asyncio.sleep(0.05)  # let the client notice the hang-up
        await mailer.send(message("second@example.test"))
    assert len(exchange.delivered()) == 2
    assert exchange.auth_attempts == 2


async def test_failure_after_data_is_not_resent(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """A hang-up after the content was sent is an error, not a resend: that could deliver twice."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(message())
        exchange.inject("DATA", "421 4.4.2 Connection dropped", disconnect=True)
        with pytest.raises(TemporaryDeliveryError):
            await mailer.send(message())
    assert len(exchange.delivered()) == 1
    assert exchange.auth_attempts == 1


async def test_some_recipients_refused_is_a_result(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """One refused recipient lands in SendResult.refused; the others still get the message."""
    exchange.inject("RCPT", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found")
    async with Mailer(settings, token_provider=tokens) as mailer:
        result = await mailer.send(message("gone@example.test, bob@example.test"))
    assert result.accepted == ["bob@example.test"]
    assert result.refused == {
        "gone@example.test": (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found")
    }
    [delivered] = exchange.delivered()
    assert delivered.rcpt_tos == ["bob@example.test"]


async def test_all_recipients_refused_is_an_error(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Every recipient refused with 5xx: PermanentDeliveryError listing them in .recipients."""
    exchange.inject("RCPT", "550 5.1.10 Recipient not found", times=2)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(PermanentDeliveryError) as caught:
            await mailer.send(message("a@example.test, b@example.test"))
    assert set(caught.value.recipients) == {"a@example.test", "b@example.test"}
    assert exchange.delivered() == []


async def test_bcc_is_a_recipient_but_never_transmitted(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Bcc recipients get the message, and no Bcc header reaches the server."""
    original = message(Cc="carol@example.test", Bcc="hidden@example.test")
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(original)
    [delivered] = exchange.delivered()
    assert delivered.rcpt_tos == ["alice@example.test", "carol@example.test", "hidden@example.test"]
    assert b"hidden@example.test" not in delivered.data
    assert b"Bcc" not in delivered.data
    assert original["Bcc"] == "hidden@example.test"  # the caller's message is left alone
    assert original["Message-ID"] is None


async def test_raw_message_is_sent_as_given(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """Bytes go out unchanged (8-bit body included) to the recipients given; Message-ID is reported."""
    raw = (
        f"From: {MAILBOX}\r\nTo: x@example.test\r\nSubject: raw\r\nMessage-ID: <raw-1@sandbox.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n"
    ).encode()
    async with Mailer(settings, token_provider=tokens) as mailer:
        result = await mailer.send(raw, recipients=["y@example.test"])
    [delivered] = exchange.delivered()
    assert delivered.data == raw
    assert delivered.rcpt_tos == ["y@example.test"]
    assert result.message_id == "<raw-1@sandbox.test>"


async def test_invalid_address_fails_before_connecting(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """An address that is not one raises MessageError without opening a session."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(MessageError, match="not an address"):
            await mailer.send(message(), recipients=["not an address"])
    assert tokens.calls == []
    assert exchange.auth_attempts == 0


async def test_no_recipients_is_a_message_error(settings: Settings, tokens: SigningTokenProvider) -> None:
    """A message with no To/Cc/Bcc and no recipients= raises MessageError."""
    bare = EmailMessage()
    bare.set_content("nobody")
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(MessageError, match="no recipients"):
            await mailer.send(bare)


async def test_other_mailbox_sends_as_itself(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """mailbox= authenticates as that mailbox and uses it as the default sender (the relay's users)."""
    async with Mailer(settings, token_provider=tokens, mailbox=OTHER_MAILBOX) as mailer:
        result = await mailer.send(message())
    [delivered] = exchange.delivered()
    assert (delivered.auth_user, delivered.mail_from, result.sender) == (OTHER_MAILBOX,) * 3
    assert delivered.message["From"] == OTHER_MAILBOX


async def test_unreachable_server_is_temporary(clean_env: None, certs: SandboxCertificates) -> None:
    """Nothing listening on the port: a temporary error, also a ConnectionError, naming host and port."""
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    blocker.close()
    await blocker.wait_closed()
    async with Mailer(make_settings(port, certs.ca_file), token_provider=None) as mailer:
        with pytest.raises(TemporaryDeliveryError, match=f"cannot connect to 127.0.0.1:{port}") as caught:
            await mailer.verify_login()
    assert exit_code_of(caught.value) == 75
    assert isinstance(caught.value, DeliveryConnectionError)
    assert isinstance(caught.value, ConnectionError)


async def test_send_timeout_bounds_the_whole_send(
    clean_env: None, certs: SandboxCertificates, silent_port: int, tokens: SigningTokenProvider
) -> None:
    """send(timeout=) gives up on a server that never answers, with a temporary error."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Mailer(make_settings(silent_port, certs.ca_file), token_provider=tokens) as mailer:
        with pytest.raises(DeliveryTimeoutError, match=r"longer than 0\.3s") as caught:
            await mailer.send(message(), timeout=0.3)
    assert loop.time() - started < 3
    assert isinstance(caught.value, TimeoutError)


async def test_a_server_timeout_inside_a_longer_send_timeout_keeps_its_own_words(
    clean_env: None, certs: SandboxCertificates, silent_port: int, tokens: SigningTokenProvider
) -> None:
    """smtp.timeout running out first says which step went unanswered, not that send(timeout=) did."""
    settings = make_settings(silent_port, certs.ca_file, timeout=0.3)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(DeliveryTimeoutError) as caught:
            await mailer.send(message(), timeout=30)
    assert str(caught.value) == f"127.0.0.1:{silent_port} did not answer in time (connect)"


async def test_verify_login_returns_the_auth_reply(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """verify_login() connects, secures and authenticates, and returns the 235 reply."""
    async with Mailer(settings, token_provider=tokens) as mailer:
        reply = await mailer.verify_login()
    assert reply.startswith("235")
    assert exchange.delivered() == []


async def test_implicit_tls_for_security_tls(
    clean_env: None, certs: SandboxCertificates, tokens: SigningTokenProvider
) -> None:
    """security = "tls" speaks TLS from the first byte (port 465 style) and never sends STARTTLS."""
    heard: list[str] = []
    replies = {
        b"EHLO": b"250-smtps.test\r\n250 AUTH XOAUTH2\r\n",
        b"AUTH": b"235 2.7.0 Authentication successful\r\n",
        b"MAIL": b"250 2.1.0 Sender OK\r\n",
        b"RCPT": b"250 2.1.5 Recipient OK\r\n",
        b"DATA": b"354 Start mail input\r\n",
        b"QUIT": b"221 2.0.0 Bye\r\n",
    }

    async def smtps(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 smtps.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.strip() else b""
            heard.append(verb.decode())
            if verb == b"DATA":
                writer.write(replies[verb])
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"250 2.6.0 <x@smtps.test> Queued mail for delivery\r\n")
            else:
                writer.write(replies.get(verb, b"502 5.5.2 Not implemented\r\n"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(smtps, "127.0.0.1", 0, ssl=certs.server_context())
    port = server.sockets[0].getsockname()[1]
    async with server:
        settings = make_settings(port, certs.ca_file, security="tls")
        async with Mailer(settings, token_provider=tokens) as mailer:
            result = await mailer.send(message())
    assert result.reply == "250 2.6.0 <x@smtps.test> Queued mail for delivery"
    assert heard == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]


async def test_from_address_is_the_default_sender(
    clean_env: None, exchange: FakeExchange, certs: SandboxCertificates, tokens: SigningTokenProvider
) -> None:
    """smtp.from_address, when set, is the envelope sender and the From of a message without one."""
    settings = make_settings(exchange.port, certs.ca_file, from_address=OTHER_MAILBOX)
    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(PermanentDeliveryError) as caught:
            await mailer.send(message())  # the fake Exchange, like the real one, wants SendAs for that
    assert f"refused the sender <{OTHER_MAILBOX}>: 550 5.7.60" in str(caught.value)
    assert "SendAs" in (caught.value.explain() or "")
