"""How the fake Exchange Online decides whether an XOAUTH2 token may use a mailbox.

Exchange Online accepts an access token when (Microsoft, "Authenticate an IMAP, POP or SMTP
connection using OAuth"):

- it is signed by the tenant's identity platform and not expired;
- its audience is Exchange Online: ``https://outlook.office365.com``, ``https://outlook.office.com``
  (both are seen in the wild, for app-only and delegated tokens alike) or the resource's app id;
- it was issued for the tenant that hosts the mailbox (``tid``);
- app-only with an API permission: ``roles`` holds ``SMTP.SendAsApp`` and the service principal
  (``appid``/``azp``) was given access to the ``user=`` mailbox (``Add-MailboxPermission``);
- app-only through SMTP App RBAC (October 2025): no ``roles`` at all, and the ``user=`` mailbox is
  in the scope of the app's ``Application SMTP.SendAsApp`` role assignment. A token that does carry
  the role is checked for mailbox permissions instead ("Including the SMTP.SendAsApp claim would
  trigger an unnecessary check for mailbox permissions",
  https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/smtp-app-rbac-onboarding);
- delegated: ``scp`` holds ``SMTP.Send`` and the signed-in user (``upn``) is the ``user=`` mailbox.

Every refusal looks the same to the client (``535 5.7.3``); the reason goes to the sandbox's log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smtp_oauth.sandbox.exchange.services import ACS_AUDIENCE
from smtp_oauth.sandbox.keys import SigningKey, TokenInvalid
from smtp_oauth.smtp.xoauth2 import XOAuth2Credentials

__all__ = [
    "EXCHANGE_AUDIENCES",
    "SEND_AS_APP_ROLE",
    "SEND_SCOPE",
    "AuthRejected",
    "AuthenticatedMailbox",
    "TokenVerifier",
]

EXCHANGE_AUDIENCES = (
    "https://outlook.office365.com",
    "https://outlook.office.com",
    "00000002-0000-0ff1-ce00-000000000000",  # Office 365 Exchange Online's application id
)
SEND_AS_APP_ROLE = "SMTP.SendAsApp"
SEND_SCOPE = "SMTP.Send"


class AuthRejected(Exception):
    """The token may not use the mailbox; the message says why (for the log, never for the client)."""


@dataclass(frozen=True)
class AuthenticatedMailbox:
    """Who a session authenticated as: the mailbox (as configured) and the client application."""

    mailbox: str
    client_id: str
    delegated: bool
    expires_at: float = 0.0  # the token's exp (HVE refuses tokens about to expire)


class TokenVerifier:
    """Checks XOAUTH2 credentials against the sandbox tenant's key, mailboxes and app grants."""

    def __init__(
        self,
        *,
        signing_key: SigningKey,
        tenant_id: str,
        mailboxes: Iterable[str],
        app_grants: Mapping[str, Iterable[str]],
        rbac_grants: Mapping[str, Iterable[str]] | None = None,
        acs_usernames: Mapping[str, str] | None = None,
    ) -> None:
        self._signing_key = signing_key
        self._tenant_id = tenant_id
        # Addresses compare case-insensitively, as Exchange resolves them; keep the configured spelling.
        self._mailboxes = {address.casefold(): address for address in mailboxes}
        self._grants = {
            client_id: frozenset(address.casefold() for address in granted)
            for client_id, granted in app_grants.items()
        }
        # ACS: SMTP username -> the app it belongs to; when set, tokens are for ACS, not Exchange.
        self._acs = {name.casefold(): client for name, client in (acs_usernames or {}).items()}
        self._rbac = {
            client_id: frozenset(address.casefold() for address in granted)
            for client_id, granted in (rbac_grants or {}).items()
        }

    def grant(self, client_id: str, mailbox: str, *, model: str = "rbac") -> None:
        """Give ``client_id`` a mailbox: ``"rbac"`` (role assignment) or ``"fullaccess"``."""
        table = self._rbac if model == "rbac" else self._grants
        table[client_id] = table.get(client_id, frozenset()) | {mailbox.casefold()}

    def verify(self, credentials: XOAuth2Credentials) -> AuthenticatedMailbox:
        """The mailbox these credentials may send as; AuthRejected with the reason otherwise."""
        audiences = [ACS_AUDIENCE] if self._acs else list(EXCHANGE_AUDIENCES)
        try:
            claims = self._signing_key.verify(credentials.token, audience=audiences)
        except TokenInvalid as exc:
            raise AuthRejected(str(exc)) from exc
        if claims.get("tid") != self._tenant_id:
            raise AuthRejected(f"token issued for tenant {claims.get('tid')!r}, not {self._tenant_id!r}")
        expires_at = float(claims.get("exp", 0))
        if self._acs:
            return self._check_acs(claims, credentials.user, expires_at)
        mailbox = self._mailboxes.get(credentials.user.casefold())
        if mailbox is None:
            raise AuthRejected(f"no mailbox {credentials.user!r} in this tenant")
        client_id = str(claims.get("appid") or claims.get("azp") or "")
        # Entra puts scp only in delegated tokens and roles only in app-only ones.
        if "scp" in claims:
            self._check_delegated(claims, credentials.user)
            return AuthenticatedMailbox(mailbox, client_id, delegated=True, expires_at=expires_at)
        self._check_app_only(claims, client_id, credentials.user)
        return AuthenticatedMailbox(mailbox, client_id, delegated=False, expires_at=expires_at)

    def _check_acs(self, claims: Mapping[str, Any], user: str, expires_at: float) -> AuthenticatedMailbox:
        """ACS: ``user=`` is an SMTP username, which names the one app allowed to use it."""
        owner = self._acs.get(user.casefold())
        if owner is None:
            raise AuthRejected(f"no ACS SMTP username {user!r}")
        client_id = str(claims.get("appid") or claims.get("azp") or "")
        if client_id.casefold() != owner.casefold():
            raise AuthRejected(f"SMTP username {user!r} belongs to app {owner!r}, not {client_id!r}")
        return AuthenticatedMailbox(user, client_id, delegated=False, expires_at=expires_at)

    @staticmethod
    def _check_delegated(claims: Mapping[str, Any], user: str) -> None:
        scopes = str(claims.get("scp", "")).split()
        if SEND_SCOPE not in scopes:
            raise AuthRejected(f"delegated token lacks scope {SEND_SCOPE} (scp={claims.get('scp')!r})")
        signed_in = str(claims.get("upn") or claims.get("unique_name") or "")
        if signed_in.casefold() != user.casefold():
            raise AuthRejected(f"token belongs to {signed_in!r}, but user={user!r}")

    def _check_app_only(self, claims: Mapping[str, Any], client_id: str, user: str) -> None:
        if not client_id:
            raise AuthRejected("app-only token names no application (appid/azp)")
        roles = claims.get("roles")
        if not isinstance(roles, list) or SEND_AS_APP_ROLE not in roles:
            if user.casefold() not in self._rbac.get(client_id, frozenset()):
                raise AuthRejected(
                    f"app-only token without role {SEND_AS_APP_ROLE} (roles={roles!r}): application "
                    f"{client_id!r} has no 'Application SMTP.SendAsApp' role assignment covering {user!r}"
                )
            return
        if user.casefold() not in self._grants.get(client_id, frozenset()):
            raise AuthRejected(f"application {client_id!r} has no access to mailbox {user!r}")
