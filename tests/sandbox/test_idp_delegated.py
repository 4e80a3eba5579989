"""The sandbox IdP's delegated grants (device code, ROPC, refresh tokens), with real MSAL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.testing import SandboxKeys
from tests.sandbox.idp_helpers import USER_SCOPE, RunningIdp, running_idp, sign_in

OFFICE = "https://outlook.office.com"


@pytest.fixture
def strict_idp(tmp_path: Path, smtp_oauth_sandbox_keys: SandboxKeys) -> Iterator[RunningIdp]:
    with running_idp(tmp_path, smtp_oauth_sandbox_keys, strict_refresh_rotation=True) as running:
        yield running


@pytest.fixture
def manual_idp(tmp_path: Path, smtp_oauth_sandbox_keys: SandboxKeys) -> Iterator[RunningIdp]:
    with running_idp(tmp_path, smtp_oauth_sandbox_keys, device_code_auto_approve=False) as running:
        yield running


def _device_login(running: RunningIdp, **options: Any) -> tuple[Any, dict[str, Any]]:
    app = running.public(**options)
    flow = app.initiate_device_flow(USER_SCOPE)
    return app, app.acquire_token_by_device_flow(flow)


def test_device_code_is_approved_after_the_first_poll(sandbox_idp: RunningIdp) -> None:
    """By default the first poll is authorization_pending and the second gets delegated tokens."""
    app, result = _device_login(sandbox_idp)
    claims = sandbox_idp.key.verify(result["access_token"], audience=OFFICE)
    user = sandbox_idp.tenant.user
    assert claims["scp"] == "SMTP.Send"
    assert claims["upn"] == claims["unique_name"] == user.upn
    assert claims["oid"] == user.object_id
    assert claims["name"] == user.display_name
    assert "roles" not in claims
    assert result["id_token_claims"]["preferred_username"] == user.upn
    assert result["id_token_claims"]["aud"] == sandbox_idp.tenant.public_app.client_id
    assert result["scope"].split()[0] == USER_SCOPE[0]
    assert "refresh_token" in result
    assert [a["username"] for a in app.get_accounts()] == [user.upn]
    assert sandbox_idp.idp.token_requests["device_code"] == 2


def test_device_code_message_points_at_the_sandbox_sign_in_page(sandbox_idp: RunningIdp) -> None:
    """The device flow names the sandbox's /devicelogin page and the user code, as Entra's does."""
    flow = sandbox_idp.public().initiate_device_flow(USER_SCOPE)
    assert flow["verification_uri"] == f"{sandbox_idp.idp.authority_host}/devicelogin"
    assert flow["user_code"] in flow["message"]
    assert flow["interval"] == 1


def test_device_code_waits_for_approval_by_call(manual_idp: RunningIdp) -> None:
    """With auto-approval off, polling stays pending until approve_device_code(user_code)."""
    app = manual_idp.public()
    flow = app.initiate_device_flow(USER_SCOPE)
    first = app.acquire_token_by_device_flow(dict(flow), exit_condition=lambda _flow: True)
    assert first["error"] == "authorization_pending"
    assert manual_idp.idp.pending_user_codes() == [flow["user_code"]]
    results: list[dict[str, Any]] = []
    poller = threading.Thread(target=lambda: results.append(app.acquire_token_by_device_flow(flow)))
    poller.start()
    time.sleep(0.2)
    manual_idp.idp.approve_device_code(flow["user_code"])
    poller.join(timeout=10)
    assert "access_token" in results[0]


def test_device_code_can_be_approved_on_the_sign_in_page(manual_idp: RunningIdp) -> None:
    """POSTing the user code to /devicelogin approves it, as a person would in a browser."""
    app = manual_idp.public()
    flow = app.initiate_device_flow(USER_SCOPE)
    page = manual_idp.post("/devicelogin", {"user_code": flow["user_code"]})
    assert page.status_code == 200
    assert "signed in" in page.text
    assert "access_token" in app.acquire_token_by_device_flow(flow)


def test_declined_device_code_ends_the_flow(manual_idp: RunningIdp) -> None:
    """A declined sign-in answers authorization_declined, which ends MSAL's polling."""
    app = manual_idp.public()
    flow = app.initiate_device_flow(USER_SCOPE)
    manual_idp.idp.decline_device_code(flow["user_code"])
    assert app.acquire_token_by_device_flow(flow)["error"] == "authorization_declined"


