"""The envelope of a message: who it is from and to, worked out before any connection is made.

For an EmailMessage the recipients come from To, Cc and Bcc, and the message is copied without Bcc
(and Resent-Bcc), with From, Date and Message-ID added when missing: the caller's object is never
changed. Raw bytes (``sendmail -t`` output, the relay's spool) are sent as they are, to the
recipients given. Every address is checked here, so a bad one is a MessageError before a token is
fetched or a connection opened.
"""

from __future__ import annotations

import copy
import email.utils
import re
from collections.abc import Sequence
from email.message import EmailMessage
from typing import NamedTuple

from smtp_oauth.errors import MessageError
from smtp_oauth.mail.addresses import make_message_id, message_date, unique_addresses
from smtp_oauth.mail.headers import read_headers

__all__ = ["Envelope", "build_envelope"]


class Envelope(NamedTuple):
    """What one transaction sends: envelope sender, recipients, and the message (Bcc already gone).

    A NamedTuple, not a dataclass: send-mail's stdlib path does not pay for ``dataclasses``' import.
    """

    sender: str
    recipients: Sequence[str]
    message: EmailMessage | bytes


_ADDRESS = re.compile(r"^[^\s@<>\"]+@[^\s@<>\"]+$")
_RECIPIENT_HEADERS = ("To", "Cc", "Bcc")


def _bare_address(text: str, *, what: str) -> str:
    """``Name <a@b>`` or ``a@b`` as ``a@b``; MessageError for anything that is not one address."""
    _, address = email.utils.parseaddr(text)
    address = address or text.strip()
    if not _ADDRESS.match(address):
        raise MessageError(f"invalid {what} address {text!r}")
    return address


def _header_recipients(message: EmailMessage) -> list[str]:
    found: list[str] = []
    for name in _RECIPIENT_HEADERS:
        values = [str(value) for value in message.get_all(name, [])]
        for _display, address in email.utils.getaddresses(values):
            if address:  # an empty group ("undisclosed-recipients:;") names nobody
                found.append(_bare_address(address, what=f"{name}:"))
    return found


def _prepared_message(message: EmailMessage, sender: str) -> EmailMessage:
    """A copy without Bcc, with From, Date and Message-ID filled in when missing."""
    prepared = copy.deepcopy(message)  # a shallow copy shares the header list: adding to it would leak back
    del prepared["Bcc"]
    del prepared["Resent-Bcc"]
    if prepared["From"] is None:
        prepared["From"] = sender
    if prepared["Date"] is None:
        prepared["Date"] = message_date()
    if prepared["Message-ID"] is None:
        prepared["Message-ID"] = make_message_id(sender)
    return prepared


def _raw_message_id(data: bytes) -> str | None:
    """The Message-ID of a raw message, read as the relay reads it (``mail/headers.py``)."""
    return read_headers(data).message_id


def build_envelope(
    message: EmailMessage | bytes,
    *,
    sender: str | None,
    recipients: Sequence[str] | None,
    default_sender: str,
) -> tuple[Envelope, str | None]:
    """The envelope to send and the message's Message-ID. Raises MessageError for bad addresses."""
    envelope_sender = _bare_address(sender or default_sender, what="sender")
    if isinstance(message, bytes | bytearray):
        raw = bytes(message)
        targets = list(recipients or [])
        message_id = _raw_message_id(raw)
        body: EmailMessage | bytes = raw
    elif isinstance(message, EmailMessage):
        targets = list(recipients) if recipients is not None else _header_recipients(message)
        body = _prepared_message(message, envelope_sender)
        message_id = str(body["Message-ID"]).strip()
    else:
        raise TypeError(f"message must be an EmailMessage or bytes, not {type(message).__name__}")
    addresses = unique_addresses(_bare_address(target, what="recipient") for target in targets)
    if not addresses:
        raise MessageError("the message has no recipients (give recipients= or To/Cc/Bcc headers)")
    return Envelope(sender=envelope_sender, recipients=addresses, message=body), message_id
