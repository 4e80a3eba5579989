"""On-behalf-of: a middle-tier service sends mail as the user whose access token it received.

::

    obo = OnBehalfOf(settings)                  # the middle tier's app: secret, certificate or WIF
    user = await obo.user(incoming_token)        # the token a caller presented to our API
    async with create_transport(settings, token_provider=user, mailbox=user.username) as t:
        await t.send(message)                    # SMTP.Send (or Graph Mail.Send) as that user

The incoming token must be issued for the middle tier (``aud`` = its client id or
``api://<client id>``), and the middle tier needs the delegated permission (``SMTP.Send``,
Graph ``Mail.Send``) with consent. Entra exchanges it (``grant_type`` jwt-bearer,
``requested_token_use=on_behalf_of``) for a token of the user's for Exchange or Graph:
https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-on-behalf-of-flow

Each user's tokens are cached apart (their own account in the token cache, refreshed with their
own refresh token). A token is served from the cache only for an incoming token that Entra has
already accepted once (remembered by its hash, never the token itself) and that has not expired:
a forged or expired token never reaches another user's cached tokens. The web framework in front
must still validate incoming tokens itself; this class only exchanges them.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from smtp_oauth.errors import ConfigurationError, TokenError
from smtp_oauth.tokens.hints import aadsts_hint

if TYPE_CHECKING:
    from smtp_oauth.settings.models import Settings

__all__ = ["OnBehalfOf", "OnBehalfOfUser"]

_CONFIDENTIAL_FLOWS = ("client_credentials", "workload_identity")


@dataclass(frozen=True)
class _KnownAssertion:
    account_id: str
    username: str | None
    expires_at: float


class OnBehalfOfUser:
    """A ``TokenProvider`` for one user, by the token they presented."""

    def __init__(self, owner: OnBehalfOf, assertion: str, username: str | None) -> None:
        self._owner = owner
        self._assertion = assertion
        self.username = username  # the user's UPN: the XOAUTH2 user= / Graph mailbox to send as

    def __repr__(self) -> str:
        return f"OnBehalfOfUser(username={self.username!r})"

    async def access_token(self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None) -> str:
        """The user's token for ``scopes`` (default: the SMTP service's), valid for 10 minutes more."""
        return await self._owner.access_token(self._assertion, force_refresh=force_refresh, scopes=scopes)


class OnBehalfOf:
    """The middle tier's confidential app, exchanging users' tokens; safe to share between tasks."""

    def __init__(self, settings: Settings) -> None:
        if settings.identity.flow not in _CONFIDENTIAL_FLOWS:
            raise ConfigurationError(
                "on-behalf-of needs the middle tier's own credential; "
                f"identity.flow is {settings.identity.flow!r}",
                key="identity.flow",
                hint='Use flow = "client_credentials" (a secret or certificate) or "workload_identity" '
                "for the app that the incoming tokens were issued to.",
            )
        self._settings = settings
        self._lock = threading.Lock()  # one MSAL call at a time; the cache is shared by every user
        self._known: dict[str, _KnownAssertion] = {}
        self._session: Any = None

    def __repr__(self) -> str:
        return f"OnBehalfOf(client_id={self._settings.identity.client_id!r}, users={len(self._known)})"

    async def user(self, assertion: str) -> OnBehalfOfUser:
        """Exchange ``assertion`` (or find the user's cached token) and name its user; TokenError
        when Entra refuses it (expired, not for this app, no consent)."""
        await self.access_token(assertion)
        known = self._known[_digest(assertion)]
        return OnBehalfOfUser(self, assertion, known.username)

    async def access_token(
        self, assertion: str, *, force_refresh: bool = False, scopes: Sequence[str] | None = None
    ) -> str:
        """The token of the user ``assertion`` belongs to, for ``scopes``."""
        return await asyncio.to_thread(self._acquire, assertion, force_refresh, scopes)

    def _acquire(self, assertion: str, force_refresh: bool, scopes: Sequence[str] | None) -> str:
        expires_at = _expiry(assertion)
        if expires_at is not None and expires_at <= time.time():
            when = datetime.fromtimestamp(expires_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise TokenError(
                f"the user's access token expired at {when}; it cannot be exchanged on their behalf",
                error="invalid_grant",
                aadsts_code=500133,
                hint=aadsts_hint(500133),
                context=self._settings.hint_context(),
            )
        key = _digest(assertion)
        with self._lock:
            known = self._known.get(key)
            session = self._msal_session()
            try:
                issued, account_id, username = session.on_behalf_of(
                    assertion,
                    account_id=known.account_id if known else None,
                    scopes=list(scopes) if scopes else self._default_scopes(),
                    force_refresh=force_refresh,
                    min_validity=self._settings.refresh_margin.total_seconds(),
                )
            except BaseException:
                # MSAL replays a refused request from its throttle cache: the next call gets a new app.
                self._session = None
                session.close()
                raise
            self._known[key] = _KnownAssertion(account_id, username, expires_at or float("inf"))
            self._forget_expired()
            token: str = issued.access_token
            return token

    def _default_scopes(self) -> list[str]:
        """The delegated permission of the transport: a ``/.default`` request would be answered
        with the named scopes, which MSAL's cache then never matches again."""
        settings = self._settings
        if settings.identity.scopes:
            return list(settings.identity.scopes)
        preset = settings.identity.cloud_preset
        return [preset.graph_delegated_scope if settings.transport == "graph" else preset.delegated_scope]

    def _msal_session(self) -> Any:
        if self._session is None:
            from smtp_oauth.tokens.cache import open_token_cache
            from smtp_oauth.tokens.msal_session import MsalSession

            self._session = MsalSession(self._settings, open_token_cache(self._settings))
        return self._session

    def _forget_expired(self) -> None:
        now = time.time()
        for key in [key for key, known in self._known.items() if known.expires_at <= now]:
            del self._known[key]


def _digest(assertion: str) -> str:
    return hashlib.sha256(assertion.encode()).hexdigest()


def _expiry(assertion: str) -> float | None:
    """The incoming token's ``exp`` (not verified: only to refuse what is plainly expired)."""
    from smtp_oauth.tokens.claims import decode_claims

    try:
        exp = decode_claims(assertion).get("exp")
    except ValueError:
        return None  # not a JWT we can read: Entra decides
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
