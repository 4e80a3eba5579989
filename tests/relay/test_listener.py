"""The relay listener with a legacy client (stdlib smtplib, in a thread): AUTH and sender policy.

Also the harness the other ``test_listener_*`` modules import: a recording ``store``, settings with
two local users, and a running listener on 127.0.0.1 with a random port.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.listener.server import ListenerTuning, Message, RelayListener
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.settings.models import RelaySettings

T = TypeVar("T")

DEFAULT_MAILBOX = "relay@contoso.com"
FERN_PASSWORD = "fern-correct-horse-battery"
SCANNER_PASSWORD = "scanner-staple-41"
# Cheaper scrypt than the default (ln=14) so the suite stays fast; the format carries the cost.
FERN_HASH = hash_password(FERN_PASSWORD, log2_n=10)
SCANNER_HASH = hash_password(SCANNER_PASSWORD, log2_n=10)
FAST = ListenerTuning(
    auth_failure_delay=0.01, auth_failure_delay_max=0.05, shutdown_grace=2.0, greet_pause=0.0
)
MESSAGE = (
    b"From: Fern <fern@contoso.com>\r\n"
    b"To: alice@example.com\r\n"
    b"Subject: scan\r\n"
    b"Message-ID: <scan-1@fern.contoso.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


class RecordingStore:
    """A ``store`` that keeps what it is given; ``fail`` makes it raise like a broken disk would."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.fail = False
        self.delay = 0.0
        self.started = asyncio.Event()

    async def __call__(self, message: Message) -> str:
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError(28, "No space left on device: '/var/lib/smtp-oauth/spool/secret.db'")
        self.messages.append(message)
        return f"Q{len(self.messages):04d}"


def relay_settings(**overrides: Any) -> RelaySettings:
    """Loopback, random port, users fern (default sender rule) and scanner (@scan.contoso.com)."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "max_message_size": 100_000,
        "users": [
            {"name": "fern", "password_hash": FERN_HASH, "mailbox": "fern@contoso.com"},
            {"name": "scanner", "password_hash": SCANNER_HASH, "allowed_senders": ["@scan.contoso.com"]},
        ],
    }
    values.update(overrides)
    return RelaySettings(**values)


@asynccontextmanager
async def running_listener(
    relay: RelaySettings | None = None, *, store: RecordingStore | None = None, tuning: ListenerTuning = FAST
) -> AsyncIterator[tuple[RelayListener, RecordingStore]]:
    """A started listener and its store; stopped on exit."""
    recorder = store or RecordingStore()
    listener = RelayListener(
        relay or relay_settings(), default_mailbox=DEFAULT_MAILBOX, store=recorder, tuning=tuning
    )
    await listener.start()
    try:
        yield listener, recorder
    finally:
        await listener.stop()


def connect(listener: RelayListener) -> smtplib.SMTP:
    """A legacy client connected to the listener, after EHLO."""
    host, port = listener.addresses[0]
    client = smtplib.SMTP(host, port, timeout=10)
    client.ehlo("legacy.example")
    return client


async def in_thread(function: Callable[[], T]) -> T:
    """Run blocking smtplib code off the event loop that serves the listener."""
    return await asyncio.to_thread(function)


def send(
    listener: RelayListener,
    *,
    login: tuple[str, str] | None = ("fern", FERN_PASSWORD),
    sender: str = "fern@contoso.com",
    recipients: tuple[str, ...] = ("alice@example.com",),
    data: bytes = MESSAGE,
) -> dict[str, tuple[int, bytes]]:
    """One message over one connection, as a cron job's sendmail would send it."""
    with connect(listener) as client:
        if login is not None:
            client.login(*login)
        return client.sendmail(sender, list(recipients), data)


def read_reply(sock: socket.socket) -> bytes:
    """One complete (possibly multi-line) reply."""
    reply = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return reply
        reply += chunk
        last = reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if reply.endswith(b"\r\n") and last[3:4] == b" ":
            return reply


