"""Microsoft Graph's answers and httpx's exceptions, turned into smtp-oauth's delivery errors.

The one boundary where Graph failures stop (``raise OurError(...) from exc``)::

    429, 503, 504 (Retry-After honoured), other 5xx, TLS, other failure -> GraphTemporaryError   75
    cannot connect / no answer in time           -> DeliveryConnectionError / DeliveryTimeoutError 75
    401 after one retry with a fresh token, 403, 404 (the mailbox)      -> GraphAuthorizationError 77
    400 (bad MIME), 413 (too large), Mail.ReadWrite missing for a draft -> GraphMessageError     65
    any other 4xx                                                        -> GraphPermanentError   69

Graph speaks HTTP, not SMTP: ``code`` and ``reply`` stay empty (no HTTP status is ever reported as
if it were an SMTP reply); ``status``, ``graph_code`` (``ErrorAccessDenied``...) and
``request_id`` say what Graph answered. Mapping follows Microsoft's error and throttling guidance:
https://learn.microsoft.com/graph/errors and https://learn.microsoft.com/graph/throttling.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

from smtp_oauth.errors import (
    AuthenticationError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    MessageError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from smtp_oauth.tls import ssl_error_in

__all__ = [
    "GraphAuthorizationError",
    "GraphMessageError",
    "GraphPermanentError",
    "GraphReply",
    "GraphTemporaryError",
    "from_exception",
    "from_reply",
    "parse_retry_after",
]

# Graph says how long to wait; a header of "0" or "1" in a storm would have every sender hammer
# it again at once, so waits have a floor (the 3rd-party note in msgraph-sdk-javascript#297).
RETRY_AFTER_FLOOR = 1.0
RETRY_AFTER_DEFAULT = 30.0  # a 429/503 without Retry-After
RETRY_AFTER_CAP = 3600.0
TEMPORARY_STATUSES = frozenset({429, 503, 504})


class _GraphDetails:
    """What Graph answered, beside the usual DeliveryError fields."""

    status: int | None
    graph_code: str | None
    request_id: str | None

    def _set_details(self, status: int | None, graph_code: str | None, request_id: str | None) -> None:
        self.status = status
        self.graph_code = graph_code
        self.request_id = request_id


class GraphTemporaryError(_GraphDetails, TemporaryDeliveryError):
    """Throttled (429), unavailable (503/504), another 5xx, or unreachable: try again later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        graph_code: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, retry_after=retry_after, context=context)
        self._set_details(status, graph_code, request_id)


class GraphPermanentError(_GraphDetails, PermanentDeliveryError):
    """Graph refused the request in a way that sending it again will not change."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        graph_code: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, context=context)
        self._set_details(status, graph_code, request_id)


class GraphMessageError(_GraphDetails, MessageError):
    """The message cannot go through Graph as it is (bad MIME, too large, no draft permission)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        graph_code: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
        enhanced_status: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, enhanced_status=enhanced_status, context=context)
        self._set_details(status, graph_code, request_id)


class GraphAuthorizationError(_GraphDetails, AuthenticationError):
    """The token was refused (401) or lacks the right to send as the mailbox (403), or no such mailbox."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        graph_code: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, context=context)
        self._set_details(status, graph_code, request_id)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, RETRY_AFTER_FLOOR), RETRY_AFTER_CAP)


class GraphReply:
    """A Graph response reduced to what error mapping needs: status, error code and text, ids, wait."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.request_id = response.headers.get("request-id") or response.headers.get("client-request-id")
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        self.graph_code: str | None = None
        self.text = ""
        try:
            body: Any = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            self.graph_code = str(error.get("code") or "") or None
            self.text = " ".join(str(error.get("message") or "").split())
        elif response.content:
            self.text = " ".join(response.content[:300].decode("utf-8", "replace").split())

    def describe(self) -> str:
        """``403 ErrorAccessDenied: Access is denied. (request-id 1234)``."""
        parts = [str(self.status)]
        if self.graph_code:
            parts.append(f"{self.graph_code}:" if self.text else self.graph_code)
        if self.text:
            parts.append(self.text)
        if self.request_id:
            parts.append(f"(request-id {self.request_id})")
        return " ".join(parts)


# --- the fixes, filled in with the user's ids (errors.fill_hint placeholders) -------------------------

