"""The Sandbox object: both services running, and configuration files that load."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import aiosmtplib
import msal
import pytest

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings


async def test_sandbox_writes_a_config_that_loads(tmp_path: Path) -> None:
    """sandbox.toml loads with load_settings and points at the running services."""
    async with Sandbox(tmp_path) as sandbox:
        settings = load_settings(sandbox.config_path)
        assert settings.identity.authority_host == sandbox.authority_host
        assert settings.identity.client_id == sandbox.tenant.app.client_id
        assert settings.identity.client_secret is not None
        assert settings.identity.client_secret.get_secret_value() == sandbox.tenant.app.client_secret
        assert settings.identity.ca_file == sandbox.ca_file
        assert (settings.smtp_host, settings.smtp.port) == ("127.0.0.1", sandbox.smtp_port)
        assert settings.smtp.username == "sender@sandbox.test"
        assert settings.token_cache_path == tmp_path / "token-cache"
        assert settings.spool_path == tmp_path / "spool"
        assert settings.relay.listen == sandbox.relay_listen


async def test_config_file_is_private(smtp_oauth_sandbox: Sandbox) -> None:
    """The config holds the client secret: 0600, and so is app.pem."""
    sandbox = smtp_oauth_sandbox
    assert stat.S_IMODE(sandbox.config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sandbox.tenant.certificate_path.stat().st_mode) == 0o600


async def test_config_leaves_a_place_for_relay_users(smtp_oauth_sandbox: Sandbox) -> None:
    """Without relay users, the file shows where [[relay.users]] go."""
    sandbox = smtp_oauth_sandbox
    text = sandbox.config_path.read_text()
    assert "# [[relay.users]]" in text
    assert "FOR TESTING ONLY" in text


@pytest.mark.parametrize("flow", ["device_code", "interactive", "username_password"])
async def test_delegated_configs_use_the_public_app(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path, flow: str
) -> None:
    """Delegated flows get the public client, no secret, and the test user for ROPC."""
    sandbox = smtp_oauth_sandbox
    path = sandbox.write_config(tmp_path / f"{flow}.toml", flow=flow)
    settings = load_settings(path)
    assert settings.identity.flow == flow
    assert settings.identity.client_id == sandbox.tenant.public_app.client_id
    assert settings.identity.client_secret is None
    if flow == "username_password":
        assert settings.identity.username == sandbox.tenant.user.upn
        assert settings.identity.password is not None
        assert settings.identity.password.get_secret_value() == sandbox.tenant.user.password


async def test_certificate_config_names_app_pem(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """credential='certificate' swaps the secret for certificate_path = app.pem."""
    sandbox = smtp_oauth_sandbox
    settings = load_settings(sandbox.write_config(tmp_path / "cert.toml", credential="certificate"))
    assert settings.identity.client_secret is None
    assert settings.identity.certificate_path == sandbox.tenant.certificate_path


async def test_extra_sections_merge_into_the_config(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Extra sections add keys and [[relay.users]] tables; None removes a key."""
    sandbox = smtp_oauth_sandbox
    users = [{"name": "app", "password_hash": "$scrypt$placeholder", "allowed_senders": ["@sandbox.test"]}]
    path = sandbox.write_config(
        tmp_path / "extra.toml",
        log_level="DEBUG",
        smtp={"timeout": 5.0},
        relay={"users": users, "spool_dir": None},
    )
    raw = tomllib.loads(path.read_text())
    assert raw["log_level"] == "DEBUG"
    assert raw["smtp"]["timeout"] == 5.0
    assert raw["relay"]["users"] == users
    assert "spool_dir" not in raw["relay"]


async def test_settings_applies_overrides(smtp_oauth_sandbox: Sandbox) -> None:
    """sandbox.settings(**overrides) is load_settings(config_path, **overrides)."""
    sandbox = smtp_oauth_sandbox
    settings = sandbox.settings(smtp={"timeout": 7})
    assert settings.smtp.timeout == 7
    assert settings.smtp.port == sandbox.smtp_port


