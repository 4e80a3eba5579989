"""The Mailer's streamed DATA: chunk-by-chunk encoding, SIZE from a file, files as messages."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from smtp_oauth.sandbox.exchange.server import FakeExchange
from smtp_oauth.settings.models import Settings
from smtp_oauth.smtp.mailer import Mailer
from smtp_oauth.smtp.stream import CHUNK_SIZE, DataEncoder, file_io, measure
from tests.smtp.sender_fakes import MAILBOX, SigningTokenProvider

pytest_plugins = ["tests.smtp.sender_fixtures"]  # fixtures: certs, exchange, settings, tokens, ...

# Bytes where the interesting things happen: dots, CR, LF, and something else.
wire_bytes = st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b"\xc3\xa9"]), max_size=60).map(
    b"".join
)


def aiosmtplib_encoding(data: bytes) -> bytes:
    """What aiosmtplib's execute_data_command writes after DATA for ``data`` in one piece."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(point, len(data)) for point in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


@given(data=wire_bytes, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_chunked_encoding_equals_aiosmtplibs_whole_message_encoding(data: bytes, cuts: list[int]) -> None:
    """However a message is cut, the chunks encode to exactly what aiosmtplib sends for the whole."""
    encoder = DataEncoder()
    encoded = b"".join(encoder.encode(chunk) for chunk in cut(data, cuts) if chunk) + encoder.finish()
    assert encoded == aiosmtplib_encoding(data)


def test_dot_and_crlf_straddling_chunk_boundaries_are_encoded_once() -> None:
    """A leading dot at a chunk's start is doubled; a CR and LF in two chunks are one CRLF."""
    encoder = DataEncoder()
    pieces = [encoder.encode(b"line one\r"), encoder.encode(b"\n.dot line\r\n"), encoder.encode(b".\r\n")]
    assert b"".join(pieces) + encoder.finish() == b"line one\r\n..dot line\r\n..\r\n.\r\n"


@given(data=wire_bytes)
def test_measure_counts_octets_as_transmitted(data: bytes) -> None:
    """measure() gives len() of the line-end-normalized message and whether it is 7-bit."""
    file = io.BytesIO(b"skipped" + data)
    file.seek(7)
    assert measure(file) == (len(normalize_message_line_endings(data)), data.isascii())
    assert file.tell() == 7  # left where it was


def big_raw_message(size: int) -> bytes:
    """Headers, then lines with leading dots, bare LFs and a CR/LF at the chunk boundaries."""
    head = b"From: " + MAILBOX.encode() + b"\r\nTo: alice@example.test\r\nMessage-ID: <big@test>\r\n\r\n"
    line = b".starts with a dot\r\nplain line\nbare LF line\r\n"
    body = (line * (size // len(line) + 1))[: size - len(head)]
    return head + body


async def test_a_message_file_larger_than_a_chunk_arrives_byte_for_byte(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, tmp_path: Path
) -> None:
    """Mailer.send(path) streams a 3-chunk message; Exchange stores exactly its normalized bytes."""
    raw = big_raw_message(3 * CHUNK_SIZE + 1234)
    path = tmp_path / "big.eml"
    path.write_bytes(raw)
    async with Mailer(settings, token_provider=tokens) as mailer:
        result = await mailer.send(path, recipients=["alice@example.test"])
    [delivered] = exchange.delivered()
    assert delivered.data == normalize_message_line_endings(raw)
    assert result.message_id == "<big@test>"


def straddling_message() -> bytes:
    """A message whose first chunk ends in the CR of a CRLF, the next line starting with a dot."""
    head = b"From: " + MAILBOX.encode() + b"\r\nTo: alice@example.test\r\n\r\n"
    filler_line = b"y" * 98 + b"\r\n"
    room = CHUNK_SIZE - len(head)
    filler = filler_line * (room // len(filler_line) - 1)
    last = b"z" * (room - len(filler) - 1) + b"\r"  # its LF is the next chunk's first byte
    message = head + filler + last + b"\n.dot at a chunk boundary\r\n.\r\nend\r\n"
    assert message[CHUNK_SIZE - 1 : CHUNK_SIZE + 2] == b"\r\n."
    return message


async def test_crlf_and_dot_across_a_chunk_boundary_arrive_intact(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, tmp_path: Path
) -> None:
    """A CRLF split by the chunking is one line end; the dot-led lines after it arrive unchanged."""
    raw = straddling_message()
    path = tmp_path / "straddle.eml"
    path.write_bytes(raw)
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(path, recipients=["alice@example.test"])
    assert exchange.delivered()[0].data == raw


async def test_size_parameter_of_a_file_is_what_goes_on_the_wire(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange, tmp_path: Path
) -> None:
    """MAIL FROM's SIZE= for a file counts each bare LF as CRLF, as transmitted (RFC 1870)."""
    raw = big_raw_message(CHUNK_SIZE + 10)
    path = tmp_path / "big.eml"
    path.write_bytes(raw)
    lines: list[str] = []
    async with Mailer(
        settings, token_provider=tokens, transcript=lambda d, t: lines.append(f"{d}: {t}")
    ) as m:
        await m.send(path, recipients=["alice@example.test"])
    [mail_from] = [line for line in lines if line.startswith("C: MAIL FROM:")]
    assert f"SIZE={len(normalize_message_line_endings(raw))}" in mail_from
    assert sum(line.startswith("C: [message: ") for line in lines) == 1  # one transcript line, not per chunk


async def test_a_binary_file_is_sent_from_its_current_position(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """A seekable binary file is sent from where it stands, and left open."""
    raw = big_raw_message(2000)
    file = io.BytesIO(b"mbox junk\r\n" + raw)
    file.seek(len(b"mbox junk\r\n"))
    async with Mailer(settings, token_provider=tokens) as mailer:
        await mailer.send(file, recipients=["alice@example.test"])
    assert exchange.delivered()[0].data == normalize_message_line_endings(raw)
    assert not file.closed


async def test_an_unseekable_file_is_refused_before_connecting(
    settings: Settings, tokens: SigningTokenProvider, exchange: FakeExchange
) -> None:
    """A pipe-like file cannot be measured for SIZE or resent: TypeError, nothing sent."""

    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    async with Mailer(settings, token_provider=tokens) as mailer:
        with pytest.raises(TypeError, match="seekable"):
            await mailer.send(Pipe(), recipients=["alice@example.test"])  # type: ignore[arg-type]
    assert exchange.delivered() == []


async def test_a_small_in_memory_body_is_read_without_a_thread() -> None:
    """file_io runs a step on a small BytesIO at once, on the event loop's thread (no thread hop)."""
    body = io.BytesIO(b"Subject: x\r\n\r\nhello\r\n")
    assert await file_io(body, threading.get_ident) == threading.get_ident()


async def test_a_large_in_memory_body_is_read_in_a_thread() -> None:
    """file_io keeps a BytesIO over a chunk off the event loop: scanning it would hold up every session."""
    body = io.BytesIO(b"a" * (CHUNK_SIZE + 1))
    assert await file_io(body, threading.get_ident) != threading.get_ident()


async def test_a_file_on_disk_is_read_in_a_thread(tmp_path: Path) -> None:
    """file_io reads a real file in a thread, however small: a disk can stall."""
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: x\r\n\r\nhello\r\n")
    with path.open("rb") as body:
        assert await file_io(body, threading.get_ident) != threading.get_ident()
