"""diagnostics.check_claims: does a token's claims fit Exchange Online SMTP, and what is the fix."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.diagnostics import Status, check_claims
from smtp_oauth.errors import FailureKind
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
APP = "11111111-2222-3333-4444-555555555555"
MAILBOX = "sender@contoso.com"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _settings(tmp_path: Path, *, flow: str, extra: str = "") -> Settings:
    secret = 'client_secret = "x"' if flow == "client_credentials" else ""
    path = tmp_path / "c.toml"
    path.write_text(
        f'[identity]\ntenant_id = "{TENANT}"\nclient_id = "{APP}"\nflow = "{flow}"\n{secret}\n{extra}\n'
        f'[smtp]\nusername = "{MAILBOX}"\n'
    )
    return load_settings(path)


@pytest.fixture
def app_only(tmp_path: Path) -> Settings:
    return _settings(tmp_path, flow="client_credentials")


@pytest.fixture
def delegated(tmp_path: Path) -> Settings:
    return _settings(tmp_path, flow="device_code")


def _app_claims(**changes: Any) -> dict[str, Any]:
    exp = int(NOW.timestamp()) + 3600
    claims: dict[str, Any] = {
        "aud": "https://outlook.office365.com",
        "roles": ["SMTP.SendAsApp"],
        "tid": TENANT,
        "appid": APP,
        "oid": "a0b1c2d3-0000-4000-8000-00000000beef",
        "exp": exp,
        "nbf": exp - 3900,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _user_claims(**changes: Any) -> dict[str, Any]:
    claims = _app_claims(aud="https://outlook.office.com", roles=None, scp="SMTP.Send", upn=MAILBOX)
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def test_app_only_token_for_exchange_with_role_passes(app_only: Settings) -> None:
    """An app-only token for outlook.office365.com with SMTP.SendAsApp passes."""
    result = check_claims(_app_claims(), app_only, now=NOW)
    assert result.status is Status.PASS
    assert "SMTP.SendAsApp" in result.detail
    assert "expires in 60 min" in result.detail


def test_delegated_token_with_send_scope_passes(delegated: Settings) -> None:
    """A delegated token with scp SMTP.Send for the configured mailbox passes."""
    result = check_claims(_user_claims(), delegated, now=NOW)
    assert result.status is Status.PASS
    assert f"user {MAILBOX}" in result.detail


@pytest.mark.parametrize(
    "audience",
    [
        "https://outlook.office.com",
        "00000002-0000-0ff1-ce00-000000000000",
        ["x", "https://outlook.office365.com"],
    ],
)
def test_every_exchange_audience_is_accepted(app_only: Settings, audience: object) -> None:
    """Exchange's other identifier URI, its application id, and a list containing one are accepted."""
    assert check_claims(_app_claims(aud=audience), app_only, now=NOW).status is Status.PASS


def test_wrong_audience_fails_and_names_the_scopes(app_only: Settings) -> None:
    """A Graph token fails, says it is not for Exchange Online, and names the default scope to use."""
    result = check_claims(_app_claims(aud="https://graph.microsoft.com"), app_only, now=NOW)
    assert result.status is Status.FAIL
    assert result.failure is FailureKind.DENIED
    assert "https://graph.microsoft.com" in result.detail
    assert "not Exchange Online" in result.detail
    assert result.fix is not None
    assert '["https://outlook.office365.com/.default"]' in result.fix


def test_app_only_token_without_role_is_valid_under_rbac(app_only: Settings) -> None:
    """No SMTP.SendAsApp role is SMTP App RBAC, not an error: the check passes and names the model."""
    result = check_claims(_app_claims(roles=None), app_only, now=NOW)
    assert result.status is Status.PASS
    assert "SMTP App RBAC" in result.detail
    assert result.facts["model"] == "rbac"


def test_app_only_token_with_role_is_the_api_permission_model(app_only: Settings) -> None:
    """A token carrying SMTP.SendAsApp is reported as the API permission (+ FullAccess) model."""
    result = check_claims(_app_claims(), app_only, now=NOW)
    assert result.facts["model"] == "api_permission"
    assert "FullAccess" in result.detail


