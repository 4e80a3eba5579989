"""The token endpoint's grants and the state behind them: codes, device codes, refresh tokens.

Grants (RFC 6749, RFC 8628, RFC 7636), each answering as Entra does when it goes wrong:
- ``client_credentials``: confidential apps only, one ``<resource>/.default`` scope;
- ``password`` (ROPC) for the test user;
- ``urn:ietf:params:oauth:grant-type:device_code``: ``authorization_pending`` until approved
  (automatically after the first poll by default, or by ``approve_device_code``);
- ``authorization_code``: single use, the exact ``redirect_uri`` of ``/authorize``, PKCE
  ``S256``/``plain`` verified against the challenge;
- ``refresh_token``: rotating; with ``strict_refresh_rotation`` a used refresh token is dead, so a
  client that keeps using an old one fails (AADSTS70000) instead of silently working.
Thread-safe: the HTTP server answers each request on its own thread.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smtp_oauth.sandbox.idp.client_auth import authenticate_client
from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.idp.federation import FederatedIssuer
from smtp_oauth.sandbox.idp.tokens import DelegatedScope, IdpOptions, TokenIssuer, resolve_app_scope
from smtp_oauth.sandbox.tenant import RegisteredApp, SandboxTenant, SandboxUser

__all__ = ["DEVICE_CODE_GRANT", "GrantStore"]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # on-behalf-of (RFC 7523)
AUTHORIZATION_CODE_LIFETIME = 600  # seconds; Entra's codes live about ten minutes
DEVICE_CODE_LIFETIME = 900  # seconds, as Entra's expires_in
_USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: people type these


@dataclass
class _RefreshToken:
    client_id: str
    user: SandboxUser
    scope_text: str
    issued_at: float
    used: bool = False
    revoked: bool = False
    inactive: bool = False


@dataclass
class _AuthorizationCode:
    client_id: str
    user: SandboxUser
    scope_text: str
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str
    nonce: str | None
    issued_at: float
    redeemed: bool = False


@dataclass
class _DeviceCode:
    client_id: str
    user_code: str
    scope_text: str
    expires_at: float
    approved: bool = False
    declined: bool = False
    redeemed: bool = False


def pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    """RFC 7636 4.6: ``BASE64URL(SHA256(verifier)) == challenge`` (or equality for ``plain``)."""
    if method == "plain":
        return hmac.compare_digest(verifier, challenge)
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hmac.compare_digest(computed, challenge)


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise AadError.missing_parameter(name)
    return value


class GrantStore:
    """Issues and redeems grants for one tenant; the token endpoint's logic without the HTTP."""

    def __init__(self, tenant: SandboxTenant, issuer: TokenIssuer, options: IdpOptions) -> None:
        self._tenant = tenant
        self._issuer = issuer
        self._options = options
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        self._device_codes: dict[str, _DeviceCode] = {}
        self.issuers: list[FederatedIssuer] = []  # OIDC issuers trusted for federated credentials
        self._grants: dict[str, Callable[[RegisteredApp, Mapping[str, str], str], dict[str, Any]]] = {
            "client_credentials": self._client_credentials,
            "password": self._password,
            "refresh_token": self._refresh_token,
            "authorization_code": self._authorization_code,
            DEVICE_CODE_GRANT: self._device_code,
            JWT_BEARER_GRANT: self._on_behalf_of,
        }

    def __repr__(self) -> str:
        return f"GrantStore(tenant={self._tenant.tenant_id!r})"

    # --- the token endpoint ---------------------------------------------------------------------

    def application(self, client_id: str) -> RegisteredApp:
        app = self._tenant.application(client_id)
        if app is None:
            raise AadError.unknown_client(client_id, self._tenant.tenant_id)
        return app

    def token(self, form: Mapping[str, str], *, audiences: list[str]) -> dict[str, Any]:
        """Answer a token request (form fields), or raise AadError."""
        grant_type = _required(form, "grant_type")
        app = self.application(_required(form, "client_id"))
        grant = self._grants.get(grant_type)
        if grant is None:
            raise AadError.unsupported_grant_type(grant_type)
        credential = authenticate_client(app, form, audiences=audiences, issuers=self.issuers)
        return grant(app, form, credential)

    def _client_credentials(
        self, app: RegisteredApp, form: Mapping[str, str], credential: str
    ) -> dict[str, Any]:
        resource = resolve_app_scope(form.get("scope", ""), self._tenant)
        return self._issuer.app_token(app, resource, credential=credential)

    def _password(self, app: RegisteredApp, form: Mapping[str, str], credential: str) -> dict[str, Any]:
        user = self._tenant.find_user(_required(form, "username"))
        if user is None:
            raise AadError.unknown_user(self._tenant.tenant_id)
        password = form.get("password", "")
        if not hmac.compare_digest(password.encode(), user.password.encode()):
            raise AadError.wrong_password()
        return self._user_tokens(app, user, form.get("scope", ""), credential=credential)

    def _refresh_token(self, app: RegisteredApp, form: Mapping[str, str], credential: str) -> dict[str, Any]:
        presented = _required(form, "refresh_token")
        with self._lock:
            record = self._refresh_tokens.get(presented)
            if record is None or record.revoked or record.client_id != app.client_id:
                raise AadError.invalid_grant()
            if record.inactive:
                issued = datetime.datetime.fromtimestamp(record.issued_at, datetime.UTC)
                raise AadError.refresh_token_inactive(issued.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"))
            if record.used and self._options.strict_refresh_rotation:
                raise AadError.invalid_grant(
                    "Provided grant is invalid or malformed. (This refresh token was already redeemed "
                    "and the sandbox's strict_refresh_rotation is on: keep the newest one.)"
                )
            record.used = True
        scope_text = form.get("scope") or record.scope_text
        return self._user_tokens(app, record.user, scope_text, credential=credential, always_refresh=True)

    def _authorization_code(
        self, app: RegisteredApp, form: Mapping[str, str], credential: str
    ) -> dict[str, Any]:
        code = _required(form, "code")
        with self._lock:
            record = self._codes.get(code)
            if record is None or record.client_id != app.client_id:
                raise AadError.invalid_grant()
            if record.redeemed:
                raise AadError.code_redeemed()
            if time.time() > record.issued_at + AUTHORIZATION_CODE_LIFETIME:
                raise AadError.code_expired()
            if form.get("redirect_uri") != record.redirect_uri:
                raise AadError.code_redirect_mismatch()
            if record.code_challenge is not None and not pkce_matches(
                form.get("code_verifier", ""), record.code_challenge, record.code_challenge_method
            ):
                raise AadError.pkce_mismatch()
            record.redeemed = True
        scope_text = form.get("scope") or record.scope_text
        return self._user_tokens(app, record.user, scope_text, credential=credential, nonce=record.nonce)

    def _device_code(self, app: RegisteredApp, form: Mapping[str, str], credential: str) -> dict[str, Any]:
        device_code = _required(form, "device_code")
        with self._lock:
            record = self._device_codes.get(device_code)
            if record is None or record.client_id != app.client_id or record.redeemed:
                raise AadError.invalid_grant()
            if time.time() > record.expires_at:
                raise AadError.device_code_expired()
            if record.declined:
                raise AadError.authorization_declined()
            if not record.approved:
                # The sandbox's user "signs in" between the first poll and the second.
                record.approved = self._options.device_code_auto_approve
                raise AadError.authorization_pending()
            record.redeemed = True
        return self._user_tokens(app, self._tenant.user, record.scope_text, credential=credential)

    def _on_behalf_of(self, app: RegisteredApp, form: Mapping[str, str], credential: str) -> dict[str, Any]:
        """A middle tier exchanges a user's token for its API for one of the user's for Exchange/Graph.

        https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-on-behalf-of-flow
        """
        if form.get("requested_token_use") != "on_behalf_of":
            raise AadError(
                "invalid_request", 90014, "The request must contain requested_token_use=on_behalf_of."
            )
        if app.is_public:
            raise AadError.no_credential()
        claims = self._issuer.verify_api_token(_required(form, "assertion"), app)
        user = self._tenant.find_user_by_id(str(claims.get("oid", "")))
        if user is None:
            raise AadError.unknown_user(self._tenant.tenant_id)
        return self._user_tokens(app, user, form.get("scope", ""), credential=credential)

    def _user_tokens(
        self,
        app: RegisteredApp,
        user: SandboxUser,
        scope_text: str,
        *,
        credential: str,
        nonce: str | None = None,
        always_refresh: bool = False,
    ) -> dict[str, Any]:
        scope = DelegatedScope.parse(scope_text, app, self._tenant)
        refresh_token = None
        if always_refresh or "offline_access" in scope.oidc:
            refresh_token = self._new_refresh_token(app, user, scope_text)
        return self._issuer.user_tokens(
            app, user, scope, refresh_token=refresh_token, nonce=nonce, credential=credential
        )

    def _new_refresh_token(self, app: RegisteredApp, user: SandboxUser, scope_text: str) -> str:
        # Entra's refresh tokens are opaque; "1.A" + random hints at that without meaning anything.
        token = f"1.A{secrets.token_urlsafe(48)}"
        with self._lock:
            self._refresh_tokens[token] = _RefreshToken(app.client_id, user, scope_text, time.time())
        return token

    # --- the authorize and device authorization endpoints ----------------------------------------

    def issue_code(
        self,
        app: RegisteredApp,
        *,
        redirect_uri: str,
        scope_text: str,
        code_challenge: str | None,
        code_challenge_method: str,
        nonce: str | None,
    ) -> str:
        """A one-time authorization code for the test user (who is always signed in)."""
        DelegatedScope.parse(scope_text, app, self._tenant)
        code = f"1.A{secrets.token_urlsafe(64)}"
        record = _AuthorizationCode(
            client_id=app.client_id,
            user=self._tenant.user,
            scope_text=scope_text,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            nonce=nonce,
            issued_at=time.time(),
        )
        with self._lock:
            self._codes[code] = record
        return code

    def device_authorization(self, form: Mapping[str, str], *, verification_uri: str) -> dict[str, Any]:
        """Answer ``/devicecode`` (RFC 8628 3.2) with Entra's fields and message."""
        app = self.application(_required(form, "client_id"))
        scope_text = form.get("scope", "")
        DelegatedScope.parse(scope_text, app, self._tenant)
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
        device_code = secrets.token_urlsafe(48)
        with self._lock:
            self._device_codes[device_code] = _DeviceCode(
                app.client_id, user_code, scope_text, time.time() + DEVICE_CODE_LIFETIME
            )
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": verification_uri,
            "expires_in": DEVICE_CODE_LIFETIME,
            "interval": self._options.device_code_interval,
            "message": (
                f"To sign in, use a web browser to open the page {verification_uri} and enter the code "
                f"{user_code} to authenticate."
            ),
        }

    # --- what tests (and the sandbox's pages) do to the tenant -----------------------------------

    def _device_record(self, user_code: str) -> _DeviceCode:
        wanted = user_code.replace("-", "").strip().upper()
        for record in self._device_codes.values():
            if record.user_code == wanted and not record.redeemed:
                return record
        raise KeyError(f"no pending device code {user_code!r}")

    def approve_device_code(self, user_code: str) -> None:
        """The user enters ``user_code`` and signs in; the next poll gets tokens. KeyError if unknown."""
        with self._lock:
            self._device_record(user_code).approved = True

    def decline_device_code(self, user_code: str) -> None:
        """The user refuses; the next poll gets ``authorization_declined``."""
        with self._lock:
            self._device_record(user_code).declined = True

    def pending_user_codes(self) -> list[str]:
        """User codes still waiting for a sign-in, oldest first."""
        with self._lock:
            return [
                r.user_code
                for r in self._device_codes.values()
                if not (r.approved or r.declined or r.redeemed) and time.time() <= r.expires_at
            ]

    def revoke_refresh_tokens(self) -> int:
        """Revoke every refresh token (as "Revoke sessions" does); returns how many were live."""
        with self._lock:
            live = [r for r in self._refresh_tokens.values() if not r.revoked]
            for record in live:
                record.revoked = True
            return len(live)

    def expire_refresh_tokens(self) -> int:
        """Make every refresh token expired by inactivity (AADSTS700082); returns how many."""
        with self._lock:
            for record in self._refresh_tokens.values():
                record.inactive = True
            return len(self._refresh_tokens)
