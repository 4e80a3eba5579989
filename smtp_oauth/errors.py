"""The exceptions smtp-oauth raises, and what each one means for the person reading it.

No exception of msal, requests, aiosmtplib, httpx or pydantic leaves the library: they are turned
into these at one boundary each (``settings/``, ``tokens/msal_errors.py``, ``smtp/errors.py`` with
``smtp/replies.py``, ``graph/errors.py``)::

    SmtpOAuthError                    base; .temporary, .kind, .explain()          kind
     +-- ConfigurationError           bad/missing settings (file, key)             config
     +-- StorageFullError             the local disk is full: try again later      temporary
     +-- TokenError                   the identity platform refused or was unreachable
     |                                (.error, .aadsts_code, .correlation_id)      denied, or temporary
     +-- DeliveryError                the mail service said no, or could not be reached
          |                           (.code, .enhanced_status, .text: SMTP replies only;
          |                           .retry_after: seconds the service asked to wait)
          +-- TemporaryDeliveryError  4xx, network, timeouts: retry later          temporary
          |    +-- DeliveryConnectionError  cannot connect, or the connection dropped;
          |    |                            also a ConnectionError (an OSError)
          |    +-- DeliveryTimeoutError     the service did not answer in time; also a TimeoutError
          +-- PermanentDeliveryError  5xx: retrying the same message won't help    permanent
          |    +-- MessageError       the message itself is unusable               message
          +-- AuthenticationError     535 / 530 on AUTH: the token was refused     denied

As aiosmtplib's errors do, the connection and timeout failures are also the builtin
exceptions they are, so ``except TimeoutError`` around a send sees a timeout of ours too: code that
catches ``OSError`` near a send catches ``SmtpOAuthError`` first.

``kind`` says what sort of failure it is; what a command does with it (its exit status) is the
command's business: ``smtp_oauth/cli/exit_codes.py`` maps each kind to a sysexits code.

``explain()`` returns the cause and the fix. What Exchange Online's replies and Entra ID's AADSTS
codes mean is kept with the code that meets them (``smtp/hints.py``, ``tokens/hints.py``), which
attaches the hint where it raises. A hint is a template, filled in with the user's ids from
``context`` (``tenant_id``, ``client_id``, ``mailbox``) when it is shown: ``fill_hint``.

This module imports nothing from smtp_oauth.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryConnectionError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "FailureKind",
    "MessageError",
    "PermanentDeliveryError",
    "SmtpOAuthError",
    "StorageFullError",
    "TemporaryDeliveryError",
    "TokenError",
    "fill_hint",
]


class FailureKind(enum.StrEnum):
    """What sort of failure an error is; each command maps a kind to its exit status."""

    TEMPORARY = "temporary"  # trying again later may work (4xx, network, a busy service, a full disk)
    CONFIG = "config"  # the settings are missing or wrong
    PERMANENT = "permanent"  # the service refused for good (5xx)
    MESSAGE = "message"  # the message or an address in it is unusable
    DENIED = "denied"  # authentication or authorization was refused
    INPUT = "input"  # an input file is missing or unreadable
    SOFTWARE = "software"  # a bug of ours, or a state the code did not expect


_PLACEHOLDERS = {
    "tenant_id": "<tenant-id>",
    "client_id": "<client-id>",
    "mailbox": "<mailbox>",
    # Known from an app-only token's oid claim (smtp-oauth check fills them in).
    "enterprise_app_object_id": "<enterprise-app-object-id>",
    "service_principal_id": "<service-principal-id>",
}


# A placeholder is a lower-case name in braces; other braces in a hint (a TOML example) are text.
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def fill_hint(template: str, context: Mapping[str, str]) -> str:
    """``template`` with its ``{placeholders}`` filled from ``context`` (a readable stand-in if unknown)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return context.get(name) or _PLACEHOLDERS.get(name, f"<{name}>")

    return _PLACEHOLDER.sub(value, template)


class SmtpOAuthError(Exception):
    """Base class of every error smtp-oauth raises."""

    temporary: bool = False
    kind: FailureKind = FailureKind.SOFTWARE

    def __init__(self, message: str, *, context: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, str] = dict(context or {})

    def explain(self) -> str | None:
        """Cause and fix in a sentence or two, or None when there is nothing to add."""
        return None

    def __str__(self) -> str:
        return self.message


