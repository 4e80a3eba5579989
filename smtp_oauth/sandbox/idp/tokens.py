"""Scopes in, tokens out: what the sandbox identity provider puts in its token responses.

Access tokens look like the v1.0 tokens Entra issues for Exchange Online (the resource accepts v1)
and for Microsoft Graph (``aud`` ``https://graph.microsoft.com``, ``roles``/``scp`` ``Mail.Send``):
- app-only (``https://outlook.office365.com/.default``): ``aud`` = the resource, ``roles``
  ``["SMTP.SendAsApp"]``, ``appid``/``azp``, ``oid``/``sub`` = the service principal, ``idtyp: app``;
- delegated (``https://outlook.office.com/SMTP.Send``): ``aud`` = the resource, ``scp SMTP.Send``,
  ``upn``, ``unique_name``, ``name``, ``oid`` = the user.
Both carry ``iss`` (``<authority host>/<tenant id>/``, the sandbox's stand-in for
``https://sts.windows.net/<tenant id>/``), ``tid``, ``iat``, ``nbf``, ``exp``, ``ver 1.0``.
Delegated responses add ``refresh_token`` (when ``offline_access`` was asked for), ``id_token``
(v2.0, ``aud`` = client id, ``nonce`` echoed) and ``client_info`` (base64url JSON uid/utid), which
MSAL needs to build its account.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.keys import SigningKey, TokenInvalid
from smtp_oauth.sandbox.tenant import OBO_SCOPE, RegisteredApp, SandboxTenant, SandboxUser

__all__ = [
    "APP_RESOURCES",
    "OIDC_SCOPES",
    "AppPrincipal",
    "DelegatedScope",
    "IdpOptions",
    "TokenIssuer",
    "resolve_app_scope",
]

# Exchange Online's resource, by application ID URI and by app id; aud echoes the one asked for.
EXCHANGE_RESOURCES = frozenset(
    {"https://outlook.office365.com", "https://outlook.office.com", "00000002-0000-0ff1-ce00-000000000000"}
)
ACS_RESOURCE = "https://communication.azure.com"  # Azure Communication Services (its SMTP endpoint)
# Delegated permissions Exchange Online defines (consent decides which an app actually gets).
EXCHANGE_DELEGATED_PERMISSIONS = frozenset(
    {"SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "EWS.AccessAsUser.All"}
)
# Microsoft Graph's resource, by URI and by app id, and the mail permissions the sandbox knows.
GRAPH_RESOURCES = frozenset({"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"})
GRAPH_DELEGATED_PERMISSIONS = frozenset({"Mail.Send", "Mail.ReadWrite", "Mail.Send.Shared", "User.Read"})
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
# Resources app-only tokens can be asked for ("<resource>/.default").
APP_RESOURCES = EXCHANGE_RESOURCES | GRAPH_RESOURCES | {ACS_RESOURCE}


def is_graph(resource: str) -> bool:
    return resource in GRAPH_RESOURCES


def app_roles_for(app: RegisteredApp, resource: str) -> tuple[str, ...]:
    """The application permissions ``app`` holds on ``resource``."""
    return app.graph_app_roles if is_graph(resource) else app.app_roles


def consent_for(app: RegisteredApp, resource: str) -> tuple[str, ...]:
    """The delegated permissions consented for ``app`` on ``resource``."""
    return app.graph_delegated_consent if is_graph(resource) else app.delegated_consent


@dataclass
class IdpOptions:
    """Knobs a test turns; mutable, so a running identity provider picks up changes."""

    access_token_lifetime: int = 3600
    refresh_in: int | None = None
    strict_refresh_rotation: bool = False
    device_code_auto_approve: bool = True
    # Entra says 5 s; MSAL sleeps this long between polls, so the sandbox defaults to 1 s.
    device_code_interval: int = 1


def _split_resource_scope(scope: str) -> tuple[str, str]:
    """``"https://outlook.office.com/SMTP.Send"`` -> (resource, permission)."""
    resource, sep, permission = scope.rpartition("/")
    if not sep or not resource:
        return "", scope
    return resource, permission


def resolve_app_scope(scope_text: str, tenant: SandboxTenant) -> str:
    """The resource (token audience) an app-only request asks for; AadError when it is not valid."""
    scopes = scope_text.split()
    if not scopes:
        raise AadError.missing_parameter("scope")
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        raise AadError.app_only_scope_not_default(scope_text)
    return check_app_resource(scopes[0].removesuffix("/.default"), tenant)


def check_app_resource(resource: str, tenant: SandboxTenant) -> str:
    """``resource`` if app-only tokens can be issued for it; AADSTS500011 otherwise."""
    if resource not in APP_RESOURCES:
        raise AadError.unknown_resource(resource, tenant.tenant_id)
    return resource


@dataclass(frozen=True)
class AppPrincipal:
    """Who an app-only token is for: an app registration's or a managed identity's principal."""

    client_id: str
    service_principal_id: str
    display_name: str
    app_roles: tuple[str, ...]  # on Exchange Online
    graph_app_roles: tuple[str, ...] = ()

    @classmethod
    def of(cls, app: RegisteredApp) -> AppPrincipal:
        return cls(
            app.client_id, app.service_principal_id, app.display_name, app.app_roles, app.graph_app_roles
        )


@dataclass(frozen=True)
class DelegatedScope:
    """A delegated request's scopes: one resource, its permissions, and the OpenID Connect extras."""

    resource: str
    permissions: tuple[str, ...]
    oidc: frozenset[str]

    @classmethod
    def parse(cls, scope_text: str, app: RegisteredApp, tenant: SandboxTenant) -> DelegatedScope:
        """Validate the scopes against the resource's permissions and the app's consent."""
        resources: set[str] = set()
        permissions: list[str] = []
        oidc: set[str] = set()
        for scope in scope_text.split():
            if scope in OIDC_SCOPES:
                oidc.add(scope)
                continue
            resource, permission = _split_resource_scope(scope)
            if resource not in EXCHANGE_RESOURCES | GRAPH_RESOURCES:
                raise AadError.unknown_resource(resource or scope, tenant.tenant_id)
            resources.add(resource)
            known = GRAPH_DELEGATED_PERMISSIONS if is_graph(resource) else EXCHANGE_DELEGATED_PERMISSIONS
            if permission == ".default":
                permissions.extend(consent_for(app, resource))
            elif permission in known:
                if permission not in consent_for(app, resource):
                    raise AadError.consent_required(app.client_id, app.display_name)
                permissions.append(permission)
            else:
                raise AadError.invalid_scope(scope)
        if len(resources) != 1:
            # No resource at all, or tokens for two resources at once: Entra issues one audience.
            raise AadError.invalid_scope(scope_text or "(empty)")
        return cls(resources.pop(), tuple(dict.fromkeys(permissions)), frozenset(oidc))

    @property
    def text(self) -> str:
        """The ``scope`` of the response: the granted resource scopes, then the OIDC ones."""
        granted = [f"{self.resource}/{p}" for p in self.permissions]
        return " ".join([*granted, *sorted(self.oidc - {"offline_access"})])


