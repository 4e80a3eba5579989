"""A configuration file holding a secret must be private: msmtp's rule, with the chmod that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import load_settings
from tests.cli.admin_cli import clean_env, run_cli

IDENTITY = """
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
{secret}

[smtp]
username = "sender@contoso.com"
"""
SECRET_LINE = 'client_secret = "s3cret-Value~do-not-echo"'
HASH = "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43
USERS = f'\n[relay]\nallow_networks = []\n[[relay.users]]\nname = "fern"\npassword_hash = "{HASH}"\n'


def config(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "smtp-oauth.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_in_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """A client secret in a file with any group or other permission is refused, naming the chmod."""
    path = config(tmp_path, IDENTITY.format(secret=SECRET_LINE), mode)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert f"chmod 600 {path}" in message
    assert "client_secret" in message
    assert f"{mode:04o}" in message
    assert "s3cret" not in message


def test_private_file_with_a_secret_loads(tmp_path: Path) -> None:
    """A 0600 file holding the client secret loads."""
    path = config(tmp_path, IDENTITY.format(secret=SECRET_LINE), 0o600)
    assert load_settings(path).identity.client_secret is not None


def test_secret_from_the_environment_leaves_a_readable_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 0644 file without a secret loads when the secret comes from the environment."""
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__CLIENT_SECRET", "from-the-environment")
    path = config(tmp_path, IDENTITY.format(secret=""), 0o644)
    secret = load_settings(path).identity.client_secret
    assert secret is not None
    assert secret.get_secret_value() == "from-the-environment"


def test_password_in_the_spool_url_counts_as_a_secret(tmp_path: Path) -> None:
    """A spool_url with a database password in a 0644 file is refused."""
    text = IDENTITY.format(secret="") + '\n[relay]\nspool_url = "postgresql://relay:hunter2@db/spool"\n'
    path = config(tmp_path, text, 0o644)
    with pytest.raises(ConfigurationError, match="spool_url"):
        load_settings(path)


def test_relay_user_hashes_may_be_read_by_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relay users' hashes in a 0640 file (root:smtp-oauth, as the systemd unit says) load."""
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__CLIENT_SECRET", "from-the-environment")
    path = config(tmp_path, IDENTITY.format(secret="") + USERS, 0o640)
    assert load_settings(path).relay.users[0].name == "fern"


def test_relay_user_hashes_readable_by_everyone_are_refused(tmp_path: Path) -> None:
    """Relay users' hashes in a world-readable file are refused with chmod 640."""
    path = config(tmp_path, IDENTITY.format(secret="") + USERS, 0o644)
    with pytest.raises(ConfigurationError, match=f"chmod 640 {path}"):
        load_settings(path)


def test_the_command_exits_78_on_a_readable_secret(tmp_path: Path) -> None:
    """`smtp-oauth config` on a 0644 file with a secret exits 78 with one line naming the fix."""
    path = config(tmp_path, IDENTITY.format(secret=SECRET_LINE), 0o644)
    done = run_cli("--config", str(path), "config", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 78
    assert f"chmod 600 {path}" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
