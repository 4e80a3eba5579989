"""The MIME message Graph should get: pure functions, bytes in, bytes out.

Graph's ``sendMail`` takes its recipients from the message's To, Cc and Bcc headers, not from an
envelope (https://learn.microsoft.com/graph/api/user-sendmail, "send mail in MIME format"), so:

- envelope recipients missing from those headers (a relay's or ``sendmail -t``'s Bcc, which the
  message no longer carries) are added in a ``Bcc:`` header, the rest of the message byte for byte;
- a header recipient that is *not* an envelope recipient would get mail its sender did not address
  to it: that message is refused (MessageError), never sent to more people than asked;
- quoted-printable parts are re-encoded as base64: Graph re-encodes QP bodies and breaks soft line
  breaks followed by hex digits (seen by several relays; base64 passes through untouched);
- line ends are CRLF, as RFC 5322 has them and as the SMTP transport sends them (a legacy client's
  bare LFs reach either upstream the same way).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Iterator, Sequence
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from smtp_oauth.errors import MessageError

__all__ = ["add_bcc", "for_graph", "header_recipients", "reencode_quoted_printable", "split_header"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_QP_PART = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*quoted-printable[ \t]*\r?$")
_RECIPIENT_HEADERS = ("to", "cc", "bcc")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FOLD_AFTER = 4  # addresses per line of the added Bcc header: stays far below 998 characters


def split_header(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block without its last line break, line ending, rest from the empty line on)."""
    end = _HEADER_END.search(raw)
    if end is None:
        eol = b"\r\n" if b"\r\n" in raw else b"\n"
        return raw.rstrip(b"\r\n"), eol, eol + eol
    eol = b"\r\n" if raw[end.start() : end.start() + 2] == b"\r\n" else b"\n"
    return raw[: end.start()], eol, raw[end.start() :]


def _header_fields(block: bytes, eol: bytes) -> Iterator[bytes]:
    """The header block's fields, each with its continuation lines (unchanged bytes)."""
    field: list[bytes] = []
    for line in block.split(eol):
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        if field:
            yield eol.join(field)
        field = [line]
    if field:
        yield eol.join(field)


def _field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def header_recipients(raw: bytes) -> list[str]:
    """The addresses in To, Cc and Bcc (empty groups name nobody)."""
    block, _, _ = split_header(raw)
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block + b"\n\n")
    values = [str(value) for name in ("To", "Cc", "Bcc") for value in headers.get_all(name, [])]
    return [address for _display, address in email.utils.getaddresses(values) if address]


def add_bcc(raw: bytes, addresses: Sequence[str]) -> bytes:
    """``raw`` with ``addresses`` in its Bcc header (an existing one is merged), the rest unchanged."""
    if not addresses:
        return raw
    block, eol, rest = split_header(raw)
    fields = list(_header_fields(block, eol))
    existing = [field for field in fields if _field_name(field) == "bcc"]
    kept = [field for field in fields if _field_name(field) != "bcc"]
    values = [field.split(b":", 1)[1].strip() for field in existing]
    values = [b" ".join(value.split()) for value in values if value.strip()]
    values += [address.encode("ascii", "strict") for address in addresses]
    lines = [b", ".join(values[n : n + _FOLD_AFTER]) for n in range(0, len(values), _FOLD_AFTER)]
    bcc = b"Bcc: " + (b"," + eol + b" ").join(lines)
    return eol.join([*kept, bcc]) + rest


def reencode_quoted_printable(raw: bytes) -> bytes:
    """``raw`` with every quoted-printable leaf part re-encoded as base64; unchanged if it has none."""
    if not _QP_PART.search(raw):
        return raw
    _, eol, _ = split_header(raw)
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    for part in message.walk():
        if (
            part.is_multipart()
            or part.get("Content-Transfer-Encoding", "").strip().lower() != "quoted-printable"
        ):
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)  # a leaf part decodes to bytes
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(_base64_lines(payload, eol.decode("ascii")))
    return _serialize(message, eol)


def _base64_lines(data: bytes, eol: str) -> str:
    text = base64.b64encode(data).decode("ascii")
    return eol.join(text[n : n + 76] for n in range(0, len(text), 76)) + eol


def _serialize(message: Message, eol: bytes) -> bytes:
    buffer = BytesIO()
    policy = email.policy.compat32.clone(linesep=eol.decode("ascii"))
    BytesGenerator(buffer, mangle_from_=False, policy=policy).flatten(message)
    return buffer.getvalue()


def for_graph(raw: bytes, recipients: Sequence[str]) -> bytes:
    """The message to hand Graph for these envelope ``recipients`` (see the module docstring).

    Raises MessageError when a To/Cc/Bcc address is not among the recipients.
    """
    wanted = {address.casefold() for address in recipients}
    present = header_recipients(raw)
    extra = [address for address in dict.fromkeys(present) if address.casefold() not in wanted]
    if extra:
        raise MessageError(
            f"the message's headers address {', '.join(extra)}, which are not among its recipients: "
            "Microsoft Graph sends to every To, Cc and Bcc address, so it would reach people its sender "
            "did not send it to",
            hint='Send it through SMTP (transport = "smtp"), whose envelope decides, or give the '
            "message headers that match its recipients.",
        )
    seen = {address.casefold() for address in present}
    missing = [address for address in recipients if address.casefold() not in seen]
    canonical = _LINE_END.sub(b"\r\n", raw)
    try:
        return add_bcc(reencode_quoted_printable(canonical), missing)
    except UnicodeEncodeError:
        raise MessageError(
            f"a recipient address is not ASCII ({', '.join(missing)}); Graph needs it in the headers"
        ) from None
