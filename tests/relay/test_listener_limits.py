"""The relay listener's protocol limits: recipients, size, lines, DATA framing, errors, load."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from smtp_oauth.relay.listener.server import ListenerTuning
from tests.relay.test_listener import (
    FERN_PASSWORD,
    MESSAGE,
    connect,
    in_thread,
    raw_conversation,
    read_reply,
    relay_settings,
    running_listener,
    send,
)

PLAIN_FERN = "AGZlcm4AZmVybi1jb3JyZWN0LWhvcnNlLWJhdHRlcnk="  # base64("\0fern\0" + FERN_PASSWORD)


async def test_501st_recipient_gets_452() -> None:
    """500 recipients are accepted; the 501st gets '452 4.5.3 Too many recipients'."""
    async with running_listener() as (listener, store):

        def conversation() -> list[tuple[int, bytes]]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                client.mail("fern@contoso.com")
                replies = [client.rcpt(f"user{n}@example.com") for n in range(501)]
                client.data(MESSAGE)
                return replies

        replies = await in_thread(conversation)
    assert {code for code, _ in replies[:500]} == {250}
    assert replies[500] == (452, b"4.5.3 Too many recipients")
    assert len(store.messages[0].rcpt_tos) == 500


async def test_size_is_advertised_from_max_message_size() -> None:
    """EHLO advertises SIZE equal to relay.max_message_size."""
    async with running_listener(relay_settings(max_message_size=123_456)) as (listener, _):

        def size() -> str:
            with connect(listener) as client:
                return client.esmtp_features["size"]

        advertised = await in_thread(size)
    assert advertised == "123456"


async def test_oversize_message_gets_552() -> None:
    """A message over relay.max_message_size is refused with 552 and not stored."""
    big = MESSAGE + b"x" * 998 + b"\r\n" + (b"y" * 998 + b"\r\n") * 120
    async with running_listener(relay_settings(max_message_size=100_000)) as (listener, store):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                client.mail("fern@contoso.com")
                client.rcpt("alice@example.com")
                return client.data(big)

        reply = await in_thread(conversation)
    assert reply[0] == 552
    assert store.messages == []


async def test_mail_size_parameter_over_the_limit_gets_552() -> None:
    """MAIL FROM with SIZE= above the limit is refused before any data is sent."""
    async with running_listener(relay_settings(max_message_size=100_000)) as (listener, _):

        def conversation() -> tuple[int, bytes]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                return client.mail("fern@contoso.com", ["SIZE=100001"])

        reply = await in_thread(conversation)
    assert reply[0] == 552


async def test_overlong_data_line_is_refused() -> None:
    """A text line over RFC 5321's 1000 octets in DATA is refused (500) and nothing is stored."""
    long_line = MESSAGE + b"z" * 1200 + b"\r\n"
    async with running_listener() as (listener, store):
        with pytest.raises(smtplib.SMTPDataError) as caught:
            await in_thread(lambda: send(listener, data=long_line))
    assert caught.value.smtp_code == 500
    assert store.messages == []


async def test_overlong_command_line_is_refused() -> None:
    """A command line over 512 octets gets 500 and the session goes on."""
    async with running_listener() as (listener, _):

        def conversation() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with connect(listener) as client:
                too_long = client.docmd("NOOP", "n" * 600)
                return too_long, client.noop()

        too_long, after = await in_thread(conversation)
    assert too_long[0] == 500
    assert after[0] == 250


async def test_bare_lf_smuggling_stays_inside_the_first_message() -> None:
    """Bare-LF end-of-data tricks inside DATA are data: exactly one message, holding the smuggled text."""
    # "<LF>.<CR><LF>" and "<CR><LF>.<LF>" end DATA on vulnerable servers (CVE-2023-51766 and kin).
    smuggled = (
        b"From: fern@contoso.com\r\n\r\nfirst\n.\r\nMAIL FROM:<ceo@contoso.com>\r\n"
        b"RCPT TO:<victim@example.com>\r\nDATA\r\nFrom: ceo@contoso.com\r\n\r\nwire money\r\n.\n"
        b"MAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim2@example.com>\r\nDATA\r\nagain\r\n.\r\n"
    )
    lines = [
        b"EHLO legacy.example\r\n",
        f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
        b"MAIL FROM:<fern@contoso.com>\r\n",
        b"RCPT TO:<alice@example.com>\r\n",
        b"DATA\r\n",
        smuggled,
        b"QUIT\r\n",
    ]
    async with running_listener() as (listener, store):
        transcript = await in_thread(lambda: raw_conversation(listener.addresses[0], lines))
    assert transcript.count(b"250 2.0.0 Ok: queued as") == 1
    assert len(store.messages) == 1
    data = store.messages[0].data
    assert isinstance(data, bytes)
    assert b"first\n.\r\nMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@example.com>" in data
    # ".<LF>MAIL..." is one line starting with a dot: dot-unstuffed (RFC 5321 4.5.2), still data.
    assert b"wire money\r\n\nMAIL FROM:<ceo@contoso.com>" in data
    assert store.messages[0].rcpt_tos == ["alice@example.com"]


