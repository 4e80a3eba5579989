"""`smtp-oauth login` / `logout` against the sandbox: device code sign-in, the cached sign-in, sign-out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtp_oauth.cli.login import choose_flow
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings
from tests.cli.admin_cli import clean_env, run_cli_async


async def test_device_code_login_token_and_logout(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """No terminal: login picks the device code (prompt on stderr) over interactive; logout forgets it."""
    config = smtp_oauth_sandbox.write_config(tmp_path / "user.toml", flow="interactive")
    env = clean_env(tmp_path)
    mailbox = smtp_oauth_sandbox.tenant.mailbox

    login = await run_cli_async("login", "--config", str(config), env=env, cwd=tmp_path)
    assert login.returncode == 0, login.stderr
    assert "with device_code" in login.stdout
    assert "enter the code" in login.stderr  # the device-code prompt, auto-approved by the sandbox
    assert f"Signed in as {mailbox}" in login.stdout
    assert "SMTP.Send" in login.stdout.split("Granted scopes:")[1].splitlines()[0]

    claims = await run_cli_async("token", "--claims", "--config", str(config), env=env, cwd=tmp_path)
    assert claims.returncode == 0, claims.stderr
    assert json.loads(claims.stdout)["upn"] == mailbox

    logout = await run_cli_async("logout", "--config", str(config), env=env, cwd=tmp_path)
    assert logout.returncode == 0, logout.stderr
    assert "Removed " in logout.stdout
    assert "Removed 0 " not in logout.stdout

    after = await run_cli_async("token", "--config", str(config), env=env, cwd=tmp_path)
    assert after.returncode == 77
    assert "smtp-oauth login" in after.stderr


async def test_login_refuses_client_credentials(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """With client credentials there is no user to sign in: exit 64 and a message saying so."""
    done = await run_cli_async(
        "login", "--config", str(smtp_oauth_sandbox.config_path), env=clean_env(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 64
    assert "no user to sign in" in done.stderr
    assert done.stdout == ""


@pytest.fixture
def delegated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SMTP_OAUTH_CONFIG", raising=False)
    path = tmp_path / "c.toml"
    path.write_text(
        '[identity]\ntenant_id = "t.example"\nclient_id = "c"\nflow = "interactive"\n'
        '[smtp]\nusername = "a@example.org"\n'
    )
    return path


def test_no_display_chooses_device_code(delegated_config: Path) -> None:
    """Without a display the default is the device code, even when interactive is configured."""
    settings = load_settings(delegated_config)
    assert choose_flow(settings, None, display=False) == "device_code"
    assert choose_flow(settings, None, display=True) == "interactive"


def test_explicit_flow_wins(delegated_config: Path) -> None:
    """--flow is used as given."""
    settings = load_settings(delegated_config)
    assert choose_flow(settings, "device_code", display=True) == "device_code"
    assert choose_flow(settings, "interactive", display=False) == "interactive"


def test_configured_device_code_is_kept_with_a_display(delegated_config: Path) -> None:
    """A configuration that asks for the device code keeps it on a desktop too."""
    loaded = load_settings(delegated_config)
    settings = loaded.model_copy(
        update={"identity": loaded.identity.model_copy(update={"flow": "device_code"})}
    )
    assert choose_flow(settings, None, display=True) == "device_code"


async def test_login_without_consent_gives_the_admin_consent_url(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A permission nobody consented to -> AADSTS65001, exit 77, and the admin-consent URL with the ids."""
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "unconsented.toml",
        flow="device_code",
        identity={"scopes": ["https://outlook.office.com/IMAP.AccessAsUser.All"]},
    )
    done = await run_cli_async("login", "--config", str(config), env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 77, done.stdout + done.stderr
    tenant = smtp_oauth_sandbox.tenant
    assert "AADSTS65001" in done.stderr
    assert f"/{tenant.tenant_id}/adminconsent?client_id={tenant.public_app.client_id}" in done.stderr
