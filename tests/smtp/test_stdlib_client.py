"""Specification of smtp/stdlib_client.py: one message over smtplib, with the Mailer's dialogue and errors.

The failure scenarios run through both clients, the Mailer (aiosmtplib) and the stdlib client,
against the fake Exchange Online: the same exception class, exit code and hint for each.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

import pytest

from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    MessageError,
    PermanentDeliveryError,
    SmtpOAuthError,
    TemporaryDeliveryError,
)
from smtp_oauth.mail.envelope import build_envelope
from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.settings.models import Settings
from smtp_oauth.smtp.mailer import Mailer
from smtp_oauth.smtp.stdlib_client import Delivered, Submission, send_one
from smtp_oauth.tls import add_ca_file
from tests.smtp.sender_fakes import MAILBOX, SigningTokenProvider, make_settings

pytest_plugins = ["tests.smtp.sender_fixtures"]

Client = Callable[[Settings, SigningTokenProvider, EmailMessage, str], Awaitable[object]]


def note(to: str = "alice@example.test") -> EmailMessage:
    message = EmailMessage()
    message["From"] = MAILBOX
    message["To"] = to
    message["Subject"] = "stdlib client"
    message.set_content("Hello over smtplib.\n")
    return message


def submission_of(settings: Settings) -> Submission:
    """The Submission send-mail's snapshot gives for these settings."""
    smtp = settings.smtp
    context = {**settings.hint_context(), "mailbox": smtp.username}
    return Submission(
        settings.smtp_host, smtp.port, smtp.security == "tls", smtp.timeout, smtp.username, context
    )


def tls_of(settings: Settings) -> ssl.SSLContext:
    ca_file = settings.smtp.ca_file
    return add_ca_file(ssl.create_default_context(), str(ca_file) if ca_file else None, key="smtp.ca_file")


async def with_stdlib(
    settings: Settings, tokens: SigningTokenProvider, message: EmailMessage, sender: str
) -> Delivered:
    envelope, _ = build_envelope(message, sender=sender, recipients=None, default_sender=MAILBOX)
    token = await tokens.access_token()
    # Blocking: on a thread, so that the fake Exchange on this event loop can answer.
    return await asyncio.to_thread(
        send_one, submission_of(settings), envelope, token=token, tls_context=tls_of(settings)
    )


async def with_mailer(
    settings: Settings, tokens: SigningTokenProvider, message: EmailMessage, sender: str
) -> object:
    async with Mailer(settings, token_provider=tokens) as mailer:
        return await mailer.send(message, sender=sender)


@dataclass(frozen=True)
class Outcome:
    """What a person and the caller see of a failure: the class, the exit code, the hint."""

    kind: type[SmtpOAuthError]
    exit_code: int
    hint: str | None


async def failure_of(
    client: Client, settings: Settings, tokens: SigningTokenProvider, sender: str
) -> Outcome:
    with pytest.raises(DeliveryError) as caught:
        await client(settings, tokens, note(), sender)
    error = caught.value
    return Outcome(type(error), exit_code_of(error), error.explain())


Scenario = Callable[[FakeExchange, Settings, int], Settings]


def refuse_auth_disabled(exchange: FakeExchange, settings: Settings, _port: int) -> Settings:
    # Twice: the Mailer retries a refused login once with a fresh token.
    exchange.inject(
        "AUTH", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled", times=2
    )
    return settings


def refuse_unauthenticated(exchange: FakeExchange, settings: Settings, _port: int) -> Settings:
    exchange.inject("MAIL", "530 5.7.57 Client not authenticated to send mail")
    return settings


def refuse_thread_limit(exchange: FakeExchange, settings: Settings, _port: int) -> Settings:
    exchange.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")
    return settings


def trust_nothing_private(exchange: FakeExchange, settings: Settings, _port: int) -> Settings:
    return make_settings(exchange.port, None)  # the sandbox's CA is not among the system's


def connect_nowhere(exchange: FakeExchange, settings: Settings, _port: int) -> Settings:
    with socket.socket() as probe:  # a port nothing listens on (bound, then released)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    return make_settings(free, settings.smtp.ca_file)


def wait_forever(exchange: FakeExchange, settings: Settings, silent_port: int) -> Settings:
    return make_settings(silent_port, settings.smtp.ca_file, timeout=0.5)