async def test_store_failure_answers_451_without_internals() -> None:
    """When store() raises, the client gets the plain 451 reply: no exception type, path or text."""
    async with running_listener() as (listener, store):
        store.fail = True

        def conversation() -> bytes:
            lines = [
                b"EHLO legacy.example\r\n",
                f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
                b"MAIL FROM:<fern@contoso.com>\r\n",
                b"RCPT TO:<alice@example.com>\r\n",
                b"DATA\r\n",
                MESSAGE + b".\r\n",
                b"QUIT\r\n",
            ]
            return raw_conversation(listener.addresses[0], lines)

        transcript = await in_thread(conversation)
    assert b"\r\n451 4.3.0 Requested action aborted: local error in processing\r\n" in transcript
    for leak in (b"OSError", b"Traceback", b"spool", b"No space", b"Errno"):
        assert leak not in transcript


async def test_hundred_concurrent_clients_are_all_accepted() -> None:
    """100 clients connected at the same time each get their message stored (within the limits)."""
    clients = 100
    barrier = threading.Barrier(clients, timeout=30)
    relay = relay_settings(max_connections_per_client=clients)
    async with running_listener(relay) as (listener, store):

        def one_client(index: int) -> dict[str, tuple[int, bytes]]:
            with connect(listener) as client:
                client.login("fern", FERN_PASSWORD)
                barrier.wait()  # every session is open before anyone sends
                return client.sendmail("fern@contoso.com", [f"user{index}@example.com"], MESSAGE)

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, one_client, n) for n in range(clients))
            )
    assert results == [{}] * clients
    assert sorted(m.rcpt_tos[0] for m in store.messages) == sorted(
        f"user{n}@example.com" for n in range(clients)
    )


async def test_idle_session_is_closed_after_the_timeout() -> None:
    """A client that stays silent past the idle timeout gets '421 4.4.2' and is disconnected."""
    async with running_listener(tuning=ListenerTuning(idle_timeout=0.3, greet_pause=0.0)) as (listener, _):

        def conversation() -> bytes:
            with socket.create_connection(listener.addresses[0], timeout=5) as sock:
                greeting = sock.recv(4096)
                rest = sock.recv(4096)  # blocks until the server hangs up
            return greeting + rest

        transcript = await in_thread(conversation)
    assert transcript.startswith(b"220 ")
    assert transcript.endswith(b"\r\n421 4.4.2 Error: timeout exceeded, closing connection\r\n")


async def test_a_message_arriving_slowly_outlasts_the_idle_timeout() -> None:
    """DATA still arriving is not idle: a message taking 3x the idle timeout to arrive is accepted."""
    async with running_listener(tuning=ListenerTuning(idle_timeout=0.6)) as (listener, store):

        def conversation() -> bytes:
            with socket.create_connection(listener.addresses[0], timeout=10) as sock:
                transcript = read_reply(sock)
                for command in (
                    b"EHLO legacy.example\r\n",
                    f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
                    b"MAIL FROM:<fern@contoso.com>\r\n",
                    b"RCPT TO:<alice@example.com>\r\n",
                    b"DATA\r\n",
                ):
                    sock.sendall(command)
                    transcript += read_reply(sock)
                sock.sendall(MESSAGE)
                for _ in range(18):  # 18 x 0.1 s, 4000 octets each (the size limit is 100000)
                    time.sleep(0.1)
                    sock.sendall((b"y" * 998 + b"\r\n") * 4)
                sock.sendall(b".\r\n")
                transcript += read_reply(sock)
            return transcript

        transcript = await in_thread(conversation)
    assert b"250 2.0.0 Ok: queued as" in transcript
    assert len(store.messages) == 1
