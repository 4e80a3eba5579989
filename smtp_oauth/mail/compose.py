"""Build an RFC 5322 message from command-line options, and parse the addresses that go in it.

Pure: strings and bytes in, an ``email.message.EmailMessage`` out; no file or network I/O (the
caller reads attachment files and passes their bytes).

What a mail user agent is expected to do, and this module does (RFC 5322, RFC 2045-2047, RFC 6532):

- ``Date`` and ``Message-ID`` are always set; the Message-ID's domain is the sender's, so no DNS
  look-up of this host's name is needed (``email.utils.make_msgid`` would otherwise call
  ``socket.getfqdn()``, which can stall for seconds on a badly configured machine).
- Display names are quoted or RFC 2047-encoded by the email package, never pasted in raw.
- Text is UTF-8; a text body and an HTML part form ``multipart/alternative``; attachments make it
  ``multipart/mixed`` and are base64 (binary-safe whatever their type).
- ``Bcc`` is never written into the message: the caller puts those addresses on the envelope only.
- Non-ASCII addresses are kept as they are (RFC 6531/6532); the SMTP client then needs SMTPUTF8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from email import policy as email_policy
from email.errors import InvalidHeaderDefect, NonASCIILocalPartDefect
from email.headerregistry import Address
from email.message import EmailMessage
from typing import NamedTuple

from smtp_oauth.errors import MessageError
from smtp_oauth.mail.addresses import make_message_id, message_date, unique_addresses

__all__ = [
    "Attachment",
    "build_message",
    "dedupe_addresses",
    "needs_smtputf8",
    "parse_address",
    "parse_addresses",
]

_OCTET_STREAM = ("application", "octet-stream")
# RFC 2046 section 5: message/* and multipart/* parts may not be base64-encoded, and bytes
# attachments always are, so those files go out as opaque octet streams.
_NOT_BASE64_TYPES = frozenset({"message", "multipart"})
_FORBIDDEN_IN_ADDRESS = set(' \t\r\n<>()[],;:"\\')
_ADDRESS_HINT = (
    "An address is name@domain, optionally with a display name: Jane Doe <jane@example.com>. "
    'A display name holding a comma or other punctuation needs quotes: "Doe, Jane" <jane@example.com>.'
)

# cron mails a job's output to the bare user name when MAILTO is not set.
_USER_NAME = re.compile(r"[A-Za-z0-9._-]+")
_LOCAL_USER_HINT = (
    "Mail goes out through Exchange Online, which has no local users: give a full address "
    "(name@domain). For cron, set MAILTO=you@example.com in the crontab."
)


class Attachment(NamedTuple):
    """A file to attach: its name as the recipient will see it, and its bytes.

    A NamedTuple, not a dataclass: ``dataclasses`` (with inspect and ast) would be a tenth of
    send-mail's imports when it hands a message to the relay.
    """

    filename: str
    data: bytes
    content_type: str | None = None  # guessed from the file name when None

    def __repr__(self) -> str:
        size = f"<{len(self.data)} bytes>"
        return f"Attachment(filename={self.filename!r}, data={size}, content_type={self.content_type!r})"

    @property
    def mime_type(self) -> tuple[str, str]:
        """(maintype, subtype): the given type, else guessed from the name, else octet-stream."""
        import mimetypes  # only messages with attachments need it (send-mail's start-up)

        guessed = self.content_type or mimetypes.guess_type(self.filename, strict=False)[0] or ""
        maintype, _, subtype = guessed.lower().partition("/")
        if not (maintype and subtype) or maintype in _NOT_BASE64_TYPES:
            return _OCTET_STREAM
        return maintype, subtype


def _valid_addr_spec(addr_spec: str) -> bool:
    local, at, domain = addr_spec.rpartition("@")
    if not (at and local and domain) or domain.startswith(".") or domain.endswith("."):
        return False
    # A quoted local part ("john doe"@example.com) may hold anything; the domain may not.
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = "x"
    return not (set(local) | set(domain)) & _FORBIDDEN_IN_ADDRESS and "@" not in domain


def parse_addresses(values: Iterable[str], *, what: str = "recipient") -> list[Address]:
    """Every address in ``values``; each value may be a comma-separated RFC 5322 address list.

    ``"Jane Doe <jane@example.com>"``, ``"a@example.com, b@example.com"``, groups
    (``"team: a@x.org, b@x.org;"``; an empty group such as ``undisclosed-recipients:;`` yields
    nothing) and RFC 2047 encoded names are understood. Raises MessageError naming ``what`` and
    the offending text when a value holds something that is not an address.
    """
    addresses: list[Address] = []
    for value in values:
        if not value.strip():
            continue
        try:
            header = email_policy.default.header_factory("To", value)
            parsed = list(header.addresses)
        except Exception:  # the stdlib parser fails in assorted ways on bad input
            # HeaderParseError is the documented one; "x@" raises IndexError and ":;0" AttributeError.
            raise MessageError(f"invalid {what} address: {value.strip()!r}", hint=_ADDRESS_HINT) from None
        # The parser repairs what it can ("a b@x" -> '"a b"@x', drops trailing junk) and records
        # a defect; a repaired address is a guess, so refuse it. Non-ASCII local parts are fine.
        repaired = [
            d
            for d in header.defects
            if isinstance(d, InvalidHeaderDefect) and not isinstance(d, NonASCIILocalPartDefect)
        ]
        invalid = [a for a in parsed if not _valid_addr_spec(a.addr_spec)]
        if repaired or invalid or (not parsed and ":" not in value):
            local = bool(parsed) and all(not a.domain and _USER_NAME.fullmatch(a.username) for a in parsed)
            hint = _LOCAL_USER_HINT if local else _ADDRESS_HINT
            raise MessageError(f"invalid {what} address: {value.strip()!r}", hint=hint)
        addresses.extend(parsed)
    return addresses


def parse_address(value: str, *, what: str = "sender") -> Address:
    """Exactly one address (``--from``, ``-f``); MessageError otherwise."""
    addresses = parse_addresses([value], what=what)
    if len(addresses) != 1:
        raise MessageError(f"expected one {what} address, got {value.strip()!r}", hint=_ADDRESS_HINT)
    return addresses[0]


def dedupe_addresses(addresses: Iterable[Address | str]) -> list[str]:
    """The addr-specs in order, each once, by the one rule of ``mail/addresses.py`` (RFC 5321
    section 2.4: the domain compares case-insensitively, the local part exactly)."""
    return unique_addresses(a.addr_spec if isinstance(a, Address) else a for a in addresses)


def needs_smtputf8(addresses: Iterable[Address | str]) -> bool:
    """True when an address is not ASCII, so the message needs SMTPUTF8 (RFC 6531)."""
    return any(not (a.addr_spec if isinstance(a, Address) else a).isascii() for a in addresses)


def _set_header(message: EmailMessage, name: str, value: str) -> None:
    """Add a header; replace ours when the header may occur only once (Subject, Reply-To...)."""
    if name in message and email_policy.default.header_max_count(name) == 1:
        del message[name]
    try:
        message[name] = value
    except (ValueError, TypeError) as exc:  # CR/LF injection, malformed structured values
        raise MessageError(f"invalid header {name}: {exc}") from None


def build_message(
    *,
    sender: Address,
    to: Sequence[Address] = (),
    cc: Sequence[Address] = (),
    reply_to: Sequence[Address] = (),
    subject: str | None = None,
    text: str | None = None,
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    headers: Sequence[tuple[str, str]] = (),
    date: str | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """A complete MIME message: text, HTML alternative, attachments, and the usual headers.

    Bcc is deliberately not a parameter: blind copies belong on the envelope only.
    """
    message = EmailMessage(policy=email_policy.default)
    message["From"] = sender
    if to:
        message["To"] = list(to)
    if cc:
        message["Cc"] = list(cc)
    if reply_to:
        message["Reply-To"] = list(reply_to)
    if subject is not None:
        _set_header(message, "Subject", " ".join(subject.splitlines()))
    message["Date"] = date or message_date()
    message["Message-ID"] = message_id or make_message_id(sender.addr_spec)
    for name, value in headers:
        _set_header(message, name, value)

    if html is not None and text:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")

    for attachment in attachments:
        maintype, subtype = attachment.mime_type
        # Bytes content is always base64: binary-safe, whatever the guessed type says.
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return message