class ConfigurationError(SmtpOAuthError):
    """The settings are missing, unreadable or invalid; names the file and the key."""

    kind = FailureKind.CONFIG

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        hint: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.file = file
        self.key = key
        self.hint = hint

    def explain(self) -> str | None:
        return self.hint


class StorageFullError(SmtpOAuthError):
    """Local storage (the relay's spool) has no room: temporary, a restart later will work."""

    temporary = True
    kind = FailureKind.TEMPORARY

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def explain(self) -> str | None:
        return self.hint


class TokenError(SmtpOAuthError):
    """The Microsoft identity platform refused to issue a token, or could not be reached."""

    kind = FailureKind.DENIED

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        aadsts_code: int | None = None,
        description: str | None = None,
        correlation_id: str | None = None,
        temporary: bool = False,
        context: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.error = error
        self.hint = hint  # what to do: the AADSTS table's entry (tokens/hints.py), or what the raiser knows
        self.aadsts_code = aadsts_code
        self.description = description
        self.correlation_id = correlation_id
        self.temporary = temporary
        if temporary:
            self.kind = FailureKind.TEMPORARY

    def explain(self) -> str | None:  # one early return per kind of failure
        if self.hint:
            return fill_hint(self.hint, self.context)
        if self.error == "untrusted_certificate":
            return (
                "The identity provider's TLS certificate is not trusted. Behind a TLS-inspecting proxy, "
                "or for a private or test identity provider, set identity.ca_file to the PEM bundle of "
                "the CA that signed it."
            )
        if self.temporary:
            return "The identity provider could not be reached or is busy; try again later."
        if self.error == "invalid_grant":
            return "The saved sign-in is no longer valid. Sign in again with `smtp-oauth login`."
        if self.error in {"interaction_required", "no_cached_token"}:
            return "No usable sign-in is cached. Run `smtp-oauth login` first."
        return None


def _parse_enhanced(text: str) -> str | None:
    match = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", text)
    return match.group(1) if match else None


class DeliveryError(SmtpOAuthError):
    """The SMTP server refused, or could not be reached (``code`` is None then)."""

    kind = FailureKind.PERMANENT

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        text: str = "",
        enhanced_status: str | None = None,
        recipients: Mapping[str, tuple[int, str]] | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.code = code
        self.text = text
        self.enhanced_status = enhanced_status or _parse_enhanced(text)
        # For failures of individual recipients: address -> (code, text).
        self.recipients: dict[str, tuple[int, str]] = dict(recipients or {})
        # The cause and fix, attached where the error is raised: the reply table's entry
        # (smtp/hints.py), or what the raiser knows (TLS, STARTTLS or XOAUTH2 not offered).
        self.hint = hint
        # Seconds the service asked us to wait before trying again (HTTP Retry-After), if it said.
        self.retry_after = retry_after

    @property
    def reply(self) -> str:
        """The server's reply as one line (``535 5.7.3 Authentication unsuccessful``), or ''."""
        return f"{self.code} {self.text}".strip() if self.code is not None else ""

    def explain(self) -> str | None:
        return fill_hint(self.hint, self.context) if self.hint is not None else None


class TemporaryDeliveryError(DeliveryError):
    """A 4xx reply, a dropped connection or a timeout: the same message may go through later."""

    temporary = True
    kind = FailureKind.TEMPORARY

    def explain(self) -> str | None:
        hint = super().explain()
        if hint is None and self.code is None:
            return "The SMTP server could not be reached; check the host, port, firewall and proxy."
        return hint


class DeliveryConnectionError(TemporaryDeliveryError, ConnectionError):
    """The mail service could not be connected to, or dropped the connection: try again later."""


class DeliveryTimeoutError(TemporaryDeliveryError, TimeoutError):
    """The mail service did not answer in time: try again later."""


class PermanentDeliveryError(DeliveryError):
    """A 5xx reply: sending the same message again will fail the same way."""


class MessageError(PermanentDeliveryError):
    """The message or an address in it is unusable (bad syntax, no recipients)."""

    kind = FailureKind.MESSAGE


class AuthenticationError(DeliveryError):
    """AUTH XOAUTH2 was refused even with a freshly issued token."""

    kind = FailureKind.DENIED
