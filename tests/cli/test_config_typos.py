"""A misspelt key never prints its value: it is most often the secret it was meant to be."""

from __future__ import annotations

from pathlib import Path

from tests.cli.admin_cli import clean_env, run_cli

SECRET = "ufK8Q~6xc9-the-client-secret-BEx"
CONFIG = f"""
[identity]
tenant_id = "00000000-0000-0000-0000-000000000001"
client_id = "00000000-0000-0000-0000-000000000002"
client_secert = "{SECRET}"

[smtp]
username = "sender@contoso.com"
"""


def test_a_misspelt_key_in_the_file_does_not_print_its_value(tmp_path: Path) -> None:
    """identity.client_secert is reported as an unknown key, without the value (exit 78)."""
    config = tmp_path / "typo.toml"
    config.write_text(CONFIG)
    config.chmod(0o600)
    done = run_cli("--config", str(config), "config", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 78
    assert "client_secert" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert SECRET[:10] not in done.stdout + done.stderr


def test_a_misspelt_variable_does_not_print_its_value(tmp_path: Path) -> None:
    """SMTP_OAUTH_IDENTITY__CLIENT_SECRT is reported naming the variable, without the value."""
    config = tmp_path / "good.toml"
    config.write_text(CONFIG.replace("client_secert", "client_secret"))
    config.chmod(0o600)
    env = clean_env(tmp_path, SMTP_OAUTH_IDENTITY__CLIENT_SECRT=SECRET)
    done = run_cli("--config", str(config), "config", env=env, cwd=tmp_path)
    assert done.returncode == 78
    assert "SMTP_OAUTH_IDENTITY__CLIENT_SECRT" in done.stderr
    assert SECRET not in done.stdout + done.stderr