def raw_conversation(address: tuple[str, int], commands: list[bytes]) -> bytes:
    """Send each chunk, wait for its reply, and return everything the server said."""
    with socket.create_connection(address, timeout=10) as sock:
        transcript = read_reply(sock)
        for chunk in commands:
            sock.sendall(chunk)
            transcript += read_reply(sock)
    return transcript


async def test_correct_password_stores_the_message() -> None:
    """AUTH PLAIN with the right password: store() gets the envelope, user, mailbox and bytes."""
    async with running_listener() as (listener, store):
        refused = await in_thread(lambda: send(listener))
    assert refused == {}
    assert store.messages == [
        Message(
            local_user="fern",
            mailbox="fern@contoso.com",
            mail_from="fern@contoso.com",
            rcpt_tos=["alice@example.com"],
            data=MESSAGE,
            peer="127.0.0.1",
            message_id="<scan-1@fern.contoso.com>",
        )
    ]


async def test_reply_to_data_names_the_queue_id() -> None:
    """The 250 after DATA is 'Ok: queued as <id>' with the id store() returned."""
    async with running_listener() as (listener, _):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                client.mail("fern@contoso.com")
                client.rcpt("alice@example.com")
                return client.data(MESSAGE)

        reply = await in_thread(conversation)
    assert reply == (250, b"2.0.0 Ok: queued as Q0001")


async def test_auth_login_mechanism_works() -> None:
    """AUTH LOGIN (Username:/Password: challenges) authenticates like PLAIN."""
    async with running_listener() as (listener, _):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.user, client.password = "fern", FERN_PASSWORD
                return client.auth("LOGIN", client.auth_login, initial_response_ok=False)

        reply = await in_thread(conversation)
    assert reply[0] == 235


async def test_auth_mechanism_names_are_case_insensitive() -> None:
    """'AUTH plain <b64>' from an old client works like 'AUTH PLAIN' (RFC 4422 section 3.1)."""
    async with running_listener() as (listener, _):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.ehlo()
                blob = base64.b64encode(f"\0fern\0{FERN_PASSWORD}".encode()).decode()
                return client.docmd("AUTH", f"plain {blob}")

        reply = await in_thread(conversation)
    assert reply[0] == 235


async def test_wrong_password_is_refused_and_logged_with_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password gets 535 and a warning naming user and peer, never the password."""
    caplog.set_level(logging.INFO, logger="smtp_oauth.relay")
    async with running_listener() as (listener, store):
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            await in_thread(lambda: send(listener, login=("fern", "guess-Tr0ub4dor")))
    assert caught.value.smtp_code == 535
    # smtplib tries PLAIN, then LOGIN: one warning per attempt.
    failures = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "auth_failed"]
    assert failures
    assert all("'fern' from 127.0.0.1" in message for message in failures)
    assert "guess-Tr0ub4dor" not in caplog.text
    assert store.messages == []


async def test_unknown_user_is_refused_like_a_wrong_password() -> None:
    """An unknown login name gets the same 535 as a wrong password (no user probing)."""
    async with running_listener() as (listener, _):
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            await in_thread(lambda: send(listener, login=("mallory", FERN_PASSWORD)))
    assert caught.value.smtp_code == 535
    assert caught.value.smtp_error == b"5.7.8 Authentication credentials invalid"


async def test_failed_logins_are_slowed_down() -> None:
    """The 535 comes only after the failed-login delay."""
    tuning = ListenerTuning(auth_failure_delay=0.3, auth_failure_delay_max=0.3)
    async with running_listener(tuning=tuning) as (listener, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await in_thread(lambda: send(listener, login=("fern", "wrong")))
        elapsed = loop.time() - started
    assert elapsed >= 0.3


async def test_repeated_failures_in_one_session_hang_up() -> None:
    """After three failed logins in a session the relay answers 421 and closes the connection."""
    async with running_listener() as (listener, _):

        def conversation() -> list[int]:
            codes: list[int] = []
            with connect(listener) as client:
                for _ in range(3):
                    code, _text = client.docmd("AUTH", "PLAIN AGZlcm4Ad3Jvbmc=")  # \0fern\0wrong
                    codes.append(code)
                code, _text = client.getreply()
                codes.append(code)
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.noop()
            return codes

        codes = await in_thread(conversation)
    assert codes == [535, 535, 535, 421]


async def test_mail_without_auth_gets_530() -> None:
    """A client that skips AUTH is told '530 5.7.0 Authentication required' at MAIL FROM."""
    async with running_listener() as (listener, store):
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            await in_thread(lambda: send(listener, login=None))
    assert (caught.value.smtp_code, caught.value.smtp_error) == (530, b"5.7.0 Authentication required")
    assert store.messages == []


async def test_auth_is_offered_in_cleartext_to_a_loopback_peer() -> None:
    """On loopback without TLS, EHLO lists AUTH LOGIN PLAIN (the traffic never leaves the host)."""
    async with running_listener() as (listener, _):

        def features() -> dict[str, str]:
            with connect(listener) as client:
                return dict(client.esmtp_features)

        offered = await in_thread(features)
    assert offered["auth"].split() == ["LOGIN", "PLAIN"]
    assert "starttls" not in offered


async def test_disallowed_mail_from_gets_550() -> None:
    """MAIL FROM outside the user's allowed_senders: '550 5.7.1 Sender <x> not allowed for user <u>'."""
    async with running_listener() as (listener, store):
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            await in_thread(lambda: send(listener, sender="ceo@contoso.com"))
    assert caught.value.smtp_code == 550
    assert caught.value.smtp_error == b"5.7.1 Sender <ceo@contoso.com> not allowed for user <fern>"
    assert store.messages == []


