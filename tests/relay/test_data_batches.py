"""DATA lines taken from the reader's buffer together are read exactly as one by one would be.

A real listener and a raw socket, so that what the client sends arrives in one segment: the end of
a message, the next transaction's commands and its body together.
"""

from __future__ import annotations

import asyncio
import random
import socket

from smtp_oauth.relay.listener.incoming import BodyWriter, DataState, receive_data
from tests.relay.test_listener import in_thread, read_reply, running_listener
from tests.relay.test_listener_limits import PLAIN_FERN

SENDER = "fern@contoso.com"


def transaction(body: bytes) -> bytes:
    return (
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n".encode()
        + f"From: {SENDER}\r\nSubject: batch\r\n\r\n".encode()
        + body
        + b".\r\n"
    )


def pipelined(address: tuple[str, int], bodies: list[bytes]) -> bytes:
    """EHLO and AUTH, then every transaction in one write; all the server answered."""
    with socket.create_connection(address, timeout=10) as sock:
        read_reply(sock)
        for command in (b"EHLO client\r\n", f"AUTH PLAIN {PLAIN_FERN}\r\n".encode()):
            sock.sendall(command)
            read_reply(sock)
        sock.sendall(b"".join(transaction(body) for body in bodies) + b"QUIT\r\n")
        answered = b""
        while chunk := sock.recv(65536):
            answered += chunk
        return answered


async def test_commands_after_the_final_dot_in_the_same_segment_are_commands() -> None:
    """Two transactions and QUIT in one write: two messages, each with only its own body."""
    first = b"one\r\n..dot-stuffed\r\n"
    second = b"two\r\n" + b"x" * 900 + b"\r\n"
    async with running_listener() as (listener, store):
        answered = await in_thread(lambda: pipelined(listener.addresses[0], [first, second]))
    assert answered.count(b"250 2.0.0 Ok: queued as") == 2
    assert answered.rstrip().endswith(b"221 Bye")
    bodies = [message.data for message in store.messages]
    assert isinstance(bodies[0], bytes)
    assert bodies[0].endswith(b"\r\n\r\none\r\n.dot-stuffed\r\n")
    assert isinstance(bodies[1], bytes)
    assert bodies[1].endswith(b"\r\n\r\n" + second)


async def test_an_overlong_line_among_buffered_lines_is_refused_with_500() -> None:
    """A 2000-octet line between short ones, all in one write: 500, and the next transaction works."""
    overlong = b"short\r\n" + b"y" * 2000 + b"\r\nshort again\r\n"
    async with running_listener() as (listener, store):
        answered = await in_thread(lambda: pipelined(listener.addresses[0], [overlong, b"fine\r\n"]))
    assert b"\r\n500 Line too long" in b"\r\n" + answered
    assert answered.count(b"250 2.0.0 Ok: queued as") == 1
    assert len(store.messages) == 1


async def test_a_message_fed_in_one_piece_is_the_same_as_line_by_line() -> None:
    """receive_data on a whole buffered message (batches) and on one line per read give one body."""
    message = b"a\r\n..b\r\nbare\nlf\r\n" + b"z" * 500 + b"\r\n.\r\nMAIL FROM:<x@y>\r\n"

    async def read(pieces: list[bytes]) -> tuple[DataState, bytes, bytes]:
        reader = asyncio.StreamReader(limit=1001)
        for piece in pieces:
            reader.feed_data(piece)
        body = BodyWriter(None)
        state = await receive_data(reader, body, size_limit=None, line_length_limit=1001)
        rest = await reader.read(100)
        data = await body.finish()
        assert isinstance(data, bytes)
        return state, data, rest

    whole = await read([message])
    lines = message.split(b"\n")
    one_by_one = await read([line + b"\n" for line in lines[:-1]] + [lines[-1]])
    assert whole == one_by_one
    assert whole[0] is DataState.COMPLETE
    assert whole[2] == b"MAIL FROM:<x@y>\r\n"


# What a DATA transfer is made of, the pieces that need care included: dot-stuffing, bare CR and
# LF, "<LF>.<LF>", an end marker that is not one ("<LF>.<CR><LF>"), lines at and over the limit.
_PIECES = (b"text", b".", b"..", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b" ", b"x" * 999, b"y" * 1500)
# Without bare LFs and (mostly) without overlong lines: transfers whose lines can be taken as a block.
_CLEAN_PIECES = (b"text", b".", b"..", b"\r\n", b"\r\n", b"\r\n", b"\r", b" ", b"z" * 300)


def _random_transfer(rng: random.Random) -> bytes:
    """A DATA transfer: random pieces, then the final dot and a command that must stay a command."""
    pieces = rng.choice([_PIECES, _CLEAN_PIECES])
    body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
    return body + b"\r\n.\r\nRSET\r\n"


async def _receive(pieces: list[bytes], size_limit: int | None) -> tuple[DataState, bytes, bytes]:
    """receive_data while ``pieces`` arrive one by one: the state, the body (empty when refused: the
    session discards it), what is left unread. A transfer refused as too big held at most the limit."""
    reader = asyncio.StreamReader(limit=1001)
    body = BodyWriter(None)
    receiving = asyncio.create_task(receive_data(reader, body, size_limit=size_limit, line_length_limit=1001))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)  # the loop reads what has arrived before the next piece
    reader.feed_eof()
    state = await receiving
    if state is DataState.TOO_MUCH:
        assert size_limit is not None
        assert body.size <= size_limit
    data = await body.finish() if state is DataState.COMPLETE else b""
    assert isinstance(data, bytes)
    return state, data, await reader.read()


async def test_any_split_of_a_transfer_into_reads_gives_the_same_outcome() -> None:
    """The whole transfer in one read (lines taken together) and in small random reads (line by
    line): the same reply, the same body, the same bytes left for the next command."""
    rng = random.Random(5321)  # noqa: S311  # reproducible cases, not cryptography
    for _ in range(300):
        transfer = _random_transfer(rng)
        size_limit = rng.choice([None, None, 500, 2000])
        cuts = sorted(rng.sample(range(1, len(transfer)), min(len(transfer) - 1, len(transfer) // 16)))
        small = [transfer[a:b] for a, b in zip([0, *cuts], [*cuts, len(transfer)], strict=True)]
        whole = await _receive([transfer], size_limit)
        assert whole == await _receive(small, size_limit), transfer