SCENARIOS: dict[str, tuple[Scenario, str, type[SmtpOAuthError], ExitCode]] = {
    "535-5.7.139": (refuse_auth_disabled, MAILBOX, AuthenticationError, ExitCode.NOPERM),
    "530-5.7.57": (refuse_unauthenticated, MAILBOX, PermanentDeliveryError, ExitCode.UNAVAILABLE),
    "432-4.3.2": (refuse_thread_limit, MAILBOX, TemporaryDeliveryError, ExitCode.TEMPFAIL),
    "550-5.7.60": (lambda e, s, p: s, "stranger@sandbox.test", PermanentDeliveryError, ExitCode.UNAVAILABLE),
    "tls-untrusted": (trust_nothing_private, MAILBOX, TemporaryDeliveryError, ExitCode.TEMPFAIL),
    "connection-refused": (connect_nowhere, MAILBOX, DeliveryConnectionError, ExitCode.TEMPFAIL),
    "timeout": (wait_forever, MAILBOX, DeliveryTimeoutError, ExitCode.TEMPFAIL),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_both_clients_fail_alike(
    name: str,
    exchange: FakeExchange,
    settings: Settings,
    signing_key: SigningKey,
    silent_port: int,
) -> None:
    """Each failure: the same error class, exit code and hint through the Mailer and the stdlib client."""
    scenario, sender, kind, exit_code = SCENARIOS[name]
    outcomes = []
    for client in (with_mailer, with_stdlib):
        chosen = scenario(exchange, settings, silent_port)
        tokens = SigningTokenProvider(signing_key)
        outcomes.append(await failure_of(client, chosen, tokens, sender))
    mailer, stdlib = outcomes
    assert mailer == stdlib
    assert (stdlib.kind, stdlib.exit_code) == (kind, int(exit_code))


async def test_hints_are_those_of_the_reply(
    exchange: FakeExchange, settings: Settings, tokens: SigningTokenProvider
) -> None:
    """A refusal with a known meaning carries its hint (here: SMTP AUTH disabled, 5.7.139)."""
    refuse_auth_disabled(exchange, settings, 0)
    outcome = await failure_of(with_stdlib, settings, tokens, MAILBOX)
    assert outcome.hint is not None
    assert "5.7.139" in outcome.hint


async def test_sends_one_message_over_starttls(
    exchange: FakeExchange, settings: Settings, tokens: SigningTokenProvider
) -> None:
    """The message arrives, sent by the authenticated mailbox, with the server's final reply returned."""
    delivered = await with_stdlib(settings, tokens, note(), MAILBOX)
    [stored] = exchange.delivered()
    assert stored.auth_user == MAILBOX
    assert stored.rcpt_tos == ["alice@example.test"]
    assert delivered.reply.startswith("250")
    assert delivered.refused == {}


async def test_wire_form_matches_the_mailer(
    exchange: FakeExchange, settings: Settings, tokens: SigningTokenProvider
) -> None:
    """Lone LFs, a leading dot and a missing final line end arrive exactly as the Mailer sends them."""
    raw = b"From: sender@sandbox.test\nTo: alice@example.test\nSubject: dots\n\n.leading dot\nlast line"
    envelope, _ = build_envelope(
        raw, sender=MAILBOX, recipients=["alice@example.test"], default_sender=MAILBOX
    )
    token = await tokens.access_token()
    await asyncio.to_thread(
        send_one, submission_of(settings), envelope, token=token, tls_context=tls_of(settings)
    )
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(raw, recipients=["alice@example.test"])
    stdlib, mailer_sent = exchange.delivered()
    assert stdlib.data == mailer_sent.data


async def test_refused_recipients_are_reported_not_fatal(
    exchange: FakeExchange, settings: Settings, tokens: SigningTokenProvider
) -> None:
    """One recipient refused: the message goes to the others and the refusal is in the result."""
    exchange.inject("RCPT", "550 5.1.10 RESOLVER.ADR.RecipientNotFound")
    message = note()
    message["Cc"] = "bob@example.test"
    delivered = await with_stdlib(settings, tokens, message, MAILBOX)
    assert list(delivered.refused) == ["alice@example.test"]
    assert delivered.refused["alice@example.test"][0] == 550
    assert [stored.rcpt_tos for stored in exchange.delivered()] == [["bob@example.test"]]


async def test_every_recipient_refused_sends_nothing(
    exchange: FakeExchange, settings: Settings, tokens: SigningTokenProvider
) -> None:
    """All recipients refused with syntax errors: a MessageError, and no DATA."""
    exchange.inject("RCPT", "501 5.1.3 Invalid address")
    with pytest.raises(MessageError, match="refused all recipients"):
        await with_stdlib(settings, tokens, note(), MAILBOX)
    assert exchange.delivered() == []


def test_submission_names_the_server() -> None:
    """A Submission names the server as host:port, as the Mailer's errors do."""
    assert Submission("smtp.example", 587, False, 5.0, MAILBOX, {}).server == "smtp.example:587"
