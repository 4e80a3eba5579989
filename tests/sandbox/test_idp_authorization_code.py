"""/authorize and the authorization code grant: real MSAL interactive login with a fake browser."""

from __future__ import annotations

import threading
import webbrowser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from tests.sandbox.idp_helpers import (
    LOOPBACK_REDIRECT,
    USER_SCOPE,
    RunningIdp,
    browser_redirect,
    read_form_post,
    sign_in,
)


def _code_flow(running: RunningIdp) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """An auth code flow and the redirect's parameters, not yet redeemed."""
    app = running.public()
    flow = app.initiate_auth_code_flow(USER_SCOPE, redirect_uri=LOOPBACK_REDIRECT, response_mode="form_post")
    return app, flow, browser_redirect(running, flow["auth_uri"])


def _redeem(running: RunningIdp, flow: dict[str, Any], code: str, **changes: str) -> requests.Response:
    """A raw token request for ``code``, with some form fields changed."""
    form = {
        "grant_type": "authorization_code",
        "client_id": running.tenant.public_app.client_id,
        "code": code,
        "redirect_uri": LOOPBACK_REDIRECT,
        "code_verifier": flow["code_verifier"],
        "scope": USER_SCOPE[0],
        **changes,
    }
    return running.post(f"/{running.tenant.tenant_id}/oauth2/v2.0/token", form)


def test_interactive_login_with_a_fake_browser(
    sandbox_idp: RunningIdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acquire_token_interactive works end to end: /authorize's form_post reaches MSAL's listener."""
    monkeypatch.setenv("BROWSER", "fake-browser")  # keeps MSAL from preferring an installed Edge
    opened: list[str] = []

    def fake_browser(uri: str, *args: object, **kwargs: object) -> bool:
        opened.append(uri)
        page = requests.get(uri, allow_redirects=False, verify=str(sandbox_idp.ca_file), timeout=10)
        action, fields = read_form_post(page.text)
        # The browser submits the form to MSAL's loopback listener, which answers once MSAL listens.
        threading.Thread(target=requests.post, args=(action,), kwargs={"data": fields, "timeout": 10}).start()
        return True

    monkeypatch.setattr(webbrowser, "open", fake_browser)
    app = sandbox_idp.public()
    result = app.acquire_token_interactive(USER_SCOPE, timeout=20)
    assert "access_token" in result, result.get("error_description")
    query = dict(parse_qsl(urlsplit(opened[0]).query))
    assert (query["response_mode"], query["code_challenge_method"]) == ("form_post", "S256")
    assert result["id_token_claims"]["preferred_username"] == sandbox_idp.tenant.user.upn
    assert sandbox_idp.idp.token_requests["authorization_code"] == 1


def test_id_token_echoes_the_nonce(sandbox_idp: RunningIdp) -> None:
    """The id token carries /authorize's nonce (MSAL refuses the result otherwise)."""
    app = sandbox_idp.public()
    flow = app.initiate_auth_code_flow(USER_SCOPE, redirect_uri=LOOPBACK_REDIRECT, response_mode="form_post")
    nonce = dict(parse_qsl(urlsplit(flow["auth_uri"]).query))["nonce"]
    result = app.acquire_token_by_auth_code_flow(flow, browser_redirect(sandbox_idp, flow["auth_uri"]))
    assert result["id_token_claims"]["nonce"] == nonce


def test_query_mode_redirects_with_code_and_state(sandbox_idp: RunningIdp) -> None:
    """Without form_post, /authorize answers 302 to the redirect URI with code and state."""
    app = sandbox_idp.public()
    with pytest.warns(UserWarning, match="form_post"):  # MSAL recommends form_post; query still works
        flow = app.initiate_auth_code_flow(
            USER_SCOPE, redirect_uri="http://localhost:51234", response_mode="query"
        )
    page = sandbox_idp.get(
        urlsplit(flow["auth_uri"])._replace(scheme="", netloc="").geturl(), allow_redirects=False
    )
    location = urlsplit(page.headers["Location"])
    assert (page.status_code, location.netloc) == (302, "localhost:51234")
    params = dict(parse_qsl(location.query))
    assert params["state"] == flow["state"]
    assert params["code"]


def test_code_is_single_use(sandbox_idp: RunningIdp) -> None:
    """Redeeming a code twice is invalid_grant AADSTS54005."""
    app, flow, redirect = _code_flow(sandbox_idp)
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, redirect)
    again = _redeem(sandbox_idp, flow, redirect["code"])
    assert (again.status_code, again.json()["error_codes"]) == (400, [54005])


def test_pkce_verifier_must_match(sandbox_idp: RunningIdp) -> None:
    """A wrong code_verifier is invalid_grant AADSTS501481."""
    _, flow, redirect = _code_flow(sandbox_idp)
    response = _redeem(sandbox_idp, flow, redirect["code"], code_verifier="x" * 43)
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_codes"] == [501481]


def test_redirect_uri_must_equal_the_authorize_one(sandbox_idp: RunningIdp) -> None:
    """Redeeming with another redirect_uri is refused with AADSTS50011."""
    _, flow, redirect = _code_flow(sandbox_idp)
    response = _redeem(sandbox_idp, flow, redirect["code"], redirect_uri="http://localhost:9999")
    assert response.json()["error_codes"] == [50011]


def test_unregistered_redirect_uri_gets_an_error_page(sandbox_idp: RunningIdp) -> None:
    """/authorize never redirects to an unregistered URI: a 400 page names AADSTS50011."""
    query = urlencode(
        {
            "client_id": sandbox_idp.tenant.public_app.client_id,
            "response_type": "code",
            "redirect_uri": "https://evil.example/callback",
            "scope": USER_SCOPE[0],
        }
    )
    page = sandbox_idp.get(
        f"/{sandbox_idp.tenant.tenant_id}/oauth2/v2.0/authorize?{query}", allow_redirects=False
    )
    assert page.status_code == 400
    assert "AADSTS50011" in page.text


def test_scope_errors_go_back_to_the_app(sandbox_idp: RunningIdp) -> None:
    """A bad scope at /authorize is redirected back as error + AADSTS description + state."""
    query = urlencode(
        {
            "client_id": sandbox_idp.tenant.public_app.client_id,
            "response_type": "code",
            "redirect_uri": LOOPBACK_REDIRECT,
            "scope": "https://outlook.office.com/Mail.Everything",
            "state": "s1",
        }
    )
    page = sandbox_idp.get(
        f"/{sandbox_idp.tenant.tenant_id}/oauth2/v2.0/authorize?{query}", allow_redirects=False
    )
    params = dict(parse_qsl(urlsplit(page.headers["Location"]).query))
    assert params["error"] == "invalid_scope"
    assert params["error_description"].startswith("AADSTS70011")
    assert params["state"] == "s1"


def test_confidential_app_can_sign_users_in(sandbox_idp: RunningIdp) -> None:
    """The confidential app redeems codes with its secret (web-app style)."""
    _, result = sign_in(sandbox_idp, sandbox_idp.confidential())
    claims = sandbox_idp.key.verify(result["access_token"], audience="https://outlook.office.com")
    assert (claims["appid"], claims["appidacr"]) == (sandbox_idp.tenant.app.client_id, "1")