def test_each_refresh_returns_a_new_refresh_token(sandbox_idp: RunningIdp) -> None:
    """Refresh tokens rotate: a forced silent refresh brings a new one, and a new access token."""
    app, first = sign_in(sandbox_idp)
    [account] = app.get_accounts()
    second = app.acquire_token_silent_with_error(USER_SCOPE, account, force_refresh=True)
    assert second["token_source"] == "identity_provider"
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]


def test_old_refresh_token_still_works_without_strict_rotation(sandbox_idp: RunningIdp) -> None:
    """Like Entra, a superseded refresh token stays usable unless strict rotation is on."""
    app, first = sign_in(sandbox_idp)
    app.acquire_token_silent_with_error(USER_SCOPE, app.get_accounts()[0], force_refresh=True)
    again = sandbox_idp.public().acquire_token_by_refresh_token(first["refresh_token"], USER_SCOPE)
    assert "access_token" in again


def test_strict_rotation_rejects_a_used_refresh_token(strict_idp: RunningIdp) -> None:
    """With strict_refresh_rotation a used refresh token is invalid_grant AADSTS70000."""
    app, first = sign_in(strict_idp)
    refreshed = app.acquire_token_silent_with_error(USER_SCOPE, app.get_accounts()[0], force_refresh=True)
    stale = strict_idp.public().acquire_token_by_refresh_token(first["refresh_token"], USER_SCOPE)
    newest = strict_idp.public().acquire_token_by_refresh_token(refreshed["refresh_token"], USER_SCOPE)
    assert stale["error"] == "invalid_grant"
    assert stale["error_codes"] == [70000]
    assert "access_token" in newest


def test_revoked_refresh_token_is_invalid_grant(sandbox_idp: RunningIdp) -> None:
    """After revoke_refresh_tokens(), a silent refresh fails with AADSTS70000."""
    app, _ = sign_in(sandbox_idp)
    assert sandbox_idp.idp.revoke_refresh_tokens() == 1
    result = app.acquire_token_silent_with_error(USER_SCOPE, app.get_accounts()[0], force_refresh=True)
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [70000]


def test_inactive_refresh_token_is_700082(sandbox_idp: RunningIdp) -> None:
    """expire_refresh_tokens() simulates 90 days unused: AADSTS700082."""
    app, _ = sign_in(sandbox_idp)
    sandbox_idp.idp.expire_refresh_tokens()
    result = app.acquire_token_silent_with_error(USER_SCOPE, app.get_accounts()[0], force_refresh=True)
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [700082]


def test_refresh_token_of_another_client_is_refused(sandbox_idp: RunningIdp) -> None:
    """A refresh token only works for the app it was issued to."""
    _, first = sign_in(sandbox_idp)
    other = sandbox_idp.confidential().acquire_token_by_refresh_token(first["refresh_token"], USER_SCOPE)
    assert other["error_codes"] == [70000]


def test_username_password_through_idp_http_client(sandbox_idp: RunningIdp) -> None:
    """ROPC works through MSAL with our IdpHttpClient routing the user-realm pre-flight."""
    app = sandbox_idp.public(http_client=sandbox_idp.http_client())
    user = sandbox_idp.tenant.user
    with pytest.warns(DeprecationWarning, match="ropc"):  # MSAL deprecates ROPC for public clients
        result = app.acquire_token_by_username_password(user.upn, user.password, USER_SCOPE)
    claims = sandbox_idp.key.verify(result["access_token"], audience=OFFICE)
    assert claims["upn"] == user.upn
    assert sandbox_idp.idp.token_requests["password"] == 1


def test_wrong_password_is_50126(sandbox_idp: RunningIdp) -> None:
    """A bad password is invalid_grant AADSTS50126."""
    app = sandbox_idp.public(http_client=sandbox_idp.http_client())
    with pytest.warns(DeprecationWarning, match="ropc"):
        result = app.acquire_token_by_username_password(sandbox_idp.tenant.user.upn, "wrong", USER_SCOPE)
    assert (result["error"], result["error_codes"]) == ("invalid_grant", [50126])


def test_unknown_user_is_50034(sandbox_idp: RunningIdp) -> None:
    """A user not in the tenant is invalid_grant AADSTS50034."""
    app = sandbox_idp.public(http_client=sandbox_idp.http_client())
    with pytest.warns(DeprecationWarning, match="ropc"):
        result = app.acquire_token_by_username_password("nobody@sandbox.test", "x", USER_SCOPE)
    assert result["error_codes"] == [50034]
