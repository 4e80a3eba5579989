"""The sandbox IdP's refusals: Entra's status, error, AADSTS code and JSON shape."""

from __future__ import annotations

from pathlib import Path

import msal
import pytest

from smtp_oauth.sandbox.tenant import make_tenant
from tests.sandbox.idp_helpers import APP_SCOPE, USER_SCOPE, RunningIdp


def _token(running: RunningIdp, **form: str) -> tuple[int, dict[str, object]]:
    response = running.post(f"/{running.tenant.tenant_id}/oauth2/v2.0/token", form)
    return response.status_code, response.json()


def test_wrong_secret_is_401_invalid_client_7000215(sandbox_idp: RunningIdp) -> None:
    """A wrong secret: 401 invalid_client AADSTS7000215, in Entra's full JSON shape."""
    result = sandbox_idp.confidential("not-the-secret").acquire_token_for_client(APP_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(result)
    status, _ = _token(
        sandbox_idp,
        grant_type="client_credentials",
        client_id=sandbox_idp.tenant.app.client_id,
        client_secret="nope",
        scope=APP_SCOPE[0],
    )
    assert status == 401


def test_unknown_client_is_700016(sandbox_idp: RunningIdp) -> None:
    """An app id the tenant does not know: 400 unauthorized_client AADSTS700016."""
    app = sandbox_idp.confidential(client_id="00000000-0000-0000-0000-00000000beef")
    result = app.acquire_token_for_client(APP_SCOPE)
    assert (result["error"], result["error_codes"]) == ("unauthorized_client", [700016])


def test_unknown_tenant_is_90002(sandbox_idp: RunningIdp) -> None:
    """Another tenant: 400 invalid_request AADSTS90002, so MSAL cannot even discover it."""
    response = sandbox_idp.post("/contoso.example/oauth2/v2.0/token", {"grant_type": "client_credentials"})
    assert (response.status_code, response.json()["error"], response.json()["error_codes"]) == (
        400,
        "invalid_request",
        [90002],
    )
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        sandbox_idp.confidential(authority=f"{sandbox_idp.idp.authority_host}/contoso.example")


def test_tenant_domain_name_is_accepted(sandbox_idp: RunningIdp) -> None:
    """The tenant's domain works as an authority; discovery answers with the tenant id."""
    app = sandbox_idp.confidential(authority=f"{sandbox_idp.idp.authority_host}/sandbox.test")
    assert "access_token" in app.acquire_token_for_client(APP_SCOPE)
    config = sandbox_idp.get("/sandbox.test/v2.0/.well-known/openid-configuration").json()
    assert sandbox_idp.tenant.tenant_id in config["token_endpoint"]


def test_unknown_resource_is_500011(sandbox_idp: RunningIdp) -> None:
    """A resource the tenant lacks: invalid_resource AADSTS500011."""
    result = sandbox_idp.confidential().acquire_token_for_client(["https://graph.example/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_resource", [500011])


def test_app_only_scope_must_be_default(sandbox_idp: RunningIdp) -> None:
    """Client credentials with a named permission: invalid_scope AADSTS1002012."""
    result = sandbox_idp.confidential().acquire_token_for_client(USER_SCOPE)
    assert (result["error"], result["error_codes"]) == ("invalid_scope", [1002012])


def test_unknown_delegated_permission_is_70011(sandbox_idp: RunningIdp) -> None:
    """A permission Exchange does not define: invalid_scope AADSTS70011."""
    flow = sandbox_idp.public().initiate_device_flow(["https://outlook.office.com/Mail.Everything"])
    assert (flow["error"], flow["error_codes"]) == ("invalid_scope", [70011])


def test_permission_without_consent_is_65001(sandbox_idp: RunningIdp) -> None:
    """A real Exchange permission nobody consented to: invalid_grant AADSTS65001."""
    flow = sandbox_idp.public().initiate_device_flow(["https://outlook.office.com/IMAP.AccessAsUser.All"])
    assert flow["error_codes"] == [65001]


def test_public_client_must_not_send_a_secret(sandbox_idp: RunningIdp) -> None:
    """A secret from a public client: AADSTS700025."""
    _, body = _token(
        sandbox_idp,
        grant_type="refresh_token",
        client_id=sandbox_idp.tenant.public_app.client_id,
        client_secret="s",
        refresh_token="r",
    )
    assert body["error_codes"] == [700025]


def test_confidential_client_needs_a_credential(sandbox_idp: RunningIdp) -> None:
    """A confidential app with neither secret nor assertion: invalid_client AADSTS7000218."""
    status, body = _token(
        sandbox_idp,
        grant_type="client_credentials",
        client_id=sandbox_idp.tenant.app.client_id,
        scope=APP_SCOPE[0],
    )
    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [7000218])


def test_unregistered_certificate_is_refused(sandbox_idp: RunningIdp, tmp_path: Path) -> None:
    """An assertion signed with a certificate the app does not have: invalid_client AADSTS700027."""
    stranger = make_tenant(tmp_path / "other").certificate_path.read_text()
    result = sandbox_idp.confidential(
        {"private_key": stranger, "public_certificate": stranger}
    ).acquire_token_for_client(APP_SCOPE)
    assert (result["error"], result["error_codes"]) == ("invalid_client", [700027])


def test_unknown_refresh_token_is_70000(sandbox_idp: RunningIdp) -> None:
    """A refresh token the IdP never issued: invalid_grant AADSTS70000."""
    result = sandbox_idp.public().acquire_token_by_refresh_token("1.Anot-a-real-token", USER_SCOPE)
    assert (result["error"], result["error_codes"]) == ("invalid_grant", [70000])


def test_unsupported_grant_type_is_70003(sandbox_idp: RunningIdp) -> None:
    """A grant type Entra does not know: unsupported_grant_type AADSTS70003."""
    _, body = _token(sandbox_idp, grant_type="magic", client_id=sandbox_idp.tenant.public_app.client_id)
    assert (body["error"], body["error_codes"]) == ("unsupported_grant_type", [70003])


def test_error_echoes_the_client_request_id(sandbox_idp: RunningIdp) -> None:
    """correlation_id is the client-request-id the client sent, so logs on both sides line up."""
    response = sandbox_idp.post(
        f"/{sandbox_idp.tenant.tenant_id}/oauth2/v2.0/token",
        {"grant_type": "client_credentials"},
        headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
    )
    assert response.json()["correlation_id"] == "11111111-2222-3333-4444-555555555555"


def test_errors_never_contain_the_secret(sandbox_idp: RunningIdp) -> None:
    """An error description names the app, never the secret that was sent."""
    result = sandbox_idp.confidential("wrong-secret-value").acquire_token_for_client(APP_SCOPE)
    assert "wrong-secret-value" not in str(result)


def test_instance_discovery_on_its_own_host(sandbox_idp: RunningIdp) -> None:
    """MSAL pointed at the IdP's /common/discovery/instance discovers this host and works."""
    app = msal.ConfidentialClientApplication(
        sandbox_idp.tenant.app.client_id,
        client_credential=sandbox_idp.tenant.app.client_secret,
        authority=sandbox_idp.idp.authority,
        verify=str(sandbox_idp.ca_file),
        instance_discovery=sandbox_idp.idp.instance_discovery_endpoint,
    )
    assert "access_token" in app.acquire_token_for_client(APP_SCOPE)


def test_user_realm_preflight_is_404(sandbox_idp: RunningIdp) -> None:
    """/common/userrealm/<upn> answers 404, so MSAL's ROPC falls back to a plain password grant."""
    assert sandbox_idp.get("/common/userrealm/sender@sandbox.test?api-version=1.0").status_code == 404
