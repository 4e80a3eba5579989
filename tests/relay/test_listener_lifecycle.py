"""The relay listener's life: STARTTLS, SIGHUP-style reload, graceful stop."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.sandbox.certs import make_certificates
from tests.relay.test_listener import (
    FERN_HASH,
    FERN_PASSWORD,
    MESSAGE,
    connect,
    in_thread,
    read_reply,
    relay_settings,
    running_listener,
    send,
)

NEWBIE_PASSWORD = "newbie-password-2026"


async def test_starttls_then_auth_sends_a_message(tmp_path: Path) -> None:
    """With a certificate configured, STARTTLS is offered; AUTH over TLS works and the message is stored."""
    certificates = make_certificates(tmp_path / "tls")
    relay = relay_settings(tls_certificate=certificates.server_certificate, tls_key=certificates.server_key)
    async with running_listener(relay) as (listener, store):

        def conversation() -> tuple[dict[str, str], dict[str, str]]:
            with connect(listener) as client:
                before = dict(client.esmtp_features)
                client.starttls(context=certificates.client_context())
                client.ehlo("legacy.example")
                after = dict(client.esmtp_features)
                client.login("fern", FERN_PASSWORD)
                client.sendmail("fern@contoso.com", ["alice@example.com"], MESSAGE)
            return before, after

        before, after = await in_thread(conversation)
    assert "starttls" in before
    assert "starttls" not in after
    assert after["auth"].split() == ["LOGIN", "PLAIN"]
    assert len(store.messages) == 1


async def test_unreadable_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    """A missing TLS certificate file is reported as a ConfigurationError naming the key."""
    relay = relay_settings(tls_certificate=tmp_path / "missing.pem", tls_key=tmp_path / "missing.key")
    with pytest.raises(ConfigurationError) as caught:
        async with running_listener(relay):
            pass
    assert caught.value.key == "relay.tls_certificate"


async def test_reload_swaps_users_for_new_connections() -> None:
    """After reload(), a new connection logs in with the new users and the removed one fails."""
    reloaded = relay_settings(
        users=[{"name": "newbie", "password_hash": hash_password(NEWBIE_PASSWORD, log2_n=10)}]
    )
    async with running_listener() as (listener, store):
        listener.reload(reloaded)
        await in_thread(
            lambda: send(
                listener,
                login=("newbie", NEWBIE_PASSWORD),
                sender="relay@contoso.com",
                data=MESSAGE.replace(b"fern@contoso.com", b"relay@contoso.com"),
            )
        )
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await in_thread(lambda: send(listener))
    assert [m.local_user for m in store.messages] == ["newbie"]


async def test_reload_keeps_open_connections() -> None:
    """A session opened before reload() stays connected and can still send."""
    async with running_listener() as (listener, store):
        client = await in_thread(lambda: connect(listener))
        try:
            await in_thread(lambda: client.login("fern", FERN_PASSWORD))
            listener.reload(relay_settings(max_message_size=50_000))
            refused = await in_thread(
                lambda: client.sendmail("fern@contoso.com", ["alice@example.com"], MESSAGE)
            )
        finally:
            await in_thread(client.quit)
    assert refused == {}
    assert len(store.messages) == 1


async def test_reload_with_bad_settings_keeps_the_running_policy() -> None:
    """A reload whose settings are invalid raises ConfigurationError and changes nothing."""
    broken = relay_settings(users=[{"name": "fern", "password_hash": "$2b$12$not-a-scrypt-hash"}])
    async with running_listener() as (listener, store):
        with pytest.raises(ConfigurationError):
            listener.reload(broken)
        await in_thread(lambda: send(listener))
    assert len(store.messages) == 1


async def test_stop_says_421_to_idle_sessions_and_refuses_new_ones() -> None:
    """stop() answers '421 4.3.2' to an idle session, closes it, and no longer accepts connections."""
    async with running_listener() as (listener, _):
        address = listener.addresses[0]
        sock = await in_thread(lambda: socket.create_connection(address, timeout=5))
        try:
            greeting = await in_thread(lambda: read_reply(sock))
            sock.sendall(b"EHLO legacy.example\r\n")  # answered: the server has the session open
            await in_thread(lambda: read_reply(sock))
            await listener.stop()
            goodbye = await in_thread(lambda: sock.recv(4096))
        finally:
            sock.close()
        with pytest.raises(ConnectionRefusedError):
            await in_thread(lambda: socket.create_connection(address, timeout=2).close())
    assert greeting.startswith(b"220 ")
    assert goodbye.startswith(b"421 4.3.2 ")


async def test_stop_lets_a_store_in_progress_finish() -> None:
    """A message whose store() is running when stop() is called is still committed and answered 250."""
    async with running_listener() as (listener, store):
        store.delay = 0.5
        sending = asyncio.ensure_future(in_thread(lambda: send(listener)))
        await asyncio.wait_for(store.started.wait(), timeout=10)
        await listener.stop()
        refused = await sending
    assert refused == {}
    assert len(store.messages) == 1


def test_default_hash_cost_verifies_too() -> None:
    """The fixtures' cheap hashes use the same format as the default-cost ones (ln travels along)."""
    assert FERN_HASH.startswith("$scrypt$ln=10,r=8,p=1$")


async def test_stop_lets_a_busy_session_finish_its_message_then_says_421() -> None:
    """A session inside a transaction at stop() gets its 250, then 421 at its next MAIL FROM."""
    async with running_listener() as (listener, store):
        client = await in_thread(lambda: connect(listener))
        try:
            await in_thread(lambda: client.login("fern", FERN_PASSWORD))
            await in_thread(lambda: client.mail("fern@contoso.com"))
            await in_thread(lambda: client.rcpt("alice@example.com"))
            stopping = asyncio.ensure_future(listener.stop())
            await asyncio.sleep(0.1)  # stop() has begun and is waiting for this session
            data_reply = await in_thread(lambda: client.data(MESSAGE))
            mail_reply = await in_thread(lambda: client.mail("fern@contoso.com"))
            await asyncio.wait_for(stopping, timeout=5)
        finally:
            client.close()
    assert data_reply[0] == 250
    assert mail_reply == (421, b"4.3.2 Service shutting down, closing connection")
    assert len(store.messages) == 1
