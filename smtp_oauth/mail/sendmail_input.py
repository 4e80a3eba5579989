"""sendmail input: read a message from stdin, take recipients from its headers, tidy its headers.

Pure functions over bytes, so 8-bit bodies go out exactly as they came in (a parse/re-serialise
round trip through the email package would re-wrap and re-encode them).

Conventions followed (Postfix sendmail(1), https://www.postfix.org/sendmail.1.html, and msmtp,
https://marlam.de/msmtp/msmtp.html):

- Input ends at EOF, or, unless ``-i``/``-oi`` is given, at a line holding only ``.``.
- LF, CRLF (and stray CR) line endings are all accepted; what is sent uses CRLF (RFC 5321 2.3.8).
- A leading mbox ``From `` line is not a header and is dropped.
- The header section ends at the first empty line, or at the first line that is not a header
  field; in the second case an empty line is inserted so that line starts the body.
- ``-t``: recipients are the addresses in To, Cc and Bcc, or, when the message has ``Resent-``
  headers (it is being forwarded), in Resent-To, Resent-Cc and Resent-Bcc; plus the command-line
  recipients (Postfix >= 2.1).
- Bcc and Resent-Bcc are always removed; From, Date and Message-ID are added when missing.
- A From header naming only a local user (cron's ``From: "(Cron Daemon)" <root>``) is replaced by
  the sender's address with the same name: Postfix would append its own domain, but Exchange
  Online sends only as the mailbox (or one it may SendAs), so the unqualified name cannot go out.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Sequence
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from typing import NamedTuple

from smtp_oauth.mail.addresses import make_message_id, message_date
from smtp_oauth.mail.compose import dedupe_addresses, needs_smtputf8, parse_addresses

__all__ = [
    "PreparedMessage",
    "header_recipients",
    "prepare_message",
    "read_message",
    "split_message",
    "to_crlf",
]

CRLF = b"\r\n"
_DOT_LINES = frozenset({b".", b".\n", b".\r\n"})
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# RFC 5322 3.6.8 field name (printable ASCII except ':'), with obsolete white space before ':'.
_FIELD_START = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_RECIPIENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
_BLIND_FIELDS = frozenset({"bcc", "resent-bcc"})
_LOCAL_PART = re.compile(r"[A-Za-z0-9._+-]+")  # a Unix user name, as cron and at(1) put in From


def read_message(lines: Iterable[bytes], *, ignore_dots: bool) -> bytes:
    """The message from ``lines`` (e.g. ``sys.stdin.buffer``), up to EOF or a lone ``.`` line.

    Stops reading at the dot line, as Postfix does, so a writer that sends ``.`` and waits is
    not left hanging.
    """
    chunks: list[bytes] = []
    for line in lines:
        if not ignore_dots and line in _DOT_LINES:
            break
        chunks.append(line)
    return b"".join(chunks)


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, and a final CRLF if the data does not end with one."""
    normalised = _LINE_BREAK.sub(CRLF, data)
    if normalised and not normalised.endswith(CRLF):
        normalised += CRLF
    return normalised


def _field_name(header_field: bytes) -> str:
    match = _FIELD_START.match(header_field)
    return match.group(1).decode("ascii").lower() if match else ""


