"""Protocol conformance with legacy clients: SMTPUTF8, AUTH LOGIN prompts, PIPELINING, early talkers,
control characters, junk commands, bare-LF end of data."""

from __future__ import annotations

import socket

from smtp_oauth.relay.listener.server import ListenerTuning
from tests.relay.test_listener import (
    FERN_PASSWORD,
    connect,
    in_thread,
    raw_conversation,
    read_reply,
    relay_settings,
    running_listener,
)
from tests.relay.test_listener_limits import PLAIN_FERN


async def test_utf8_addresses_are_accepted_with_smtputf8() -> None:
    """EHLO advertises SMTPUTF8 and a UTF-8 recipient is accepted (Exchange takes them too)."""
    async with running_listener(relay_settings(max_message_size=100_000)) as (listener, store):

        def conversation() -> dict[str, tuple[int, bytes]]:
            with connect(listener) as client:
                assert client.has_extn("smtputf8")
                client.login("fern", FERN_PASSWORD)
                message = b"From: fern@contoso.com\r\nSubject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
                return client.sendmail("fern@contoso.com", ["jürgen@exämple.test"], message, ["SMTPUTF8"])

        refused = await in_thread(conversation)
    assert refused == {}
    assert store.messages[0].rcpt_tos == ["jürgen@exämple.test"]


async def test_auth_login_prompts_username_and_password() -> None:
    """AUTH LOGIN asks 'Username:' then 'Password:' (base64), which old printers expect."""
    async with running_listener() as (listener, _):
        transcript = await in_thread(
            lambda: raw_conversation(
                listener.addresses[0], [b"EHLO x\r\n", b"AUTH LOGIN\r\n", b"ZmVybg==\r\n"]
            )
        )
    assert b"334 VXNlcm5hbWU6\r\n" in transcript  # "Username:"
    assert transcript.endswith(b"334 UGFzc3dvcmQ6\r\n")  # "Password:"


async def test_pipelining_is_advertised() -> None:
    """EHLO lists PIPELINING (RFC 2920), so swaks --pipeline and Postfix use it."""
    async with running_listener() as (listener, _):
        advertised = await in_thread(lambda: connect(listener).has_extn("pipelining"))
    assert advertised


async def test_a_client_talking_before_the_greeting_is_refused() -> None:
    """A whole transaction sent before the 220 gets 554 5.5.1 and the connection is closed."""
    tuning = ListenerTuning(greet_pause=0.5, auth_failure_delay=0.01)

    def early_talker(address: tuple[str, int]) -> bytes:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(f"EHLO x\r\nAUTH PLAIN {PLAIN_FERN}\r\nMAIL FROM:<fern@contoso.com>\r\n".encode())
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        return received

    async with running_listener(tuning=tuning) as (listener, store):
        received = await in_thread(lambda: early_talker(listener.addresses[0]))
    assert received.startswith(b"554 5.5.1 ")
    assert b"220" not in received
    assert store.messages == []


async def test_a_patient_client_is_greeted_after_the_pause() -> None:
    """A client that waits gets the 220 once the greeting pause is over."""
    async with running_listener(tuning=ListenerTuning(greet_pause=0.2)) as (listener, _):
        code = await in_thread(lambda: connect(listener).noop()[0])
    assert code == 250


async def test_control_characters_in_addresses_and_ehlo_get_501() -> None:
    """CR or NUL inside EHLO, MAIL FROM or RCPT TO is refused with 501 (never passed upstream)."""
    async with running_listener() as (listener, store):
        replies = await in_thread(
            lambda: [
                raw_conversation(listener.addresses[0], [b"EHLO a\x00b\r\n"]),
                raw_conversation(
                    listener.addresses[0],
                    [
                        b"EHLO x\r\n",
                        f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
                        b"MAIL FROM:<fern@contoso.com>\r\n",
                        b"RCPT TO:<a\rRSET@example.test>\r\n",
                        b"RCPT TO:<a\x00b@example.test>\r\n",
                    ],
                ),
                raw_conversation(
                    listener.addresses[0],
                    [
                        b"EHLO x\r\n",
                        f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
                        b"MAIL FROM:<fe\x00rn@contoso.com>\r\n",
                    ],
                ),
            ]
        )
    assert replies[0].splitlines()[-1].startswith(b"501 ")
    assert [line[:4] for line in replies[1].splitlines()[-2:]] == [b"501 ", b"501 "]
    assert replies[2].splitlines()[-1].startswith(b"501 ")
    assert store.messages == []


async def test_junk_commands_are_limited() -> None:
    """After 100 NOOPs a client gets '421 4.7.0' and is disconnected (Postfix's junk command limit)."""

    def noops(address: tuple[str, int]) -> list[bytes]:
        with socket.create_connection(address, timeout=10) as sock:
            read_reply(sock)
            replies = []
            for _ in range(101):
                sock.sendall(b"NOOP\r\n")
                replies.append(read_reply(sock))
            return replies

    async with running_listener() as (listener, _):
        replies = await in_thread(lambda: noops(listener.addresses[0]))
    assert replies[99].startswith(b"250")
    assert replies[100].startswith(b"421 4.7.0")


async def test_bare_lf_end_of_data_gets_a_reply_and_a_close() -> None:
    """A client ending DATA with <LF>.<LF> gets 521 at once and is disconnected, nothing stored."""
    async with running_listener() as (listener, store):

        def bare_lf(address: tuple[str, int]) -> bytes:
            with socket.create_connection(address, timeout=5) as sock:
                read_reply(sock)
                for command in (b"EHLO x\n", f"AUTH PLAIN {PLAIN_FERN}\n".encode()):
                    sock.sendall(command)
                    read_reply(sock)
                sock.sendall(b"MAIL FROM:<fern@contoso.com>\nRCPT TO:<a@example.test>\nDATA\n")
                while b"354" not in read_reply(sock):
                    pass
                sock.sendall(b"From: fern@contoso.com\nSubject: x\n\nline one\nline two\n.\n")
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
                return received

        received = await in_thread(lambda: bare_lf(listener.addresses[0]))
    assert received == b"521 5.5.2 Error: bare <LF> received\r\n"
    assert store.messages == []
