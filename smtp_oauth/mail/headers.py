"""The one reader of a message's header section: who it claims to be from, and its Message-ID.

A line ends at CRLF, a bare LF or a lone CR (``LINE_END``; the wire rule is CRLF only, but every
such line goes upstream as CRLF, so Exchange sees exactly the lines read here, and not splitting
at a lone CR would let ``X: y<CR>From: someone@else`` past the relay's From: check); the first
empty line ends the header; a line starting with white space folds into the field before it
(RFC 5322 2.2.3); ``Name :`` with white space before the colon is a field too (the obsolete
syntax of RFC 5322 4.5, which some readers still accept). The relay's listener, its file reader
(``read_file_headers``, one field in memory at a time) and every envelope read a header this way.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "HEADER_CHUNK",
    "LINE_END",
    "MAX_MESSAGE_ID_LENGTH",
    "SENDER_FIELDS",
    "MessageHeaders",
    "read_file_headers",
    "read_headers",
]

# What ends a line of a message on its way upstream: CRLF, a bare LF or a lone CR (each sent as CRLF).
LINE_END = re.compile(rb"\r\n|\n|\r")
MAX_MESSAGE_ID_LENGTH = 998  # RFC 5322 line limit; a longer "Message-ID" is junk, not an id for logs
HEADER_CHUNK = 64 * 1024


class MessageHeaders(NamedTuple):
    """What a header says: the sender addresses and the Message-ID (a NamedTuple, not a dataclass:
    send-mail's start-up does not pay for ``dataclasses``' import)."""

    from_addresses: tuple[str, ...]
    message_id: str | None


def _header_lines(data: bytes) -> list[bytes]:
    """The header section's lines, up to the first empty one.

    A bare LF and a lone CR end a line here as CRLF does (CRLF-only is the wire rule): delivery
    sends each of them upstream as CRLF (``smtp/wire.py DataEncoder``), so Exchange sees exactly these
    lines. Not splitting at a lone CR would let ``X: y<CR>From: someone@else`` past the From: check.
    """
    lines: list[bytes] = []
    start = 0
    for end in LINE_END.finditer(data):
        line = data[start : end.start()]
        if not line:
            return lines
        lines.append(line)
        start = end.end()
    if start < len(data):
        lines.append(data[start:])
    return lines


def _fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each header field (RFC 5322 2.2.3 folding)."""
    fields: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if line[:1] in {" ", "\t"} and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        if colon:
            # "From :" is obsolete syntax (RFC 5322 4.5) that some parsers still accept: count it.
            fields.append((name.strip().lower(), value.strip()))
    return fields


# The fields that name who sent a message (RFC 5322 3.6.2 and 3.6.6): each is checked like From:.
SENDER_FIELDS = frozenset({"from", "sender", "resent-from", "resent-sender"})
# What looks like an address inside a display name or comment ("boss@contoso.com" <me@...>).
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\]\",;:@]+@[^\s<>()\[\]\",;:@]+\.[^\s<>()\[\]\",;:@]+")


def _display_addresses(name: str) -> list[str]:
    """Addresses a display name shows, also inside RFC 2047 encoded words (=?utf-8?q?boss=40...?=)."""
    try:
        decoded = str(make_header(decode_header(name)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        decoded = name
    return _ADDRESS_LIKE.findall(decoded)


def read_headers(data: bytes) -> MessageHeaders:
    """The sender addresses (every From:, Sender:, Resent-From: and Resent-Sender: field, every
    address in it, and any address shown in a display name or comment) and the Message-ID.

    A reader sees the display name first: ``"boss@contoso.com" <me@contoso.com>`` claims to be
    from boss, so that address must be allowed too. An unparsable entry is returned as ``""``,
    which no sender rule but ``<>`` matches; a message without such fields has no header sender
    to check (MAIL FROM still is).
    """
    fields = _fields(_header_lines(data))
    addresses: list[str] = []
    for name, value in fields:
        if name in SENDER_FIELDS:
            pairs = getaddresses([value])
            found = [address.strip() for _, address in pairs]
            # An empty From: still claims a sender; "" makes the check refuse it (unless "<>").
            addresses.extend(found if any(found) else [""])
            for display, _ in pairs:
                addresses.extend(_display_addresses(display))
    message_id = next((value for name, value in fields if name == "message-id"), None)
    if message_id is not None:
        message_id = message_id.strip()[:MAX_MESSAGE_ID_LENGTH] or None
    return MessageHeaders(from_addresses=tuple(addresses), message_id=message_id)


def read_file_headers(path: Path, *, chunk_size: int = HEADER_CHUNK) -> MessageHeaders:
    """``read_headers`` of the message in ``path``, reading only its header section, in chunks.

    Blocking: call it in a thread. Lines are split and grouped exactly as ``read_headers`` does
    (split at CRLF, LF or a lone CR, an empty line ends the header, a line starting
    with white space folds into the last field, a line without a colon is no field), and each field
    is handed to ``read_headers`` on its own: memory is a chunk plus one field, time linear.
    """
    addresses: list[str] = []
    message_id: str | None = None
    message_id_seen = False
    field: list[bytes] = []  # the lines of the field being read, as they are in the file

    def field_done() -> None:
        nonlocal message_id, message_id_seen
        if not field:
            return
        found = read_headers(b"\n".join(field))
        addresses.extend(found.from_addresses)
        if not message_id_seen and field[0].partition(b":")[0].strip().lower() == b"message-id":
            message_id, message_id_seen = found.message_id, True  # the first one counts, as there
        field.clear()

    for line in _lines(path, chunk_size):
        if not line:
            break
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
        elif b":" in line:
            field_done()
            field.append(line)
        # else: no field (no colon); it does not end the one being folded either
    field_done()
    return MessageHeaders(from_addresses=tuple(addresses), message_id=message_id)


def _lines(path: Path, chunk_size: int) -> Iterator[bytes]:
    """The lines of the file split at CRLF, LF or a lone CR (``LINE_END``, dropped), read
    ``chunk_size`` bytes at a time. A CR that ends a chunk waits for the next: it may start a CRLF.
    """
    with path.open("rb") as file:
        partial = b""
        while chunk := file.read(chunk_size):
            text = partial + chunk
            held = b"\r" if text.endswith(b"\r") else b""
            lines = LINE_END.split(text[: len(text) - len(held)])
            partial = lines.pop() + held
            yield from lines
        if partial:
            yield from LINE_END.split(partial)
