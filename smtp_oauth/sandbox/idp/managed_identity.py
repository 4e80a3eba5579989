"""The sandbox's managed identity endpoint, in the App Service form msal uses when it sees
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in the environment.

    GET /msi/token?api-version=2019-08-01&resource=<uri>[&client_id=<user-assigned id>]
    X-IDENTITY-HEADER: <the value of IDENTITY_HEADER>

answers ``{"access_token", "expires_on" (epoch seconds, a string), "resource", "token_type",
"client_id"}``, errors as ``{"statusCode", "message"}``: the App Service REST protocol
(https://learn.microsoft.com/en-us/azure/app-service/overview-managed-identity#rest-endpoint-reference).
Without ``client_id`` (nor ``mi_res_id``/``object_id``) the system-assigned identity answers.
Real App Service serves this on plain HTTP on localhost; msal does not require https for it
(only for authorities), but the sandbox serves it next to its IdP, over HTTPS.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping

from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.idp.pages import HttpReply
from smtp_oauth.sandbox.idp.tokens import AppPrincipal, IdpOptions, TokenIssuer, check_app_resource
from smtp_oauth.sandbox.tenant import ManagedIdentity, SandboxTenant

__all__ = ["IDENTITY_HEADER", "MANAGED_IDENTITY_PATH", "ManagedIdentityEndpoint"]

MANAGED_IDENTITY_PATH = "/msi/token"
IDENTITY_HEADER = "X-IDENTITY-HEADER"
_API_VERSION = "2019-08-01"


def _error(status: int, message: str) -> HttpReply:
    body = json.dumps({"statusCode": status, "message": message}).encode()
    return HttpReply(status, body, "application/json; charset=utf-8")


class ManagedIdentityEndpoint:
    """Issues the tenant's managed identities' tokens to callers that know the header secret."""

    def __init__(self, tenant: SandboxTenant, issuer: TokenIssuer, options: IdpOptions, secret: str) -> None:
        self._tenant = tenant
        self._issuer = issuer
        self._options = options
        self._secret = secret

    def __repr__(self) -> str:
        return f"ManagedIdentityEndpoint(tenant={self._tenant.tenant_id!r})"

    def answer(self, query: Mapping[str, str], headers: Mapping[str, str]) -> HttpReply:
        presented = headers.get(IDENTITY_HEADER.lower(), "")
        if not presented or not hmac.compare_digest(presented.encode(), self._secret.encode()):
            return _error(401, "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong.")
        if query.get("api-version") != _API_VERSION:
            return _error(400, f"api-version must be {_API_VERSION}.")
        resource = query.get("resource", "")
        if not resource:
            return _error(400, "The resource parameter is required.")
        identity = self._identity(query)
        if identity is None:
            return _error(
                400, "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId."
            )
        try:
            check_app_resource(resource.removesuffix("/"), self._tenant)
        except AadError as error:
            # App Service passes Entra's refusal on as a 500 with its text (msal reports it as-is).
            return _error(500, f"AADSTS{error.code}: {error.description}")
        principal = AppPrincipal(
            identity.client_id, identity.service_principal_id, identity.display_name, identity.app_roles
        )
        token = self._issuer.app_access_token(principal, resource, credential="managed_identity")
        body = {
            "access_token": token,
            "expires_on": str(int(time.time()) + self._options.access_token_lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }
        return HttpReply(200, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _identity(self, query: Mapping[str, str]) -> ManagedIdentity | None:
        wanted = query.get("client_id") or query.get("object_id") or query.get("mi_res_id")
        for identity in self._tenant.managed_identities:
            if wanted is None and identity.system_assigned:
                return identity
            ids = {identity.client_id.lower(), identity.service_principal_id.lower()}
            if wanted is not None and not identity.system_assigned and wanted.lower() in ids:
                return identity
        return None
