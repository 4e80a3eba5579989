"""The sandbox IdP's client credentials grant, driven by real MSAL over HTTPS."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes

from smtp_oauth.testing import SandboxKeys
from tests.sandbox.idp_helpers import APP_SCOPE, RunningIdp, running_idp


@pytest.fixture
def sandbox_idp(tmp_path: Path, smtp_oauth_sandbox_keys: SandboxKeys) -> Iterator[RunningIdp]:
    with running_idp(
        tmp_path, smtp_oauth_sandbox_keys, access_token_lifetime=1800, refresh_in=900
    ) as running:
        yield running


def test_client_secret_gets_an_exchange_app_only_token(sandbox_idp: RunningIdp) -> None:
    """A client secret buys an RS256 token with Exchange's app-only claims."""
    result = sandbox_idp.confidential().acquire_token_for_client(APP_SCOPE)
    claims = sandbox_idp.key.verify(result["access_token"], audience="https://outlook.office365.com")
    tenant = sandbox_idp.tenant
    assert claims["roles"] == ["SMTP.SendAsApp"]
    assert claims["appid"] == claims["azp"] == tenant.app.client_id
    assert claims["tid"] == tenant.tenant_id
    assert claims["oid"] == tenant.app.service_principal_id
    assert claims["iss"] == f"{sandbox_idp.idp.authority}/"
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    assert jwt.get_unverified_header(result["access_token"])["kid"] == sandbox_idp.key.key_id


def test_token_lifetime_and_refresh_in_are_configurable(sandbox_idp: RunningIdp) -> None:
    """expires_in follows access_token_lifetime; refresh_in reaches MSAL as refresh_on."""
    result = sandbox_idp.confidential().acquire_token_for_client(APP_SCOPE)
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert result["expires_in"] == 1800
    assert claims["exp"] - claims["iat"] == 1800
    assert "refresh_on" in result


def test_certificate_credential_gets_a_token(sandbox_idp: RunningIdp) -> None:
    """MSAL's certificate credential (PS256 assertion, x5t#S256) from app.pem is accepted."""
    pem = sandbox_idp.tenant.certificate_path.read_text()
    app = sandbox_idp.confidential({"private_key": pem, "public_certificate": pem})
    result = app.acquire_token_for_client(APP_SCOPE)
    claims = sandbox_idp.key.verify(result["access_token"], audience="https://outlook.office365.com")
    assert claims["appidacr"] == "2"


def test_legacy_sha1_thumbprint_credential_gets_a_token(sandbox_idp: RunningIdp) -> None:
    """The deprecated {private_key, thumbprint} credential (RS256, x5t) is accepted too."""
    pem = sandbox_idp.tenant.certificate_path.read_text()
    certificate = sandbox_idp.tenant.app.certificate
    assert certificate is not None
    thumbprint = certificate.fingerprint(hashes.SHA1()).hex()  # noqa: S303  # x5t is SHA-1 by definition
    result = sandbox_idp.confidential(
        {"private_key": pem, "thumbprint": thumbprint}
    ).acquire_token_for_client(APP_SCOPE)
    assert "access_token" in result, result.get("error_description")


def test_msal_serves_the_second_request_from_its_cache(sandbox_idp: RunningIdp) -> None:
    """token_requests counts what reached the IdP: one request for two acquisitions."""
    app = sandbox_idp.confidential()
    first = app.acquire_token_for_client(APP_SCOPE)
    second = app.acquire_token_for_client(APP_SCOPE)
    assert (first["token_source"], second["token_source"]) == ("identity_provider", "cache")
    assert sandbox_idp.idp.token_requests["client_credentials"] == 1


def test_client_secret_basic_authentication_works(sandbox_idp: RunningIdp) -> None:
    """The secret may come in an HTTP Basic header (RFC 6749 2.3.1)."""
    app = sandbox_idp.tenant.app
    assert app.client_secret is not None
    response = sandbox_idp.post(
        f"/{sandbox_idp.tenant.tenant_id}/oauth2/v2.0/token",
        {"grant_type": "client_credentials", "scope": APP_SCOPE[0]},
        auth=(app.client_id, app.client_secret),
    )
    assert response.status_code == 200
    assert response.json()["token_type"] == "Bearer"


def test_fail_next_answers_503_then_recovers(sandbox_idp: RunningIdp) -> None:
    """fail_next(1) makes one token request fail with a temporary error, counted like the rest."""
    sandbox_idp.idp.fail_next(1, status=503, retry_after=0)
    failed = sandbox_idp.post(
        f"/{sandbox_idp.tenant.tenant_id}/oauth2/v2.0/token", {"grant_type": "client_credentials"}
    )
    assert failed.status_code == 503
    assert failed.json()["error"] == "temporarily_unavailable"
    assert failed.headers["Retry-After"] == "0"
    assert "access_token" in sandbox_idp.confidential().acquire_token_for_client(APP_SCOPE)
    assert sandbox_idp.idp.token_requests["client_credentials"] == 2


def test_tokens_verify_against_the_published_jwks(sandbox_idp: RunningIdp) -> None:
    """The openid configuration's jwks_uri publishes the key that signed the token."""
    token = sandbox_idp.confidential().acquire_token_for_client(APP_SCOPE)["access_token"]
    config = sandbox_idp.get(f"/{sandbox_idp.tenant.tenant_id}/v2.0/.well-known/openid-configuration").json()
    jwks = requests.get(config["jwks_uri"], verify=str(sandbox_idp.ca_file), timeout=10).json()
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [key for key in jwks["keys"] if key["kid"] == kid]
    claims = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience="https://outlook.office365.com"
    )
    assert claims["tid"] == sandbox_idp.tenant.tenant_id


def test_idp_logs_hold_no_secret_or_token(sandbox_idp: RunningIdp, caplog: pytest.LogCaptureFixture) -> None:
    """Even at DEBUG, the IdP's log names grants and clients but never a secret or a token."""
    caplog.set_level(logging.DEBUG, logger="smtp_oauth.sandbox")
    token = sandbox_idp.confidential().acquire_token_for_client(APP_SCOPE)["access_token"]
    sandbox_idp.confidential("a-wrong-secret").acquire_token_for_client(APP_SCOPE)
    assert "client_credentials" in caplog.text
    secret = sandbox_idp.tenant.app.client_secret
    assert secret is not None
    for value in (secret, "a-wrong-secret", token):
        assert value not in caplog.text


def test_stop_ends_the_server_thread(tmp_path: Path, smtp_oauth_sandbox_keys: SandboxKeys) -> None:
    """stop() leaves no serving thread behind, and a new IdP can take the same port."""
    with running_idp(tmp_path, smtp_oauth_sandbox_keys) as running:
        running.confidential().acquire_token_for_client(APP_SCOPE)  # leaves a keep-alive connection open
        port = running.idp.port
    assert not [t for t in threading.enumerate() if t.name == "sandbox-idp"]
    with running_idp(tmp_path / "again", smtp_oauth_sandbox_keys, port=port) as again:
        assert "access_token" in again.confidential().acquire_token_for_client(APP_SCOPE)
