"""The Sandbox object: both services running, and configuration files that load."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import aiosmtplib
import pytest

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings import load_settings


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


async def test_config_file_is_private(tmp_path: Path) -> None:
    """The config holds the client secret: 0600, and so is app.pem."""
    async with Sandbox(tmp_path) as sandbox:
        assert stat.S_IMODE(sandbox.config_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(sandbox.tenant.certificate_path.stat().st_mode) == 0o600


async def test_config_leaves_a_place_for_relay_users(tmp_path: Path) -> None:
    """Without relay users, the file shows where [[relay.users]] go."""
    async with Sandbox(tmp_path) as sandbox:
        text = sandbox.config_path.read_text()
        assert "# [[relay.users]]" in text
        assert "FOR TESTING ONLY" in text


@pytest.mark.parametrize("flow", ["device_code", "interactive", "username_password"])
async def test_delegated_configs_use_the_public_app(tmp_path: Path, flow: str) -> None:
    """Delegated flows get the public client, no secret, and the test user for ROPC."""
    async with Sandbox(tmp_path) as sandbox:
        path = sandbox.write_config(tmp_path / f"{flow}.toml", flow=flow)
        settings = load_settings(path)
        assert settings.identity.flow == flow
        assert settings.identity.client_id == sandbox.tenant.public_app.client_id
        assert settings.identity.client_secret is None
        if flow == "username_password":
            assert settings.identity.username == sandbox.tenant.user.upn
            assert settings.identity.password is not None
            assert settings.identity.password.get_secret_value() == sandbox.tenant.user.password


async def test_certificate_config_names_app_pem(tmp_path: Path) -> None:
    """credential='certificate' swaps the secret for certificate_path = app.pem."""
    async with Sandbox(tmp_path) as sandbox:
        settings = load_settings(sandbox.write_config(tmp_path / "cert.toml", credential="certificate"))
        assert settings.identity.client_secret is None
        assert settings.identity.certificate_path == sandbox.tenant.certificate_path


async def test_extra_sections_merge_into_the_config(tmp_path: Path) -> None:
    """Extra sections add keys and [[relay.users]] tables; None removes a key."""
    async with Sandbox(tmp_path) as sandbox:
        users = [
            {"name": "app", "password_hash": "$scrypt$placeholder", "allowed_senders": ["@sandbox.test"]}
        ]
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


async def test_settings_applies_overrides(tmp_path: Path) -> None:
    """sandbox.settings(**overrides) is load_settings(config_path, **overrides)."""
    async with Sandbox(tmp_path) as sandbox:
        settings = sandbox.settings(smtp={"timeout": 7})
        assert settings.smtp.timeout == 7
        assert settings.smtp.port == sandbox.smtp_port


async def test_exchange_accepts_a_token_from_the_idp(tmp_path: Path) -> None:
    """The composed services share a key: an IdP token authenticates to the fake Exchange."""
    import msal

    async with Sandbox(tmp_path) as sandbox:
        app = msal.ConfidentialClientApplication(
            sandbox.tenant.app.client_id,
            client_credential=sandbox.tenant.app.client_secret,
            authority=sandbox.idp.authority,
            verify=str(sandbox.ca_file),
            instance_discovery=False,
        )
        token = app.acquire_token_for_client(["https://outlook.office365.com/.default"])["access_token"]
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
            oauth_token_generator=lambda: _constant(token),
        )
        [delivered] = sandbox.delivered()
        assert delivered.rcpt_tos == ["someone@example.test"]


async def _constant(token: str) -> str:
    return token


async def test_repr_shows_no_secret(tmp_path: Path) -> None:
    """Neither the sandbox, its tenant nor its IdP shows a secret or password in repr."""
    async with Sandbox(tmp_path) as sandbox:
        text = repr(sandbox) + repr(sandbox.tenant) + repr(sandbox.idp)
        assert sandbox.tenant.app.client_secret not in text
        assert sandbox.tenant.user.password not in text


async def test_stopped_sandbox_refuses_access(tmp_path: Path) -> None:
    """Asking a stopped sandbox for its parts says it is not running."""
    sandbox = Sandbox(tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sandbox.idp