def test_delegated_token_without_send_scope_fails(delegated: Settings) -> None:
    """A delegated token lacking SMTP.Send fails and the fix says to add the permission and sign in again."""
    result = check_claims(_user_claims(scp="openid profile"), delegated, now=NOW)
    assert result.status is Status.FAIL
    assert "SMTP.Send" in result.detail
    assert result.fix is not None
    assert "smtp-oauth login" in result.fix


def test_delegated_token_for_another_user_warns_with_mailbox_permission(delegated: Settings) -> None:
    """Signed in as someone else than smtp.username: a warning naming Add-MailboxPermission, not a failure."""
    result = check_claims(_user_claims(upn="alice@contoso.com"), delegated, now=NOW)
    assert result.status is Status.WARN
    assert result.passed
    assert result.fix is not None
    assert (
        f"Add-MailboxPermission -Identity {MAILBOX} -User alice@contoso.com -AccessRights FullAccess"
        in result.fix
    )


def test_user_comparison_ignores_case(delegated: Settings) -> None:
    """UPN and smtp.username compare case-insensitively, as Exchange does."""
    assert check_claims(_user_claims(upn=MAILBOX.upper()), delegated, now=NOW).status is Status.PASS


def test_token_of_another_application_fails(app_only: Settings) -> None:
    """A token issued to another client id fails and names both ids."""
    result = check_claims(_app_claims(appid="99999999-0000-0000-0000-000000000000"), app_only, now=NOW)
    assert result.status is Status.FAIL
    assert APP in result.detail
    assert "99999999-0000-0000-0000-000000000000" in result.detail


def test_token_of_another_tenant_fails(app_only: Settings) -> None:
    """A token from another tenant (GUID configured) fails and names both tenants."""
    other = "00000000-1111-2222-3333-444444444444"
    result = check_claims(_app_claims(tid=other), app_only, now=NOW)
    assert result.status is Status.FAIL
    assert other in result.detail
    assert TENANT in result.detail


def test_tenant_given_as_domain_is_not_compared(tmp_path: Path) -> None:
    """A tenant configured by domain name cannot be compared with the token's GUID: no failure."""
    by_id = _settings(tmp_path, flow="client_credentials")
    identity = by_id.identity.model_copy(update={"tenant_id": "contoso.onmicrosoft.com"})
    settings = by_id.model_copy(update={"identity": identity})
    assert check_claims(_app_claims(), settings, now=NOW).status is Status.PASS


def test_expired_token_fails_naming_the_clock(app_only: Settings) -> None:
    """A token already expired when checked fails, and the fix points at the clock."""
    result = check_claims(_app_claims(exp=int(NOW.timestamp()) - 10), app_only, now=NOW)
    assert result.status is Status.FAIL
    assert "expired" in result.detail
    assert result.fix is not None
    assert "clock" in result.fix


def test_token_from_the_future_fails_naming_the_clock(app_only: Settings) -> None:
    """nbf well ahead of now means this machine's clock is behind."""
    result = check_claims(_app_claims(nbf=int(NOW.timestamp()) + 3600), app_only, now=NOW)
    assert result.status is Status.FAIL
    assert "clock is behind" in result.detail


def test_facts_carry_the_service_principal_and_expiry(app_only: Settings) -> None:
    """The result's facts give the oid (service principal) and the expiry for monitoring."""
    result = check_claims(_app_claims(), app_only, now=NOW)
    assert result.facts["oid"] == "a0b1c2d3-0000-4000-8000-00000000beef"
    assert result.facts["expires_at"].startswith("2026-01-01T13:00:00")


def test_usgov_cloud_expects_its_own_audience(tmp_path: Path) -> None:
    """With cloud = usgov, a token for the global Exchange audience is the wrong one."""
    settings = _settings(tmp_path, flow="client_credentials", extra='cloud = "usgov"')
    assert check_claims(_app_claims(), settings, now=NOW).status is Status.FAIL
    us = _app_claims(aud="https://outlook.office365.us")
    assert check_claims(us, settings, now=NOW).status is Status.PASS


def test_default_now_is_the_current_time(app_only: Settings) -> None:
    """Without `now`, a token valid for an hour from the real clock passes."""
    exp = int(time.time()) + 3600
    assert check_claims(_app_claims(exp=exp, nbf=exp - 3900), app_only).status is Status.PASS
