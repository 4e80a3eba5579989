"""Streamed DATA: big bodies go to the spool's incoming/ as they arrive, with aiosmtpd's rules kept."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import tempfile
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_oauth.mail.headers import read_file_headers, read_headers
from smtp_oauth.relay.listener.incoming import SPILL_AT
from smtp_oauth.relay.listener.server import RelayListener
from smtp_oauth.relay.spool.sqlite import SqliteSpool, incoming_directory
from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import (
    running_relay,
    wait_for_count,
    wait_until,
)
from tests.relay.spool_helpers import body_of
from tests.relay.test_listener import (
    DEFAULT_MAILBOX,
    FAST,
    FERN_PASSWORD,
    connect,
    in_thread,
    raw_conversation,
    read_reply,
    relay_settings,
    send,
)
from tests.relay.test_listener_limits import PLAIN_FERN

HEAD = b"From: Fern <fern@contoso.com>\r\nTo: alice@example.com\r\nMessage-ID: <big@fern>\r\n\r\n"


def big_message(size: int, *, head: bytes = HEAD) -> bytes:
    """``head`` and CRLF lines up to ``size``, many starting with dots (stuffed on the wire)."""
    line = b".a line starting with a dot\r\n..two dots\r\nplain text line of the body\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


@asynccontextmanager
async def spooled_listener(
    directory: Path, **relay: Any
) -> AsyncIterator[tuple[RelayListener, SqliteSpool, Path]]:
    """A listener storing into a real SqliteSpool, streaming big bodies into its incoming/."""
    spool = await SqliteSpool.open(directory)
    incoming = spool.staging_dir
    listener = RelayListener(
        relay_settings(**{"max_message_size": 4 * SPILL_AT, **relay}),
        default_mailbox=DEFAULT_MAILBOX,
        store=spool.enqueue,
        tuning=FAST,
        incoming_dir=incoming,
    )
    await listener.start()
    try:
        yield listener, spool, incoming
    finally:
        await listener.stop()
        await spool.close()


async def nothing_left_in(incoming: Path) -> None:
    """incoming/ ends up empty (files are removed on an executor thread, soon after the reply)."""
    await wait_until(lambda: not incoming.exists() or not any(incoming.iterdir()), what="incoming/ empty")


async def test_big_message_round_trips_byte_for_byte(tmp_path: Path) -> None:
    """A body three times the memory buffer is stored exactly as sent, in a spool file, dots unstuffed."""
    data = big_message(3 * SPILL_AT)
    async with spooled_listener(tmp_path) as (listener, spool, incoming):
        assert await in_thread(lambda: send(listener, data=data)) == {}
        [entry] = await spool.list()
        assert await body_of(spool, entry.id) == data
        assert (spool.data_dir / f"{entry.id}.eml").exists()  # taken over as a file, not inline
        assert entry.size == len(data)
        assert entry.message_id == "<big@fern>"
        await nothing_left_in(incoming)


async def test_big_message_with_a_foreign_from_header_is_refused_and_removed(tmp_path: Path) -> None:
    """The From: check reads a spilled body's header from its file: 550, nothing stored or left."""
    data = big_message(2 * SPILL_AT, head=HEAD.replace(b"fern@contoso.com", b"ceo@contoso.com"))
    async with spooled_listener(tmp_path) as (listener, spool, incoming):
        with pytest.raises(smtplib.SMTPDataError) as caught:
            await in_thread(lambda: send(listener, data=data))
        assert caught.value.smtp_code == 550
        assert await spool.list() == []
        await nothing_left_in(incoming)


async def test_bare_lf_smuggling_after_a_spill_stays_one_message(tmp_path: Path) -> None:
    """Past the memory buffer, '<LF>.<CR><LF>' and '.<LF>' are still data: one message, one 250."""
    smuggled = (
        b"first\n.\r\nMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        b"From: ceo@contoso.com\r\n\r\nwire money\r\n.\nQUIT\r\n"
    )
    data = big_message(2 * SPILL_AT) + smuggled + b".\r\n"
    lines = [
        b"EHLO legacy.example\r\n",
        f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
        b"MAIL FROM:<fern@contoso.com>\r\n",
        b"RCPT TO:<alice@example.com>\r\n",
        b"DATA\r\n",
        data,
        b"QUIT\r\n",
    ]
    async with spooled_listener(tmp_path) as (listener, spool, _):
        transcript = await in_thread(lambda: raw_conversation(listener.addresses[0], lines))
        assert transcript.count(b"250 2.0.0 Ok: queued as") == 1
        [entry] = await spool.list()
        stored = await body_of(spool, entry.id)
    assert entry.rcpt_tos == ["alice@example.com"]
    assert stored.endswith(b"first\n.\r\nMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@example.com>\r\n"
                           b"DATA\r\nFrom: ceo@contoso.com\r\n\r\nwire money\r\n\nQUIT\r\n")  # fmt: skip