def _app_token(sandbox: Sandbox) -> str:
    app = msal.ConfidentialClientApplication(
        sandbox.tenant.app.client_id,
        client_credential=sandbox.tenant.app.client_secret,
        authority=sandbox.idp.authority,
        verify=str(sandbox.ca_file),
        instance_discovery=False,
    )
    token: str = app.acquire_token_for_client(["https://outlook.office365.com/.default"])["access_token"]
    return token


async def _send(sandbox: Sandbox, token: str) -> None:
    async def token_generator() -> str:
        return token

    message = "From: sender@sandbox.test\r\nTo: someone@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
    await aiosmtplib.send(
        message,
        sender="sender@sandbox.test",
        recipients=["someone@example.test"],
        hostname=sandbox.smtp_host,
        port=sandbox.smtp_port,
        start_tls=True,
        tls_context=sandbox.client_tls_context(),
        username="sender@sandbox.test",
        oauth_token_generator=token_generator,
    )


async def test_exchange_accepts_a_token_from_the_idp(smtp_oauth_sandbox: Sandbox) -> None:
    """The composed services share a key: an IdP token authenticates to the fake Exchange."""
    await _send(smtp_oauth_sandbox, await asyncio.to_thread(_app_token, smtp_oauth_sandbox))
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.rcpt_tos == ["someone@example.test"]


async def test_repr_shows_no_secret(smtp_oauth_sandbox: Sandbox) -> None:
    """Neither the sandbox, its tenant nor its IdP shows a secret or password in repr."""
    sandbox = smtp_oauth_sandbox
    text = repr(sandbox) + repr(sandbox.tenant) + repr(sandbox.idp)
    assert sandbox.tenant.app.client_secret is not None  # the default app has a secret
    assert sandbox.tenant.app.client_secret not in text
    assert sandbox.tenant.user.password not in text


async def test_stopped_sandbox_refuses_access(tmp_path: Path) -> None:
    """Asking a stopped sandbox for its parts says it is not running."""
    sandbox = Sandbox(tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sandbox.idp


@pytest.mark.smtp_oauth_sandbox(access_token_lifetime=120, max_sessions_per_mailbox=1)
async def test_marker_passes_options_to_the_fixture(smtp_oauth_sandbox: Sandbox) -> None:
    """@pytest.mark.smtp_oauth_sandbox(...) reaches the Sandbox the fixture starts."""
    assert smtp_oauth_sandbox.idp.options.access_token_lifetime == 120


async def test_two_sandboxes_do_not_trust_each_other(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Sandboxes sharing the session's signing key still refuse each other's tokens (tenant, app)."""
    token = await asyncio.to_thread(_app_token, smtp_oauth_sandbox)
    async with Sandbox(tmp_path, signing_key=smtp_oauth_sandbox.idp.signing_key) as other:
        assert other.tenant.tenant_id != smtp_oauth_sandbox.tenant.tenant_id
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await _send(other, token)


def test_package_exports_its_public_names() -> None:
    """smtp_oauth.sandbox exports exactly __all__, each importable."""
    import smtp_oauth.sandbox as package

    assert sorted(package.__all__) == [
        "DeliveredMessage",
        "FakeExchange",
        "RegisteredApp",
        "Sandbox",
        "SandboxIdentityProvider",
        "SandboxTenant",
        "SandboxUser",
    ]
    assert all(getattr(package, name).__name__ == name for name in package.__all__)


def test_small_sandbox_modules_import_without_the_servers() -> None:
    """Importing sandbox.certs does not drag in aiosmtpd or msal (the package exports lazily)."""
    code = "import sys, smtp_oauth.sandbox.certs; print('aiosmtpd' in sys.modules, 'msal' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.split() == ["False", "False"]
