"""What every SMTP client of ours puts on the wire: the EHLO name, MAIL FROM's parameters, DATA.

Stdlib only (no aiosmtplib, no asyncio), so that the Mailer's session (``session.py``, streaming
DATA through ``stream.py``) and the stdlib client that sends one message for ``send-mail``
(``stdlib_client.py``) send the same bytes and declare the same things:

- ``ehlo_name``: this host's name, without DNS;

- ``DataEncoder``: lone CR or LF -> CRLF, a CRLF at the end, RFC 5321 4.5.2 dot-stuffing, the final
  dot; chunk by chunk (a CRLF or a leading dot may straddle two chunks);
- ``measure``: RFC 1870's SIZE (octets as transmitted, CRLF included, stuffing dots not) and
  whether the message is 7-bit, in one pass over a file without holding it;
- ``flatten``: an EmailMessage as bytes for a server's extensions (SMTPUTF8, 8BITMIME);
- ``mail_options``: SIZE, BODY=8BITMIME and SMTPUTF8 as the server offers and the message needs.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from email.message import EmailMessage

__all__ = ["CHUNK_SIZE", "DataEncoder", "ehlo_name", "flatten", "mail_options", "measure", "needs_smtputf8"]

CHUNK_SIZE = 256 * 1024
# aiosmtplib.protocol's LINE_ENDINGS_REGEX without the look-ahead: a CR at a chunk's end is held back.
_LINE_ENDING = re.compile(rb"\r\n|\n|\r")
_DOT_AT_LINE_START = re.compile(rb"\n\.")


def ehlo_name() -> str:
    """This host's name for EHLO, taken as Postfix takes ``myhostname``: gethostname(), no DNS.

    aiosmtplib's default, ``socket.getfqdn()``, asks DNS, which takes seconds where reverse DNS is
    broken. Exchange Online does not check the name (RFC 5321 4.1.4: a server may not refuse mail
    because it fails to verify); a name that would not fit on the EHLO line becomes "localhost".
    """
    name = socket.gethostname()
    fits = 0 < len(name) <= 253 and name.isascii() and all(c.isalnum() or c in ".-" for c in name)
    return name if fits else "localhost"


class DataEncoder:
    """What aiosmtplib sends for a whole message, produced chunk by chunk.

    ``b"".join(map(encoder.encode, chunks)) + encoder.finish()`` equals
    ``PERIOD_REGEX.sub(b"..", normalize_message_line_endings(b"".join(chunks))) + b".\\r\\n"``
    however the message is cut into chunks (a CRLF or a leading dot may straddle two).
    """

    def __init__(self) -> None:
        self._held_cr = False  # the previous chunk ended in CR: a line end, whatever follows
        self._at_line_start = True  # the next byte starts a line (dot-stuffing applies)
        self._sent_anything = False

    def encode(self, chunk: bytes) -> bytes:
        """The wire form of the next piece of the message (possibly empty: a CR held back)."""
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]  # CR then LF in the next chunk must become one CRLF, not two
            self._held_cr = True
        if not chunk:
            return b""
        text = _DOT_AT_LINE_START.sub(b"\n..", _LINE_ENDING.sub(b"\r\n", chunk))
        if self._at_line_start and text.startswith(b"."):
            text = b"." + text
        self._at_line_start = text.endswith(b"\n")
        self._sent_anything = True
        return text

    def finish(self) -> bytes:
        """The end: the last line's CRLF if it lacked one, then the lone dot."""
        if self._held_cr or not self._sent_anything or not self._at_line_start:
            return b"\r\n.\r\n"
        return b".\r\n"


def measure(file: BinaryIO) -> tuple[int, bool]:
    """(SIZE as transmitted, all 7-bit) of the rest of ``file``, which is left where it was.

    Blocking: call it in a thread. Each lone CR or LF becomes CRLF on the wire (one octet more), and
    a message not ending in a line end gets one (two octets).
    """
    start = file.tell()
    size = crlf = lf = cr = 0
    is_ascii = True
    previous_cr = False
    last = b""
    while chunk := file.read(CHUNK_SIZE):
        size += len(chunk)
        lf += chunk.count(b"\n")
        cr += chunk.count(b"\r")
        crlf += chunk.count(b"\r\n") + (previous_cr and chunk.startswith(b"\n"))
        is_ascii = is_ascii and chunk.isascii()
        previous_cr = chunk.endswith(b"\r")
        last = chunk[-1:]
    file.seek(start)
    transmitted = size + (lf - crlf) + (cr - crlf)
    if last not in (b"\r", b"\n"):
        transmitted += 2
    return transmitted, is_ascii


def needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    """RFC 6531: a non-ASCII address in the envelope needs the server's SMTPUTF8."""
    return not all(address.isascii() for address in (sender, *recipients))


def flatten(message: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    """The bytes to send after DATA: SMTPUTF8's policy for a non-ASCII envelope, 7-bit transfer
    encodings when the server lacks 8BITMIME (RFC 6152)."""
    from email import policy as email_policy
    from email.generator import BytesGenerator
    from io import BytesIO

    policy = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    if not eight_bit:
        policy = policy.clone(cte_type="7bit")
    with BytesIO() as buffer:
        BytesGenerator(buffer, policy=policy).flatten(message)
        return buffer.getvalue()


def mail_options(size: int, *, is_ascii: bool, utf8: bool, supports: Callable[[str], bool]) -> list[str]:
    """MAIL FROM parameters: SIZE (RFC 1870), BODY=8BITMIME for 8-bit content (RFC 6152), SMTPUTF8
    (RFC 6531); ``supports(name)`` says whether the server's EHLO offered an extension."""
    options = []
    if supports("size"):
        options.append(f"SIZE={size}")
    if supports("8bitmime") and not is_ascii:
        options.append("BODY=8BITMIME")
    if utf8:
        options.append("SMTPUTF8")
    return options