async def test_oversize_after_a_spill_gets_552_and_leaves_nothing(tmp_path: Path) -> None:
    """Over max_message_size, past the memory buffer: 552 after the final dot, no row, no file."""
    data = big_message(3 * SPILL_AT)

    def without_size_parameter(listener: RelayListener) -> tuple[int, bytes]:
        with connect(listener) as client:
            client.login("fern", FERN_PASSWORD)
            client.mail("fern@contoso.com")  # no SIZE=, so the limit bites during DATA
            client.rcpt("alice@example.com")
            return client.data(data)

    async with spooled_listener(tmp_path, max_message_size=2 * SPILL_AT) as (listener, spool, incoming):
        reply = await in_thread(lambda: without_size_parameter(listener))
        assert reply[0] == 552
        assert await spool.list() == []
        await nothing_left_in(incoming)


async def test_overlong_line_after_a_spill_gets_500_and_leaves_nothing(tmp_path: Path) -> None:
    """A 1200-octet line after the memory buffer spilled: 500, no row, no file."""
    data = big_message(2 * SPILL_AT) + b"z" * 1200 + b"\r\n"
    async with spooled_listener(tmp_path) as (listener, spool, incoming):
        with pytest.raises(smtplib.SMTPDataError) as caught:
            await in_thread(lambda: send(listener, data=data))
        assert caught.value.smtp_code == 500
        assert await spool.list() == []
        await nothing_left_in(incoming)


async def test_client_hanging_up_mid_data_leaves_no_file(tmp_path: Path) -> None:
    """A connection lost after the body spilled to a file: no message, the file is removed."""

    def hang_up_mid_data(address: tuple[str, int]) -> None:
        with socket.create_connection(address, timeout=10) as sock:
            read_reply(sock)
            for command in (
                b"EHLO legacy.example\r\n",
                f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
                b"MAIL FROM:<fern@contoso.com>\r\n",
                b"RCPT TO:<alice@example.com>\r\n",
                b"DATA\r\n",
            ):
                sock.sendall(command)
                read_reply(sock)
            sock.sendall(big_message(2 * SPILL_AT))

    async with spooled_listener(tmp_path) as (listener, spool, incoming):
        await in_thread(lambda: hang_up_mid_data(listener.addresses[0]))
        await wait_until(lambda: incoming.exists() and not any(incoming.iterdir()), what="the file removed")
        assert await spool.list() == []
        assert await in_thread(lambda: send(listener)) == {}  # the listener is fine afterwards


async def test_recover_removes_bodies_a_killed_relay_was_receiving(tmp_path: Path) -> None:
    """A file left in incoming/ (relay killed mid-DATA, never acknowledged) is gone after recover()."""
    incoming = incoming_directory(tmp_path)
    incoming.mkdir(parents=True)
    (incoming / "0123456789abcdef.tmp").write_bytes(b"half a message")
    spool = await SqliteSpool.open(tmp_path, exclusive=True)
    try:
        await spool.recover()
    finally:
        await spool.close()
    assert list(incoming.iterdir()) == []


header_lines = st.lists(
    st.sampled_from(
        [b"From: a@x.test", b"From: b@y.test, c@z.test", b"Subject: s", b" folded", b"\tFrom: no",
         b"from : d@w.test", b"", b"\r", b"\r\r", b"junk", b"Message-ID: <m1@x>", b"message-id:",
         b"X: " + b"v" * 40, b"X: y\rFrom: e@v.test", b"\rFrom: f@u.test"]
    ),
    max_size=25,
)  # fmt: skip


@settings(max_examples=300)
@given(lines=header_lines, ending=st.sampled_from([b"\r\n", b"\n"]), chunk_size=st.integers(1, 64))
def test_file_headers_read_in_chunks_equal_read_headers(
    lines: list[bytes], ending: bytes, chunk_size: int
) -> None:
    """read_file_headers finds exactly the From: addresses and Message-ID read_headers finds."""
    data = ending.join(lines) + ending + b"body\r\nFrom: body@not.header\r\n"
    with tempfile.NamedTemporaryFile() as file:
        file.write(data)
        file.flush()
        found = read_file_headers(Path(file.name), chunk_size=chunk_size)
    assert found == read_headers(data)


@pytest.mark.parametrize("blank_line", [b"\r\n", b""], ids=["header-then-body", "no-blank-line"])
def test_reading_a_big_files_header_holds_a_chunk_not_the_message(tmp_path: Path, blank_line: bytes) -> None:
    """8 MiB of colon-free lines, after the header or as the header: read with < 1 MiB allocated."""
    path = tmp_path / "big.eml"
    path.write_bytes(HEAD.removesuffix(b"\r\n") + blank_line + (b"0123456789" * 7 + b"\r\n") * 120_000)
    tracemalloc.start()
    try:
        found = read_file_headers(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.from_addresses == ("fern@contoso.com",)
    assert peak < 1024 * 1024


async def test_big_message_is_relayed_to_exchange_byte_for_byte(sandbox: Sandbox) -> None:
    """Legacy client -> relay (streamed to the spool) -> Exchange (streamed from it): same bytes."""
    mailbox = sandbox.tenant.mailbox
    data = big_message(5 * SPILL_AT, head=HEAD.replace(b"Fern <fern@contoso.com>", mailbox.encode()))

    def submit(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("legacy-app", "correct horse battery staple")
            client.sendmail(mailbox, ["someone@example.net"], data)

    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(submit, port)
        await wait_for_count(service, "delivered", 1)
    [delivered] = sandbox.delivered()
    assert delivered.data == data
