"""One rule for when two addresses are the same, and one maker of Message-ID and Date fields.

Equality (RFC 5321 section 2.4): the domain is case-insensitive, the local part may not be, so
``John@Example.com`` and ``john@example.com`` are two recipients (both are sent; a server that
treats them as one mailbox, as Exchange Online does, delivers once) and ``john@EXAMPLE.com`` is
the second of them again. send-mail's recipient list and every envelope use this rule.

Message-ID (RFC 5322 section 3.6.4) and Date (section 3.3) for every message we write: composed
mail, envelopes filled in, bounces, test messages, mailed log records. The Message-ID's domain is
the sender's, in its ASCII (IDNA) form, or ``localhost``; never a DNS look-up of this host's name,
which ``email.utils.make_msgid`` does when given no domain.

Standard library only, and light: send-mail's start-up imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from email.utils import format_datetime, make_msgid

__all__ = ["address_key", "make_message_id", "message_date", "same_address", "unique_addresses"]


def address_key(address: str) -> str:
    """What two addresses share when they are the same: the local part as written, the domain casefolded."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.casefold()}" if at else address


def same_address(first: str, second: str) -> bool:
    """Whether ``first`` and ``second`` name the same mailbox (RFC 5321 section 2.4)."""
    return address_key(first) == address_key(second)


def unique_addresses(addresses: Iterable[str]) -> list[str]:
    """``addresses`` in order, each once; the first spelling of a repeated one is kept."""
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address_key(address), address)
    return list(seen.values())


def _message_id_domain(sender: str) -> str:
    _, at, domain = sender.rpartition("@")
    domain = domain.strip("[]") if at else ""
    domain = domain or "localhost"
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"


def make_message_id(sender: str, *, prefix: str | None = None) -> str:
    """A unique ``<...@sender-domain>`` Message-ID; ``prefix`` marks its kind (``ndr`` for a bounce)."""
    return make_msgid(prefix, domain=_message_id_domain(sender))


def message_date(when: datetime | float | None = None) -> str:
    """An RFC 5322 date in local time with its UTC offset, as MUAs write it (``when``: now, a
    datetime, or a POSIX timestamp)."""
    moment = datetime.fromtimestamp(when) if isinstance(when, int | float) else (when or datetime.now())
    return format_datetime(moment.astimezone())