async def test_from_header_of_someone_else_gets_550() -> None:
    """An allowed MAIL FROM with another person's From: header is refused at DATA, nothing stored."""
    spoofed = MESSAGE.replace(b"From: Fern <fern@contoso.com>", b"From: CEO <ceo@contoso.com>")
    async with running_listener() as (listener, store):
        with pytest.raises(smtplib.SMTPDataError) as caught:
            await in_thread(lambda: send(listener, data=spoofed))
    assert caught.value.smtp_code == 550
    assert caught.value.smtp_error == b"5.7.1 Sender <ceo@contoso.com> not allowed for user <fern>"
    assert store.messages == []


async def test_from_header_hidden_behind_a_lone_cr_gets_550() -> None:
    """'X: y<CR>From: ceo' is two header lines upstream (a lone CR is sent as CRLF): refused at DATA."""
    plain = base64.b64encode(b"\0fern\0" + FERN_PASSWORD.encode()).decode()
    lines = [
        b"EHLO legacy.example\r\n",
        f"AUTH PLAIN {plain}\r\n".encode(),
        b"MAIL FROM:<fern@contoso.com>\r\n",
        b"RCPT TO:<alice@example.com>\r\n",
        b"DATA\r\n",
        b"X-Legacy: y\rFrom: CEO <ceo@contoso.com>\r\nSubject: hi\r\n\r\nbody\r\n.\r\n",
        b"QUIT\r\n",
    ]
    async with running_listener() as (listener, store):
        transcript = await in_thread(lambda: raw_conversation(listener.addresses[0], lines))
    assert b"550 5.7.1 Sender <ceo@contoso.com> not allowed for user <fern>" in transcript
    assert store.messages == []


async def test_sender_rules_ignore_case() -> None:
    """Addresses match allowed_senders case-insensitively, in MAIL FROM and in From:."""
    shouting = MESSAGE.replace(b"fern@contoso.com", b"Fern@Contoso.COM")
    async with running_listener() as (listener, store):
        await in_thread(lambda: send(listener, sender="FERN@contoso.com", data=shouting))
    assert len(store.messages) == 1


async def test_domain_rule_allows_any_address_of_that_domain() -> None:
    """An '@domain' rule admits every address at exactly that domain."""
    message = MESSAGE.replace(b"Fern <fern@contoso.com>", b"floor3@scan.contoso.com")
    async with running_listener() as (listener, store):
        await in_thread(
            lambda: send(
                listener, login=("scanner", SCANNER_PASSWORD), sender="floor3@scan.contoso.com", data=message
            )
        )
    assert [m.mail_from for m in store.messages] == ["floor3@scan.contoso.com"]
    assert store.messages[0].mailbox == DEFAULT_MAILBOX  # no mailbox set: the default one