def b64url_json(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """Signs access and id tokens for the sandbox tenant with the sandbox key."""

    def __init__(self, tenant: SandboxTenant, signing_key: SigningKey, options: IdpOptions) -> None:
        self._tenant = tenant
        self._key = signing_key
        self._options = options
        self.base_url = ""  # "https://127.0.0.1:<port>", set once the server has its port

    @property
    def access_token_issuer(self) -> str:
        return f"{self.base_url}/{self._tenant.tenant_id}/"

    @property
    def id_token_issuer(self) -> str:
        return f"{self.base_url}/{self._tenant.tenant_id}/v2.0"

    def _times(self) -> tuple[int, int]:
        now = int(time.time())
        return now, now + self._options.access_token_lifetime

    def _response(self, access_token: str) -> dict[str, Any]:
        lifetime = self._options.access_token_lifetime
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }
        if self._options.refresh_in is not None:
            body["refresh_in"] = self._options.refresh_in
        return body

    def app_token(self, app: RegisteredApp, resource: str, *, credential: str) -> dict[str, Any]:
        """The response to a client credentials grant."""
        return self._response(self.app_access_token(AppPrincipal.of(app), resource, credential=credential))

    def app_access_token(self, principal: AppPrincipal, resource: str, *, credential: str) -> str:
        """An app-only access token; ``roles`` only when the principal was assigned some, as Entra
        omits the claim for an app without application permissions (SMTP App RBAC)."""
        now, expires = self._times()
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.access_token_issuer,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "app_displayname": principal.display_name,
            "appid": principal.client_id,
            "azp": principal.client_id,
            # 2: a certificate or another assertion (federated, managed identity); 1: a secret.
            "appidacr": "1" if credential == "secret" else "2",
            "idp": self.access_token_issuer,
            "idtyp": "app",
            "oid": principal.service_principal_id,
            "sub": principal.service_principal_id,
            "tid": self._tenant.tenant_id,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
        }
        roles = principal.graph_app_roles if is_graph(resource) else principal.app_roles
        if roles:  # Entra leaves the claim out when no application permission is granted (RBAC)
            claims["roles"] = list(roles)
        return self._key.sign(claims)

    def api_token(
        self, user: SandboxUser, api: RegisteredApp, caller: RegisteredApp, *, lifetime: int
    ) -> str:
        """A user's access token for ``api``'s own API (``api://<client id>``, scope access_as_user),
        as a front end (``caller``) gets it to call a middle tier: what on-behalf-of exchanges."""
        now = int(time.time())
        claims = {
            "aud": f"api://{api.client_id}",
            "iss": self.access_token_issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": caller.client_id,
            "azp": caller.client_id,
            "idtyp": "user",
            "name": user.display_name,
            "oid": user.object_id,
            "scp": OBO_SCOPE,
            "sub": uuid.uuid5(uuid.UUID(api.client_id), user.object_id).hex,
            "tid": self._tenant.tenant_id,
            "upn": user.upn,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
        }
        return self._key.sign(claims)

    def verify_api_token(self, assertion: str, app: RegisteredApp) -> dict[str, Any]:
        """The claims of a user's token for ``app``'s API; Entra's OBO errors when it is not one."""
        audiences = [f"api://{app.client_id}", app.client_id]
        try:
            claims = self._key.verify(assertion, audience=audiences)
        except TokenInvalid as exc:
            reason = str(exc)
            if reason == "token expired":
                raise AadError(
                    "invalid_grant",
                    500133,
                    "Assertion is not within its valid time range. Ensure that the access token is not "
                    "expired before using it for user assertion, or request a new token.",
                ) from exc
            if reason == "wrong audience":
                raise AadError(
                    "invalid_grant",
                    500131,
                    "Assertion audience does not match the Client app presenting the assertion. The "
                    f"expected audience is 'api://{app.client_id}' or '{app.client_id}'.",
                ) from exc
            raise AadError(
                "invalid_grant",
                50013,
                "Assertion failed signature validation. [Reason - The key was not found.]",
            ) from exc
        if claims.get("tid") != self._tenant.tenant_id:
            raise AadError(
                "invalid_grant", 50013, "Assertion failed signature validation: another tenant's token."
            )
        return claims

    def user_tokens(
        self,
        app: RegisteredApp,
        user: SandboxUser,
        scope: DelegatedScope,
        *,
        refresh_token: str | None,
        nonce: str | None = None,
        credential: str = "none",
    ) -> dict[str, Any]:
        """The response to a delegated grant (code, device code, password, refresh token)."""
        now, expires = self._times()
        claims = {
            "aud": scope.resource,
            "iss": self.access_token_issuer,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "acr": "1",
            "amr": ["pwd"],
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "azp": app.client_id,
            "appidacr": {"none": "0", "secret": "1"}.get(credential, "2"),
            "idtyp": "user",
            "name": user.display_name,
            "oid": user.object_id,
            "sub": uuid.uuid5(uuid.UUID(app.client_id), user.object_id).hex,  # pairwise, as Entra's
            "scp": " ".join(scope.permissions),
            "tid": self._tenant.tenant_id,
            "unique_name": user.upn,
            "upn": user.upn,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
        }
        body = self._response(self._key.sign(claims))
        body["scope"] = scope.text
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        body["client_info"] = b64url_json({"uid": user.object_id, "utid": self._tenant.tenant_id})
        if "openid" in scope.oidc:
            body["id_token"] = self._id_token(app, user, nonce, now)
        return body

    def _id_token(self, app: RegisteredApp, user: SandboxUser, nonce: str | None, now: int) -> str:
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": self.id_token_issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.display_name,
            "oid": user.object_id,
            "preferred_username": user.upn,
            "sub": uuid.uuid5(uuid.UUID(app.client_id), user.object_id).hex,
            "tid": self._tenant.tenant_id,
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return self._key.sign(claims)
