"""A fake Microsoft identity platform (Entra ID) on 127.0.0.1, over HTTPS, for tests and demos.

FOR TESTING ONLY. It speaks enough of the v2.0 endpoints that unmodified MSAL works against it::

    GET  /{tenant}/v2.0/.well-known/openid-configuration
    GET  /{tenant}/discovery/v2.0/keys                  (also /common/..., /discovery/v2.0/keys)
    GET  /common/discovery/instance                     instance discovery, for this host
    GET  /common/userrealm/{upn}                        404: MSAL's ROPC pre-flight then goes plain
    GET  /{tenant}/oauth2/v2.0/authorize                signs the test user in, redirects back
    POST /{tenant}/oauth2/v2.0/token                    the grants of idp_grants.py
    POST /{tenant}/oauth2/v2.0/devicecode
    GET|POST /devicelogin                               type a device code to approve it
    GET  /msi/token                                     managed identity tokens (App Service form)

``{tenant}`` is the tenant id, its domain, or ``common``/``organizations``; anything else is
AADSTS90002. Requests are answered on threads (MSAL is synchronous), so it runs in a daemon
thread next to an asyncio loop without blocking it.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from smtp_oauth.sandbox.idp.discovery import MULTI_TENANT, instance_metadata, openid_configuration
from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.idp.federation import FEDERATION_PATH, FederatedIssuer
from smtp_oauth.sandbox.idp.grants import DEVICE_CODE_GRANT, GrantStore
from smtp_oauth.sandbox.idp.managed_identity import MANAGED_IDENTITY_PATH, ManagedIdentityEndpoint
from smtp_oauth.sandbox.idp.pages import HttpReply, authorize, device_login_page
from smtp_oauth.sandbox.idp.server import TlsHttpServer
from smtp_oauth.sandbox.idp.tokens import IdpOptions, TokenIssuer
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.tenant import (
    FEDERATED_AUDIENCE,
    FEDERATED_SUBJECT,
    FederatedCredential,
    SandboxTenant,
    SandboxUser,
)

__all__ = ["IdpOptions", "SandboxIdentityProvider"]

log = logging.getLogger("smtp_oauth.sandbox.idp.provider")


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> HttpReply:
    return HttpReply(
        status, json.dumps(body).encode(), "application/json; charset=utf-8", dict(headers or {})
    )


class SandboxIdentityProvider:
    """The fake Entra ID: ``start()`` serves it on a thread; test hooks below change its behaviour."""

    def __init__(
        self,
        tenant: SandboxTenant,
        *,
        signing_key: SigningKey,
        tls_context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_lifetime: int = 3600,
        refresh_in: int | None = None,
        strict_refresh_rotation: bool = False,
        device_code_auto_approve: bool = True,
        device_code_interval: int = 1,
    ) -> None:
        self.tenant = tenant
        self.signing_key = signing_key
        self.options = IdpOptions(
            access_token_lifetime=access_token_lifetime,
            refresh_in=refresh_in,
            strict_refresh_rotation=strict_refresh_rotation,
            device_code_auto_approve=device_code_auto_approve,
            device_code_interval=device_code_interval,
        )
        self._issuer = TokenIssuer(tenant, signing_key, self.options)
        self.grants = GrantStore(tenant, self._issuer, self.options)
        # The IDENTITY_HEADER secret of the managed identity endpoint (App Service rotates its own).
        self.identity_header = secrets.token_urlsafe(24)
        self._managed_identity = ManagedIdentityEndpoint(
            tenant, self._issuer, self.options, self.identity_header
        )
        self.federation = FederatedIssuer()
        self.grants.issuers.append(self.federation)
        self.token_requests: Counter[str] = Counter()  # grant type -> requests, failed ones included
        self._tls = tls_context
        self._address = (host, port)
        self._lock = threading.Lock()
        self._failures: list[tuple[int, int | None]] = []
        self._server: TlsHttpServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def __repr__(self) -> str:
        return f"SandboxIdentityProvider(authority={self.authority!r})"

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve on a daemon thread; ``port`` is the real one afterwards."""
        server = TlsHttpServer(self._address, self._tls, self.dispatch)
        self._server = server
        self.port = server.server_address[1]
        self._issuer.base_url = self.authority_host
        self.federation.url = f"{self.authority_host}/{FEDERATION_PATH}"
        credential = FederatedCredential(self.federation.url, FEDERATED_SUBJECT)
        if credential not in self.tenant.app.federated_credentials:
            self.tenant.app.federated_credentials.append(credential)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-idp", daemon=True
        )
        self._thread.start()
        log.info("sandbox identity provider listening on %s", self.authority_host)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxIdentityProvider:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- where it is ------------------------------------------------------------------------------

    @property
    def authority_host(self) -> str:
        """``https://127.0.0.1:<port>``: the ``identity.authority_host`` to configure."""
        return f"https://{self._address[0]}:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant.tenant_id}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def managed_identity_endpoint(self) -> str:
        """The ``IDENTITY_ENDPOINT`` to export (with ``IDENTITY_HEADER`` = ``identity_header``)."""
        return f"{self.authority_host}{MANAGED_IDENTITY_PATH}"

    def managed_identity_environment(self) -> dict[str, str]:
        """The variables that make msal's ManagedIdentityClient use this endpoint (App Service form)."""
        return {"IDENTITY_ENDPOINT": self.managed_identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    @property
    def instance_discovery_endpoint(self) -> str:
        """Pass as MSAL's ``instance_discovery=`` to have it discover this host instead of Microsoft's."""
        return f"{self.authority_host}/common/discovery/instance"

    # --- test hooks -------------------------------------------------------------------------------

    def user_token_for_api(self, user: SandboxUser | None = None, *, lifetime: int = 3600) -> str:
        """A user's token for the confidential app's own API, as the desktop app obtains it to call a
        middle tier: the assertion on-behalf-of exchanges (default user: the tenant's test user)."""
        return self._issuer.api_token(
            user or self.tenant.user, self.tenant.app, self.tenant.public_app, lifetime=lifetime
        )

    def federated_token(self, *, lifetime: int | None = None) -> str:
        """A workload token the confidential app's federated credential accepts."""
        return self.federation.issue(FEDERATED_SUBJECT, audience=FEDERATED_AUDIENCE, lifetime=lifetime)

    def fail_next(self, n: int = 1, status: int = 503, *, retry_after: int | None = None) -> None:
        """The next ``n`` token/devicecode requests get ``status`` (temporarily_unavailable).

        Without ``retry_after`` no Retry-After header is sent; note that MSAL then remembers a 5xx
        for 5 s (confidential) or 60 s (public client) and answers from memory: use a new app.
        """
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def approve_device_code(self, user_code: str) -> None:
        """Sign the test user in for ``user_code`` (with ``device_code_auto_approve=False``)."""
        self.grants.approve_device_code(user_code)

    def decline_device_code(self, user_code: str) -> None:
        self.grants.decline_device_code(user_code)

    def pending_user_codes(self) -> list[str]:
        return self.grants.pending_user_codes()

    def revoke_refresh_tokens(self) -> int:
        """Every refresh token now fails with AADSTS70000 (as after "Revoke sessions")."""
        return self.grants.revoke_refresh_tokens()

    def expire_refresh_tokens(self) -> int:
        """Every refresh token now fails with AADSTS700082 (expired after 90 days unused)."""
        return self.grants.expire_refresh_tokens()

    # --- HTTP -------------------------------------------------------------------------------------

    def dispatch(
        self, method: str, target: str, form: dict[str, str], headers: Mapping[str, str] | None = None
    ) -> HttpReply:
        """Route one request; every AadError becomes Entra's JSON error."""
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        headers = headers or {}
        correlation_id = headers.get("client-request-id")
        if url.path == MANAGED_IDENTITY_PATH and method == "GET":
            with self._lock:
                self.token_requests["managed_identity"] += 1
            reply = self._managed_identity.answer(query, headers)
            log.info("managed identity token request -> HTTP %d", reply.status)
            return reply
        if parts[:1] == [FEDERATION_PATH] and method == "GET":
            return self._federation_document(parts[1:])
        try:
            return self._route(method, parts, query, form)
        except AadError as error:
            body = error.body(base_url=self.authority_host, correlation_id=correlation_id)
            return _json(error.status, body, error.headers)

    def _route(  # noqa: PLR0911  # a flat route table reads best as early returns
        self, method: str, parts: list[str], query: dict[str, str], form: dict[str, str]
    ) -> HttpReply:
        if parts == ["common", "discovery", "instance"] and method == "GET":
            return _json(200, instance_metadata(self.authority_host, query))
        if len(parts) == 3 and parts[:2] == ["common", "userrealm"]:
            return _json(404, {})
        if parts == ["devicelogin"]:
            return device_login_page(method, form, grants=self.grants)
        if parts[-1:] == ["keys"] and "discovery" in parts[:2] and method == "GET":
            if parts[0] != "discovery":
                self._check_tenant(parts[0])
            return _json(200, self.signing_key.jwks())
        if len(parts) < 2:
            return _json(404, {"error": "not_found"})
        tenant, rest = parts[0], parts[1:]
        self._check_tenant(tenant)
        if rest == ["v2.0", ".well-known", "openid-configuration"] and method == "GET":
            config = openid_configuration(
                self.authority_host, tenant, self.tenant.tenant_id, self.tenant.domain
            )
            return _json(200, config)
        if rest == ["oauth2", "v2.0", "authorize"] and method == "GET":
            return authorize(query, tenant=self.tenant, grants=self.grants, base_url=self.authority_host)
        if rest == ["oauth2", "v2.0", "token"] and method == "POST":
            return self._token(tenant, form)
        if rest == ["oauth2", "v2.0", "devicecode"] and method == "POST":
            self._maybe_fail()
            verification_uri = f"{self.authority_host}/devicelogin"
            return _json(200, self.grants.device_authorization(form, verification_uri=verification_uri))
        return _json(404, {"error": "not_found"})

    def _federation_document(self, rest: list[str]) -> HttpReply:
        if rest == [".well-known", "openid-configuration"]:
            return _json(200, self.federation.openid_configuration())
        if rest == ["keys"]:
            return _json(200, self.federation.jwks())
        return _json(404, {"error": "not_found"})

    def _check_tenant(self, tenant: str) -> None:
        if tenant.lower() not in MULTI_TENANT and not self.tenant.knows_tenant(tenant):
            raise AadError.unknown_tenant(tenant)

    def _maybe_fail(self) -> None:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            raise AadError.temporarily_unavailable(*failure)

    def _token(self, tenant: str, form: dict[str, str]) -> HttpReply:
        grant_type = form.get("grant_type", "")
        with self._lock:
            self.token_requests["device_code" if grant_type == DEVICE_CODE_GRANT else grant_type] += 1
        client_id = form.get("client_id", "?")
        try:
            self._maybe_fail()
            audiences = [
                f"{self.authority_host}/{tenant}/oauth2/v2.0/token",
                f"{self.authority}/oauth2/v2.0/token",
                f"{self.authority}/v2.0",
            ]
            body = self.grants.token(form, audiences=audiences)
        except AadError as error:
            log.info(
                "token request grant=%s client=%s -> AADSTS%s %s",
                grant_type,
                client_id,
                error.code,
                error.error,
            )
            raise
        log.info("token request grant=%s client=%s -> issued", grant_type, client_id)
        return _json(200, body)