_PERMISSION_MODELS = (
    "Grant it one way, not both: (a) the Graph permission for every mailbox of the tenant: Entra admin "
    "center > App registrations > {client_id} > API permissions > Add a permission > Microsoft Graph > "
    "Application permissions > Mail.Send, then Grant admin consent; or (b) RBAC for Applications, scoped "
    "to the mailboxes, with no Graph permission at all (Exchange Online PowerShell): "
    "New-ServicePrincipal -AppId {client_id} -ObjectId {enterprise_app_object_id} -DisplayName smtp-oauth; "
    'New-ManagementScope -Name smtp-oauth-senders -RecipientRestrictionFilter "PrimarySmtpAddress -eq '
    "'{mailbox}'\"; New-ManagementRoleAssignment -App {client_id} -Role 'Application Mail.Send' "
    "-CustomResourceScope smtp-oauth-senders. A tenant-wide Mail.Send grant would reopen every mailbox, "
    "so never combine it with RBAC scoping. Changes take up to an hour to apply."
)
HINT_APP_MAIL_SEND = (
    "The app may not send as {mailbox} through Graph (no Mail.Send for it). " + _PERMISSION_MODELS
)
HINT_APP_SCOPE = (
    "The app has Mail.Send, but not for {mailbox}: an RBAC for Applications scope (or a legacy "
    "Application Access Policy) excludes this mailbox. Check with Test-ServicePrincipalAuthorization "
    "-Identity {client_id} -Resource {mailbox}, and add the mailbox to the management scope of the "
    "'Application Mail.Send' role assignment. Changes take up to an hour to apply."
)
HINT_DELEGATED_MAIL_SEND = (
    "The signed-in user's token has no Mail.Send scope. Add the delegated permission (App registrations "
    "> {client_id} > API permissions > Microsoft Graph > Delegated permissions > Mail.Send), then sign in "
    "again: smtp-oauth logout && smtp-oauth login."
)
HINT_DELEGATED_MAILBOX = (
    "The signed-in user may not send from {mailbox}. For a shared mailbox add the delegated permission "
    "Mail.Send.Shared and grant the user SendAs (Add-RecipientPermission -Identity {mailbox} -Trustee "
    "<user> -AccessRights SendAs); otherwise set graph.mailbox to the user's own mailbox."
)
HINT_SEND_AS = (
    "Graph refused the From address (ErrorSendAsDenied): {mailbox} may not send as it. Send from "
    "{mailbox}, or grant SendAs: Add-RecipientPermission -Identity <sender> -Trustee {mailbox} "
    "-AccessRights SendAs. Graph also refuses a From display name containing '@'."
)
HINT_REST_DISABLED = (
    "The mailbox {mailbox} cannot be used through Graph (MailboxNotEnabledForRESTAPI): it is inactive, "
    "soft-deleted, on-premises, or has no Exchange Online licence. Use a licensed Exchange Online "
    "mailbox (or a shared mailbox) as graph.mailbox."
)
HINT_NO_MAILBOX = (
    "Graph knows no user {mailbox} in this tenant: check graph.mailbox (or smtp.username), a user id "
    "or user principal name."
)
HINT_REFUSED_401 = (
    "Graph refused the token even freshly issued: check that it is for https://graph.microsoft.com "
    "(graph.scopes, `smtp-oauth token --resource graph --claims`) and issued by the mailbox's tenant."
)
HINT_TOO_LARGE = (
    "The message is larger than Graph accepts in one request (about 3 MB before base64); such messages "
    "go through a draft and an upload session (up to 150 MB), which needs Mail.ReadWrite. Send smaller "
    'attachments or a link, or send this one through SMTP (transport = "smtp").'
)
HINT_DRAFT_PERMISSION = (
    "Messages over about 3 MB go through a draft and an upload session, which needs the Mail.ReadWrite "
    "permission besides Mail.Send: App registrations > {client_id} > API permissions > Microsoft Graph > "
    "Mail.ReadWrite (application, with admin consent; or 'Application Mail.ReadWrite' in the RBAC "
    'role assignment), or send large messages through SMTP (transport = "smtp").'
)
HINT_BAD_MIME = (
    "Graph could not read the message (invalid MIME or base64). This is a bug if the message came from "
    "smtp-oauth itself; otherwise check the program that wrote it."
)
HINT_THROTTLED = (
    "Graph is throttling this app (4 concurrent requests per app, 10,000 requests per 10 minutes per "
    "mailbox) or is busy; the message is sent again after the wait Graph asked for."
)
HINT_TLS = (
    "Graph's TLS certificate is not trusted. Behind a TLS-inspecting proxy, or for a test endpoint, set "
    "identity.ca_file to the PEM bundle of the CA that signed it (it is trusted for every HTTPS service)."
)