async def test_domain_rule_does_not_cover_other_domains() -> None:
    """An '@scan.contoso.com' rule refuses the parent domain contoso.com."""
    async with running_listener() as (listener, _):
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            await in_thread(
                lambda: send(listener, login=("scanner", SCANNER_PASSWORD), sender="x@contoso.com")
            )
    assert caught.value.smtp_code == 550


async def test_null_sender_is_refused_by_default() -> None:
    """MAIL FROM:<> (a bounce) is refused with 550 5.7.1 unless allowed_senders lists '<>'."""
    async with running_listener() as (listener, _):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                return client.docmd("MAIL", "FROM:<>")

        reply = await in_thread(conversation)
    assert reply == (550, b"5.7.1 Sender <> not allowed for user <fern>")


async def test_null_sender_is_accepted_when_allowed() -> None:
    """With '<>' in allowed_senders a bounce is accepted and stored with mail_from ''."""
    relay = relay_settings(
        users=[{"name": "fern", "password_hash": FERN_HASH, "allowed_senders": ["<>", "fern@contoso.com"]}]
    )
    async with running_listener(relay) as (listener, store):
        await in_thread(lambda: send(listener, sender="<>"))
    assert [m.mail_from for m in store.messages] == [""]


async def test_allow_networks_map_a_peer_to_a_user_without_auth() -> None:
    """A peer in relay.allow_networks sends as the mapped user without AUTH."""
    relay = relay_settings(allow_networks=[{"cidr": "127.0.0.1/32", "user": "fern"}])
    async with running_listener(relay) as (listener, store):
        await in_thread(lambda: send(listener, login=None))
    assert [(m.local_user, m.mailbox) for m in store.messages] == [("fern", "fern@contoso.com")]


async def test_allow_networks_users_keep_their_sender_rules() -> None:
    """A network-mapped client is still held to its user's allowed_senders."""
    relay = relay_settings(allow_networks=[{"cidr": "127.0.0.0/8", "user": "fern"}])
    async with running_listener(relay) as (listener, _):
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            await in_thread(lambda: send(listener, login=None, sender="ceo@contoso.com"))
    assert caught.value.smtp_code == 550


def test_non_loopback_listen_without_tls_warns_that_remote_logins_cannot_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A LAN listen address without a TLS certificate is logged: remote clients will get 538 to AUTH."""
    with caplog.at_level(logging.WARNING, logger="smtp_oauth.relay.listener"):
        RelayListener(
            relay_settings(listen="0.0.0.0:0"), default_mailbox=DEFAULT_MAILBOX, store=RecordingStore()
        )
    assert "without relay.tls_certificate and relay.tls_key they cannot log in" in caplog.text


def test_non_loopback_listen_without_users_refuses_to_start() -> None:
    """relay.listen on a public address with no relay.users raises before anything is bound."""
    with pytest.raises(ConfigurationError) as caught:
        RelayListener(
            RelaySettings(listen="0.0.0.0:2525"), default_mailbox=DEFAULT_MAILBOX, store=RecordingStore()
        )
    assert str(caught.value).startswith(
        "relay.listen is 0.0.0.0:2525, which is not loopback, and relay.users is empty: "
        "that would be an open relay"
    )


async def test_port_in_use_is_a_configuration_error() -> None:
    """A second listener on a taken port fails with a ConfigurationError naming relay.listen."""
    async with running_listener() as (listener, _):
        host, port = listener.addresses[0]
        second = RelayListener(
            relay_settings(listen=f"{host}:{port}"), default_mailbox=DEFAULT_MAILBOX, store=RecordingStore()
        )
        with pytest.raises(ConfigurationError) as caught:
            await second.start()
    assert caught.value.key == "relay.listen"