def _field_value(header_field: bytes) -> str:
    """The unfolded value, decoded as UTF-8 (RFC 6532) with undecodable bytes replaced."""
    value = header_field.split(b":", 1)[1]
    return _LINE_BREAK.sub(b"", value).decode("utf-8", errors="replace").strip()


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, body) of CRLF-terminated ``data``; each field keeps its folded lines.

    The empty line that separates them belongs to neither.
    """
    lines = data.splitlines(keepends=True)
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]  # mbox envelope line, not a header (Postfix drops it too)
    fields: list[bytes] = []
    for index, line in enumerate(lines):
        if line in (CRLF, b"\n"):
            return fields, b"".join(lines[index + 1 :])
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_START.match(line):
            fields.append(line)
        else:
            return fields, b"".join(lines[index:])
    return fields, b""


def header_recipients(fields: Sequence[bytes]) -> list[Address]:
    """The addresses ``-t`` sends to: To/Cc/Bcc, or Resent-To/Cc/Bcc when Resent- headers exist.

    Raises MessageError naming the field whose value is not an address list.
    """
    names = [_field_name(f) for f in fields]
    resent = any(name.startswith("resent-") for name in names)
    wanted = _RESENT_RECIPIENT_FIELDS if resent else _RECIPIENT_FIELDS
    addresses: list[Address] = []
    for name, header_field in zip(names, fields, strict=True):
        if name in wanted:
            addresses += parse_addresses([_field_value(header_field)], what=f"{name.title()} header")
    return addresses


def _local_from(fields: Sequence[bytes]) -> str | None:
    """The display name of a single From header naming only a local user (no domain), else None."""
    values = [_field_value(f) for f in fields if _field_name(f) == "from"]
    if len(values) != 1:
        return None
    addresses = email.utils.getaddresses(values)
    if len(addresses) != 1:
        return None
    name, address = addresses[0]
    if not address or "@" in address or not _LOCAL_PART.fullmatch(address):
        return None
    return " ".join(name.split())  # one line: a name is never a place for a second header


def _render_fields(values: Sequence[tuple[str, str | Address]]) -> bytes:
    """Header fields as CRLF-terminated bytes, RFC 2047-encoded or UTF-8 as the addresses need."""
    addresses = [v for _, v in values if isinstance(v, Address)]
    policy = email_policy.SMTPUTF8 if needs_smtputf8(addresses) else email_policy.SMTP
    message = EmailMessage(policy=policy)
    for name, value in values:
        message[name] = value
    rendered = message.as_bytes()
    return rendered[: -len(CRLF)] if rendered.endswith(CRLF + CRLF) else rendered


class PreparedMessage(NamedTuple):
    """A message ready for ``Mailer.send(data, sender=..., recipients=...)`` (NamedTuple: see Attachment)."""

    data: bytes
    sender: str
    recipients: list[str]
    added_headers: list[str]  # names of the fields we added (From, Date, Message-ID)

    def __repr__(self) -> str:
        return (
            f"PreparedMessage(data=<{len(self.data)} bytes>, sender={self.sender!r}, "
            f"recipients={self.recipients!r}, added_headers={self.added_headers!r})"
        )


def prepare_message(
    raw: bytes,
    *,
    envelope_sender: Address,
    recipients: Sequence[Address] = (),
    read_recipients: bool = False,
    from_address: Address | None = None,
) -> PreparedMessage:
    """What sendmail does to a message between reading it and handing it to SMTP.

    ``from_address`` is used for a missing From header (``-F``/``-f`` or ``--from``), default the
    envelope sender. Recipients are ``recipients`` plus, with ``read_recipients`` (``-t``), those
    of the headers. The result may have no recipients; the caller decides that is an error.
    """
    fields, body = split_message(to_crlf(raw))
    envelope: list[Address] = []
    if read_recipients:
        envelope += header_recipients(fields)
    envelope += recipients

    author = from_address or envelope_sender
    local_from = _local_from(fields)
    if local_from is not None:
        fields = [f for f in fields if _field_name(f) != "from"]
        author = Address(local_from or author.display_name, author.username, author.domain)
    names = {_field_name(f) for f in fields}
    missing: list[tuple[str, str | Address]] = []
    if "from" not in names:
        missing.append(("From", author))
    if "date" not in names:
        missing.append(("Date", message_date()))
    if "message-id" not in names:
        missing.append(("Message-ID", make_message_id(envelope_sender.addr_spec)))

    kept = [f for f in fields if _field_name(f) not in _BLIND_FIELDS]
    header_block = b"".join(kept) + (_render_fields(missing) if missing else b"")
    return PreparedMessage(
        data=header_block + CRLF + body,
        sender=envelope_sender.addr_spec,
        recipients=dedupe_addresses(envelope),
        added_headers=[name for name, _ in missing],
    )