def _authorization_hint(reply: GraphReply, claims: Mapping[str, Any]) -> str | None:
    """The fix for a 403, from Graph's code and what the token itself grants."""
    if reply.graph_code == "ErrorSendAsDenied":
        return HINT_SEND_AS
    if reply.graph_code == "MailboxNotEnabledForRESTAPI":
        return HINT_REST_DISABLED
    if "scp" in claims:  # delegated
        scopes = str(claims.get("scp", "")).split()
        return HINT_DELEGATED_MAILBOX if "Mail.Send" in scopes else HINT_DELEGATED_MAIL_SEND
    roles = claims.get("roles")
    if isinstance(roles, list) and "Mail.Send" in roles:
        return HINT_APP_SCOPE
    return HINT_APP_MAIL_SEND


def from_reply(  # noqa: PLR0911  # one return per kind of answer reads best
    reply: GraphReply,
    *,
    what: str,
    context: Mapping[str, str],
    claims: Mapping[str, Any] | None = None,
    draft: bool = False,
) -> DeliveryError:
    """The error for a non-2xx Graph answer to ``what`` ("sendMail for a@b", "the draft for a@b").

    ``claims`` are the token's (for the 403 hint); ``draft`` marks the large-message path, where a
    403 means Mail.ReadWrite is missing.
    """
    status, details = reply.status, reply.describe()
    message = f"Microsoft Graph refused {what}: {details}"
    common: dict[str, Any] = {
        "status": status,
        "graph_code": reply.graph_code,
        "request_id": reply.request_id,
        "context": context,
    }
    if status in TEMPORARY_STATUSES or status >= 500:
        wait = reply.retry_after
        if wait is None and status in TEMPORARY_STATUSES:
            wait = RETRY_AFTER_DEFAULT
        suffix = f"; Graph asked to wait {wait:.0f} s" if wait is not None else ""
        return GraphTemporaryError(message + suffix, hint=HINT_THROTTLED, retry_after=wait, **common)
    if reply.graph_code == "MailboxNotEnabledForRESTAPI":
        return GraphAuthorizationError(message, hint=HINT_REST_DISABLED, **common)
    if status == 413:
        return GraphMessageError(message, hint=HINT_TOO_LARGE, enhanced_status="5.3.4", **common)
    if status == 401:
        return GraphAuthorizationError(message, hint=HINT_REFUSED_401, **common)
    if status == 403:
        if draft and reply.graph_code != "ErrorSendAsDenied":
            return GraphMessageError(message, hint=HINT_DRAFT_PERMISSION, enhanced_status="5.7.1", **common)
        return GraphAuthorizationError(message, hint=_authorization_hint(reply, claims or {}), **common)
    if status == 404:
        return GraphAuthorizationError(message, hint=HINT_NO_MAILBOX, **common)
    if status == 400:
        return GraphMessageError(message, hint=HINT_BAD_MIME, enhanced_status="5.6.0", **common)
    return GraphPermanentError(message, **common)


def from_exception(exc: httpx.HTTPError, *, server: str, context: Mapping[str, str]) -> DeliveryError:
    """The error for an exception httpx raised talking to ``server``: all of them are temporary."""
    if isinstance(exc, httpx.TimeoutException):
        # First: a handshake cut off by the timeout carries an SSLWantReadError, not a TLS failure.
        return DeliveryTimeoutError(
            f"{server} did not answer in time ({type(exc).__name__})", context=context
        )
    tls = ssl_error_in(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or tls.reason or str(tls)
        hint = HINT_TLS if isinstance(tls, ssl.SSLCertVerificationError) else None
        return GraphTemporaryError(f"TLS with {server} failed: {reason}", hint=hint, context=context)
    if isinstance(exc, httpx.ConnectError):
        return DeliveryConnectionError(
            f"cannot connect to {server}: {exc}",
            hint="Check the network, firewall and proxy (HTTPS_PROXY) for graph.endpoint.",
            context=context,
        )
    return GraphTemporaryError(
        f"the request to {server} failed: {type(exc).__name__}: {exc}", context=context
    )
