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

``{tenant}`` is the tenant id, its domain, or ``common``/``organizations``; anything else is
AADSTS90002. Requests are answered on threads (MSAL is synchronous), so it runs in a daemon
thread next to an asyncio loop without blocking it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from smtp_oauth.sandbox.idp_errors import AadError
from smtp_oauth.sandbox.idp_grants import DEVICE_CODE_GRANT, GrantStore
from smtp_oauth.sandbox.idp_pages import HttpReply, authorize, device_login_page
from smtp_oauth.sandbox.idp_tokens import IdpOptions, TokenIssuer
from smtp_oauth.sandbox.keys import SigningKey
from smtp_oauth.sandbox.tenant import SandboxTenant

__all__ = ["IdpOptions", "SandboxIdentityProvider"]

log = logging.getLogger("smtp_oauth.sandbox.idp")

_MULTI_TENANT = frozenset({"common", "organizations"})
_MAX_BODY = 1024 * 1024


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> HttpReply:
    return HttpReply(
        status, json.dumps(body).encode(), "application/json; charset=utf-8", dict(headers or {})
    )


class _TlsServer(ThreadingHTTPServer):
    """A threading HTTP server that does the TLS handshake on the request's thread, not in accept()."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], tls: ssl.SSLContext, provider: SandboxIdentityProvider
    ) -> None:
        self.tls = tls
        self.provider = provider
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        connection = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.connections_lock:
            self.open_connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)

    def close_open_connections(self) -> None:
        """Drop idle keep-alive connections so their threads end with the server."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions expect
    server_version = "smtp-oauth-sandbox-idp"
    timeout = 30
    server: _TlsServer

    def handle(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", self.client_address, exc)
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
        # The request line's query string can hold codes; log the path only, and only at DEBUG.
        log.debug("%s %s", self.command, urlsplit(self.path).path)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY)).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            # client_secret_basic (RFC 6749 2.3.1): url-encoded id and secret, base64'd.
            try:
                decoded = base64.b64decode(basic[6:].strip()).decode()
            except ValueError:
                decoded = ""
            client_id, _, secret = decoded.partition(":")
            form.setdefault("client_id", unquote(client_id))
            form.setdefault("client_secret", unquote(secret))
        return form

    def _reply(self, reply: HttpReply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def do_GET(self) -> None:
        correlation_id = self.headers.get("client-request-id")
        self._reply(self.server.provider.dispatch("GET", self.path, {}, correlation_id=correlation_id))

    def do_POST(self) -> None:
        form = self._form()
        correlation_id = self.headers.get("client-request-id")
        self._reply(self.server.provider.dispatch("POST", self.path, form, correlation_id=correlation_id))


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
        self.token_requests: Counter[str] = Counter()  # grant type -> requests, failed ones included
        self._tls = tls_context
        self._address = (host, port)
        self._lock = threading.Lock()
        self._failures: list[tuple[int, int | None]] = []
        self._server: _TlsServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def __repr__(self) -> str:
        return f"SandboxIdentityProvider(authority={self.authority!r})"

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve on a daemon thread; ``port`` is the real one afterwards."""
        server = _TlsServer(self._address, self._tls, self)
        self._server = server
        self.port = server.server_address[1]
        self._issuer.base_url = self.authority_host
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
        server.server_close()
        server.close_open_connections()
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
    def instance_discovery_endpoint(self) -> str:
        """Pass as MSAL's ``instance_discovery=`` to have it discover this host instead of Microsoft's."""
        return f"{self.authority_host}/common/discovery/instance"

    # --- test hooks -------------------------------------------------------------------------------

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
        self, method: str, target: str, form: dict[str, str], *, correlation_id: str | None = None
    ) -> HttpReply:
        """Route one request; every AadError becomes Entra's JSON error."""
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            return self._route(method, parts, query, form)
        except AadError as error:
            body = error.body(base_url=self.authority_host, correlation_id=correlation_id)
            return _json(error.status, body, error.headers)

    def _route(  # noqa: PLR0911  # a flat route table reads best as early returns
        self, method: str, parts: list[str], query: dict[str, str], form: dict[str, str]
    ) -> HttpReply:
        if parts == ["common", "discovery", "instance"] and method == "GET":
            return self._instance_discovery(query)
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
            return _json(200, self._openid_configuration(tenant))
        if rest == ["oauth2", "v2.0", "authorize"] and method == "GET":
            return authorize(query, tenant=self.tenant, grants=self.grants, base_url=self.authority_host)
        if rest == ["oauth2", "v2.0", "token"] and method == "POST":
            return self._token(tenant, form)
        if rest == ["oauth2", "v2.0", "devicecode"] and method == "POST":
            self._maybe_fail()
            verification_uri = f"{self.authority_host}/devicelogin"
            return _json(200, self.grants.device_authorization(form, verification_uri=verification_uri))
        return _json(404, {"error": "not_found"})

    def _check_tenant(self, tenant: str) -> None:
        if tenant.lower() not in _MULTI_TENANT and not self.tenant.knows_tenant(tenant):
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

    def _openid_configuration(self, tenant: str) -> dict[str, Any]:
        # Like Entra: a domain name resolves to the tenant id; common/organizations stay as asked.
        segment = tenant if tenant.lower() in _MULTI_TENANT else self.tenant.tenant_id
        base = f"{self.authority_host}/{segment}"
        issuer_tenant = "{tenantid}" if tenant.lower() in _MULTI_TENANT else self.tenant.tenant_id
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.authority_host}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code",
                "client_credentials",
                "refresh_token",
                "password",
                DEVICE_CODE_GRANT,
            ],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "oid",
            ],
            "tenant_region_scope": None,
            "cloud_instance_name": self.tenant.domain,
        }

    def _instance_discovery(self, query: Mapping[str, str]) -> HttpReply:
        # MSAL asks with the authority's authorize URL, whose port it has dropped (msal/authority.py).
        path = urlsplit(query.get("authorization_endpoint", "")).path
        tenant = next((p for p in path.split("/") if p), "common")
        netloc = f"{self._address[0]}:{self.port}"
        return _json(
            200,
            {
                "tenant_discovery_endpoint": (
                    f"{self.authority_host}/{tenant}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {
                        "preferred_network": netloc,
                        "preferred_cache": netloc,
                        "aliases": [netloc, self._address[0]],
                    }
                ],
            },
        )
