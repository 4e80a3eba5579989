"""The exceptions smtp-oauth raises, and what each one means for the person reading it.

No exception of msal, requests, aiosmtplib or pydantic leaves the library: they are turned into
these at one boundary each (``settings.py``, ``tokens.py``, ``sender.py``)::

    SmtpOAuthError                    base; .temporary, .kind, .explain()          kind
     +-- ConfigurationError           bad/missing settings (file, key)             config
     +-- StorageFullError             the local disk is full: try again later      temporary
     +-- TokenError                   the identity platform refused or was unreachable
     |                                (.error, .aadsts_code, .correlation_id)      denied, or temporary
     +-- DeliveryError                the mail service said no, or could not be reached
          |                           (.code, .enhanced_status, .text: SMTP replies only;
          |                           .retry_after: seconds the service asked to wait)
          +-- TemporaryDeliveryError  4xx, network, timeouts: retry later          temporary
          +-- PermanentDeliveryError  5xx: retrying the same message won't help    permanent
          |    +-- MessageError       the message itself is unusable               message
          +-- AuthenticationError     535 / 530 on AUTH: the token was refused     denied

``kind`` says what sort of failure it is; what a command does with it (its exit status) is the
command's business: ``smtp_oauth/cli/exit_codes.py`` maps each kind to a sysexits code.

``explain()`` returns the cause and the fix for the replies and AADSTS codes Exchange Online and
Entra ID are known to send (sources: https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements,
https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes). Hints can be
filled in with the user's ids through ``context`` (``tenant_id``, ``client_id``, ``mailbox``).

This module imports nothing from smtp_oauth.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryError",
    "FailureKind",
    "MessageError",
    "PermanentDeliveryError",
    "SmtpOAuthError",
    "StorageFullError",
    "TemporaryDeliveryError",
    "TokenError",
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


class _HintContext(dict[str, str]):
    """Fills unknown ``{placeholders}`` with a readable stand-in instead of failing."""

    def __missing__(self, key: str) -> str:
        return _PLACEHOLDERS.get(key, f"<{key}>")


def _fill(template: str, context: Mapping[str, str]) -> str:
    return template.format_map(_HintContext(context))


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


# AADSTS code -> cause and fix. Doc texts abridged from Microsoft's reference-error-codes page.
_AADSTS_HINTS: dict[int, str] = {
    7000215: (
        "The client secret is wrong (AADSTS7000215). Copy the secret's *Value* (not its Secret ID) "
        "from Entra admin center > App registrations > {client_id} > Certificates & secrets into "
        "identity.client_secret."
    ),
    7000222: (
        "The client secret has expired (AADSTS7000222). Create a new secret under App registrations > "
        "{client_id} > Certificates & secrets and update identity.client_secret."
    ),
    700016: (
        "No application {client_id} exists in tenant {tenant_id} (AADSTS700016). Check identity.client_id "
        "and identity.tenant_id, and that the app is registered (or consented) in that tenant."
    ),
    90002: (
        "Tenant {tenant_id} was not found (AADSTS90002). Check identity.tenant_id (a GUID or a "
        "domain like contoso.onmicrosoft.com) and identity.cloud (global, usgov, china)."
    ),
    65001: (
        "Nobody has consented to the app's permissions (AADSTS65001). An admin can grant consent at "
        "https://login.microsoftonline.com/{tenant_id}/adminconsent?client_id={client_id}"
    ),
    50076: (
        "Multi-factor authentication is required (AADSTS50076). Username/password sign-in cannot do MFA: "
        "use `smtp-oauth login` (device code or interactive) or client credentials."
    ),
    700082: (
        "The refresh token expired after a long time unused (AADSTS700082). Sign in again with "
        "`smtp-oauth login`."
    ),
    70043: (
        "The refresh token is no longer valid under a Conditional Access sign-in frequency policy "
        "(AADSTS70043). Sign in again with `smtp-oauth login`."
    ),
    70000: (
        "The grant (refresh token or code) is invalid or was revoked (AADSTS70000). Sign in again with "
        "`smtp-oauth login`."
    ),
    50173: "The grant was revoked (AADSTS50173). Sign in again with `smtp-oauth login`.",
    500011: (
        "The resource principal (Office 365 Exchange Online) was not found in tenant {tenant_id} "
        "(AADSTS500011): the tenant has no Exchange Online, or the wrong cloud is configured "
        "(identity.cloud)."
    ),
    53003: (
        "A Conditional Access policy blocked the sign-in (AADSTS53003). Ask an admin to exclude this "
        "app or account from the policy, or to allow this location/device."
    ),
    7000218: (
        "The token request carried no credential (AADSTS7000218): set identity.client_secret or "
        "identity.certificate_path, or enable 'Allow public client flows' for delegated sign-in."
    ),
    500133: (
        "The user's access token has expired (AADSTS500133): on-behalf-of can only exchange a token that "
        "is still valid. The calling client must get a new token for this API and call again."
    ),
    500131: (
        "The user's token was not issued for this app (AADSTS500131): its audience must be application "
        "{client_id} (or api://{client_id}). The calling client must request a token for this API's scope."
    ),
    50013: (
        "The user's token failed validation (AADSTS50013: bad signature, or another tenant's key): only "
        "tokens Entra issued for this API can be exchanged on-behalf-of the user."
    ),
    50027: (
        "The user's token is not a valid JWT (AADSTS50027): pass the access token exactly as the caller "
        "sent it (without the 'Bearer ' prefix)."
    ),
    700025: (
        "The app is a public client and must not send a secret (AADSTS700025): remove "
        "identity.client_secret for delegated flows."
    ),
}


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
        self.hint = hint  # what to do, when the AADSTS table has nothing better
        self.aadsts_code = aadsts_code
        self.description = description
        self.correlation_id = correlation_id
        self.temporary = temporary
        if temporary:
            self.kind = FailureKind.TEMPORARY

    def explain(self) -> str | None:  # noqa: PLR0911  # one early return per kind of failure
        if self.aadsts_code in _AADSTS_HINTS:
            return _fill(_AADSTS_HINTS[self.aadsts_code], self.context)
        if self.hint:
            return self.hint
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


def aadsts_code_of(text: str | None) -> int | None:
    """The number of the first ``AADSTS<n>`` in an Entra error description, if any."""
    if not text:
        return None
    match = re.search(r"AADSTS(\d+)", text)
    return int(match.group(1)) if match else None


# (reply code, enhanced status or None, a substring of the text or None) -> hint. First match wins.
_REPLY_HINTS: list[tuple[int | None, str | None, str | None, str]] = [
    (
        535,
        "5.7.139",
        None,
        "SMTP AUTH is disabled for this mailbox or tenant (5.7.139). Enable it in Exchange Online "
        "PowerShell: Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false "
        "(tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false). Security defaults "
        "or a Conditional Access policy blocking legacy authentication can also cause it. "
        "See https://aka.ms/smtp_auth_disabled",
    ),
    (
        535,
        "5.7.3",
        None,
        "Exchange Online refused the token (5.7.3). Check that smtp.username is the mailbox the token "
        "may send as; for client credentials that the service principal is registered "
        "(New-ServicePrincipal -AppId {client_id} -ObjectId {enterprise_app_object_id}) and has "
        "Add-MailboxPermission -Identity {mailbox} -User {service_principal_id} -AccessRights FullAccess; "
        "and that the token's audience is Exchange Online (see `smtp-oauth token --claims`).",
    ),
    (
        550,
        "5.7.60",
        None,
        "The mailbox {mailbox} may not send as this sender (5.7.60). Send from {mailbox} itself, or grant "
        "it SendAs: Add-RecipientPermission -Identity <sender> -Trustee {mailbox} -AccessRights SendAs.",
    ),
    (
        None,
        None,
        "SendAsDenied",
        "The mailbox {mailbox} may not send as this sender (SendAsDenied). Send from {mailbox} itself, "
        "or grant it SendAs: Add-RecipientPermission -Identity <sender> -Trustee {mailbox} "
        "-AccessRights SendAs.",
    ),
    (
        None,
        None,
        "MapiExceptionLogonFailed",
        "Exchange Online could not log on to mailbox {mailbox} for this app (MapiExceptionLogonFailed): "
        "grant the service principal access: Add-MailboxPermission -Identity {mailbox} "
        "-User {service_principal_id} -AccessRights FullAccess.",
    ),
    (
        535,
        "5.7.142",
        None,
        "The server refused the token because it expires within minutes (5.7.142); smtp-oauth asked for a "
        "new one and retried. If it keeps happening, check this machine's clock (NTP); with "
        'smtp.service = "hve" tokens are replaced 20 minutes before they expire.',
    ),
    (
        501,
        "5.5.127",
        None,
        "The server says the token will expire soon (501 5.5.127): a new token is fetched and the message "
        "retried. If it persists, check this machine's clock (NTP).",
    ),
    (
        535,
        "5.7.143",
        None,
        "The token had expired when the server checked it (5.7.143): check this machine's clock (NTP); "
        "a new token is fetched on the next attempt.",
    ),
    (
        535,
        "5.7.144",
        None,
        "The app lacks the permission High Volume Email requires (5.7.144): give app {client_id} the "
        "Office 365 Exchange Online application permission Mail.Send with admin consent, and allow it on "
        "the HVE account: Add-HVEAppAccess -Identity {mailbox} -AppIds {client_id}.",
    ),
    (
        550,
        "5.7.240",
        None,
        "App {client_id} is not allowed to use the HVE account {mailbox} (5.7.240): "
        "Add-HVEAppAccess -Identity {mailbox} -AppIds {client_id} (up to 10 apps; takes about 5 minutes).",
    ),
    (
        550,
        "5.7.62",
        None,
        "High Volume Email sends only as the HVE account itself (5.7.62): the envelope sender (MAIL FROM, "
        "send-mail -f) must be {mailbox}.",
    ),
    (
        550,
        "5.6.241",
        None,
        "High Volume Email requires the From: header to be the HVE account {mailbox} (5.6.241): rewrite "
        "From: to {mailbox}, or send from another service.",
    ),
    (
        550,
        "5.5.105",
        None,
        "High Volume Email delivers only to recipients inside your organization (5.5.105): send external "
        'mail through Exchange Online or Azure Communication Services (smtp.service = "acs").',
    ),
    (
        432,
        "4.3.2",
        None,
        "Exchange Online allows 3 concurrent SMTP sessions per mailbox (432 4.3.2); this one was over the "
        "limit. Retry later, or send through `smtp-oauth relay`, which keeps within it.",
    ),
    (
        554,
        "5.2.0",
        "SubmissionQuotaExceeded",
        "The mailbox reached Exchange Online's limit of 10,000 recipients per day "
        "(SubmissionQuotaExceededException). Wait up to 24 hours, or spread sending over several mailboxes.",
    ),
    (
        554,
        "5.2.2",
        None,
        "The sending mailbox is full (5.2.2): mail sent with SMTP AUTH is saved in Sent Items. "
        "Clean up {mailbox} or raise its quota.",
    ),
    (
        550,
        "5.7.30",
        None,
        "Basic authentication is not supported for client submission any more (5.7.30). smtp-oauth "
        "uses OAuth; if you see this, a program is still sending with a password directly: point it at "
        "`smtp-oauth relay` or `send-mail`.",
    ),
    (
        530,
        "5.7.57",
        None,
        "The server requires authentication before MAIL FROM (5.7.57): the session was not "
        "authenticated. Check that AUTH XOAUTH2 succeeded (run `smtp-oauth check`).",
    ),
    (
        None,
        None,
        "Token will expire soon",
        "The server rejected a token close to its expiry; smtp-oauth refreshes tokens 10 minutes "
        "early, so check the machine's clock.",
    ),
    (
        552,
        None,
        None,
        "The message is larger than the server accepts. Send smaller attachments or a link.",
    ),
]


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
        # A cause known where the error is raised (TLS, STARTTLS or XOAUTH2 not offered): wins over the table.
        self.hint = hint
        # Seconds the service asked us to wait before trying again (HTTP Retry-After), if it said.
        self.retry_after = retry_after

    @property
    def reply(self) -> str:
        """The server's reply as one line (``535 5.7.3 Authentication unsuccessful``), or ''."""
        return f"{self.code} {self.text}".strip() if self.code is not None else ""

    def explain(self) -> str | None:
        if self.hint is not None:
            return _fill(self.hint, self.context)
        for code, enhanced, needle, hint in _REPLY_HINTS:
            if code is not None and code != self.code:
                continue
            if enhanced is not None and enhanced != self.enhanced_status:
                continue
            if needle is not None and needle.lower() not in self.text.lower():
                continue
            return _fill(hint, self.context)
        return None


class TemporaryDeliveryError(DeliveryError):
    """A 4xx reply, a dropped connection or a timeout: the same message may go through later."""

    temporary = True
    kind = FailureKind.TEMPORARY

    def explain(self) -> str | None:
        hint = super().explain()
        if hint is None and self.code is None:
            return "The SMTP server could not be reached; check the host, port, firewall and proxy."
        return hint


class PermanentDeliveryError(DeliveryError):
    """A 5xx reply: sending the same message again will fail the same way."""


class MessageError(PermanentDeliveryError):
    """The message or an address in it is unusable (bad syntax, no recipients)."""

    kind = FailureKind.MESSAGE


class AuthenticationError(DeliveryError):
    """AUTH XOAUTH2 was refused even with a freshly issued token."""

    kind = FailureKind.DENIED
