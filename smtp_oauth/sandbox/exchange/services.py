"""The submission services the fake server can play: Exchange Online, HVE, ACS, and their rules.

- ``exchange``: Exchange Online SMTP AUTH (``smtp.office365.com``): the authenticated mailbox is the
  only sender (``550 5.7.60``), 500 recipients a message.
- ``hve``: Microsoft 365 High Volume Email (``smtp.hve.mx.microsoft``). MAIL FROM must be the HVE
  account (``550 5.7.62``), so must the From: header (``550 5.6.241``); recipients outside the
  organisation are refused (``550 5.5.105``, internal only since June 2025); a token in its last
  ten minutes is refused at AUTH (``535 5.7.142``, "token will expire soon").
- ``acs``: Azure Communication Services Email (``smtp.azurecomm.net``). ``user=`` is an SMTP
  username (``<resource>|<app id>|<tenant id>``) bound to one app, the token's audience is
  ``https://communication.azure.com``, MAIL FROM and From: must be a sender address of the email
  domain, 50 recipients a message.
Sources: https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/high-volume-mails-m365
(HVE; its reply codes as deployed relays report them) and
https://learn.microsoft.com/en-us/azure/communication-services/quickstarts/email/send-email-smtp/send-email-smtp-oauth
(ACS XOAUTH2), .../concepts/service-limits (ACS limits).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ACS_AUDIENCE", "SERVICE_NAMES", "ServiceRules"]

SERVICE_NAMES = ("exchange", "hve", "acs")
ACS_AUDIENCE = "https://communication.azure.com"
HVE_TOKEN_MARGIN = 600.0  # seconds: HVE refuses tokens that expire sooner than this

HVE_EXPIRES_SOON = "535 5.7.142 Authentication unsuccessful: the token will expire soon"
HVE_MAIL_FROM = "550 5.7.62 SMTP; the sender must be the authenticated HVE account"
HVE_HEADER_FROM = "550 5.6.241 The From header must be the authenticated HVE account"
HVE_EXTERNAL = "550 5.5.105 High Volume Email delivers only to recipients inside the organization"
ACS_SENDER = "550 5.7.1 The sender address is not a sender of the configured email domain"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"


@dataclass(frozen=True)
class ServiceRules:
    """What one service refuses; ``None`` from a method means "accepted"."""

    name: str = "exchange"
    max_recipients: int = 500
    internal_domains: frozenset[str] = frozenset()  # hve: the organisation's accepted domains
    senders: frozenset[str] = field(default_factory=frozenset)  # acs: MailFrom addresses

    @classmethod
    def of(cls, name: str, *, mailboxes: Iterable[str] = (), senders: Iterable[str] = ()) -> ServiceRules:
        if name not in SERVICE_NAMES:
            raise ValueError(f"service must be one of {', '.join(SERVICE_NAMES)}, not {name!r}")
        domains = frozenset(address.rpartition("@")[2].casefold() for address in mailboxes if "@" in address)
        return cls(
            name=name,
            max_recipients=50 if name == "acs" else 500,
            internal_domains=domains,
            senders=frozenset(address.casefold() for address in senders),
        )

    def auth_refusal(self, expires_at: float) -> str | None:
        if self.name == "hve" and expires_at - time.time() < HVE_TOKEN_MARGIN:
            return HVE_EXPIRES_SOON
        return None

    def sender_refusal(self, mailbox: str, address: str, *, header: bool) -> str | None:
        """MAIL FROM (``header=False``) or a From: address, for the authenticated ``mailbox``."""
        if self.name == "acs":
            return None if address.casefold() in self.senders else ACS_SENDER
        if address.casefold() == mailbox.casefold():
            return None
        if self.name == "hve":
            return HVE_HEADER_FROM if header else HVE_MAIL_FROM
        return "550 5.7.60 SMTP; Client does not have permissions to send as this sender"

    def recipient_refusal(self, address: str, count: int) -> str | None:
        """``count``: recipients already accepted for this message."""
        if count >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        domain = address.rpartition("@")[2].casefold()
        if self.name == "hve" and domain not in self.internal_domains:
            return HVE_EXTERNAL
        return None
