"""The browser-facing endpoints: ``/authorize`` and the device code sign-in page.

``/authorize`` signs in the tenant's test user without showing a page (there is nobody to type a
password) and sends the browser back to the app's redirect URI with ``code`` and ``state``:
a 302 for ``response_mode=query``/``fragment``, or, for ``form_post`` (what MSAL's interactive flow
asks for), an HTML form that submits itself, as Entra's is. Problems that make the redirect URI
untrustworthy (unknown app, unregistered redirect URI) get an error page instead of a redirect
(RFC 6749 4.1.2.1); the rest go back to the app as ``error``/``error_description``.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from smtp_oauth.sandbox.idp.errors import AadError
from smtp_oauth.sandbox.idp.grants import GrantStore
from smtp_oauth.sandbox.tenant import RegisteredApp, SandboxTenant

__all__ = ["HttpReply", "authorize", "device_login_page", "redirect_uri_registered"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_RESPONSE_MODES = frozenset({"query", "fragment", "form_post"})


@dataclass(frozen=True)
class HttpReply:
    """What the HTTP layer sends back."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def redirect_uri_registered(uri: str, registered: tuple[str, ...]) -> bool:
    """Exact match, except that loopback ``http`` URIs match on any port (RFC 8252 7.3)."""
    if uri in registered:
        return True
    asked = urlsplit(uri)
    if asked.scheme != "http" or asked.hostname not in _LOOPBACK_HOSTS or asked.query or asked.fragment:
        return False
    for candidate in registered:
        known = urlsplit(candidate)
        same_host = known.scheme == "http" and known.hostname == asked.hostname
        if same_host and (known.path or "/") == (asked.path or "/"):
            return True
    return False


def _page(status: int, title: str, text: str, extra: str = "") -> HttpReply:
    body = (
        f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{extra}"
        "<p><small>smtp-oauth sandbox identity provider: for testing only.</small></p></body></html>"
    )
    return HttpReply(status, body.encode())


def _error_page(error: AadError) -> HttpReply:
    return _page(400, "Sign in: error", f"AADSTS{error.code}: {error.description}")


def _send_back(redirect_uri: str, mode: str, params: dict[str, str]) -> HttpReply:
    if mode == "form_post":
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
            for k, v in params.items()
        )
        body = (
            "<html><head><title>Working...</title></head><body>"
            f'<form method="POST" name="hiddenform" action="{html.escape(redirect_uri)}">{inputs}'
            "<noscript><p>Script is disabled. Click Submit to continue.</p>"
            '<input type="submit" value="Submit"/></noscript></form>'
            '<script language="javascript">document.forms[0].submit();</script></body></html>'
        )
        return HttpReply(200, body.encode())
    separator = "#" if mode == "fragment" else ("&" if "?" in redirect_uri else "?")
    location = f"{redirect_uri}{separator}{urlencode(params)}"
    return HttpReply(302, b"", headers={"Location": location})


def _check_response_type(response_type: str) -> None:
    # Only the authorization code flow: implicit and hybrid flows are of no use for SMTP.
    if response_type != "code":
        raise AadError(
            "unsupported_response_type",
            700054,
            f"response_type '{response_type}' is not enabled for the application.",
        )


def _code_challenge(params: Mapping[str, str]) -> tuple[str | None, str]:
    challenge = params.get("code_challenge") or None
    method = params.get("code_challenge_method") or "plain"  # RFC 7636 4.3: plain when absent
    if challenge is not None and method not in {"S256", "plain"}:
        raise AadError(
            "invalid_request", 501491, f"Unsupported code_challenge_method '{method}'; use 'S256'."
        )
    return challenge, method


def authorize(
    params: Mapping[str, str], *, tenant: SandboxTenant, grants: GrantStore, base_url: str
) -> HttpReply:
    """Answer ``GET /{tenant}/oauth2/v2.0/authorize``."""
    try:
        client_id = params.get("client_id") or ""
        if not client_id:
            raise AadError.missing_parameter("client_id")
        app: RegisteredApp = grants.application(client_id)
        redirect_uri = params.get("redirect_uri") or ""
        if not redirect_uri:
            raise AadError.missing_parameter("redirect_uri")
        if not redirect_uri_registered(redirect_uri, app.redirect_uris):
            raise AadError.redirect_uri_mismatch(redirect_uri, app.client_id)
    except AadError as error:
        return _error_page(error)

    mode = params.get("response_mode") or "query"
    mode = mode if mode in _RESPONSE_MODES else "query"
    state = {"state": params["state"]} if "state" in params else {}
    try:
        _check_response_type(params.get("response_type", ""))
        challenge, method = _code_challenge(params)
        code = grants.issue_code(
            app,
            redirect_uri=redirect_uri,
            scope_text=params.get("scope", ""),
            code_challenge=challenge,
            code_challenge_method=method,
            nonce=params.get("nonce"),
        )
    except AadError as error:
        body = error.body(base_url=base_url)
        failure = {"error": error.error, "error_description": body["error_description"]}
        return _send_back(redirect_uri, mode, {**failure, **state})
    return _send_back(redirect_uri, mode, {"code": code, **state, "session_state": str(uuid.uuid4())})


def device_login_page(method: str, form: Mapping[str, str], *, grants: GrantStore) -> HttpReply:
    """``/devicelogin``: enter a device code to sign the test user in (GET shows, POST approves)."""
    entry = (
        '<form method="POST"><label>Code <input name="user_code" autofocus/></label>'
        '<input type="submit" value="Next"/></form>'
    )
    if method == "GET":
        return _page(200, "Enter code", "Enter the code displayed on your app or device.", entry)
    user_code = form.get("user_code", "")
    try:
        grants.approve_device_code(user_code)
    except KeyError:
        return _page(400, "Enter code", "That code wasn't recognized. Check it and try again.", entry)
    return _page(
        200,
        "You're signed in",
        "You have signed in on your device as the sandbox's test user. You may now close this window.",
    )
