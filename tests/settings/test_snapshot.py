"""Specification of settings/snapshot.py: send-mail's view of the last validation, and what voids it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.snapshot import SettingsProbe, view_of

SECRET = "s3cret-Value~never-in-a-snapshot"
CONFIG = f"""
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "{SECRET}"

[smtp]
username = "sender@contoso.com"

[send_mail]
via = "relay"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration file, with the state directory under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "smtp-oauth.toml"
    path.write_text(CONFIG)
    return path


def _snapshot(config: Path) -> SettingsProbe:
    """Take a probe, load fully and write the snapshot, as send-mail does on a miss."""
    probe = SettingsProbe(str(config))
    probe.write(view_of(load_settings(config)))
    return probe


def test_snapshot_serves_the_validated_view_when_nothing_changed(config: Path) -> None:
    """A second probe of unchanged inputs reads back exactly the view that was written."""
    _snapshot(config)
    view = SettingsProbe(str(config)).read()
    assert view == view_of(load_settings(config))
    assert view is not None
    assert (view.via, view.sender) == ("relay", "sender@contoso.com")


def test_snapshot_is_owner_only_and_holds_no_secret(config: Path) -> None:
    """The snapshot file is 0600 and the client secret is nowhere in it."""
    probe = _snapshot(config)
    assert stat.S_IMODE(probe.path.stat().st_mode) == 0o600
    assert SECRET not in probe.path.read_text()


def test_an_edited_config_file_voids_the_snapshot(config: Path) -> None:
    """Any change to the file (here its size and mtime) sends the next run through full validation."""
    _snapshot(config)
    config.write_text(CONFIG.replace('via = "relay"', 'via = "direct"'))
    assert SettingsProbe(str(config)).read() is None


def test_a_replaced_config_file_voids_the_snapshot(config: Path) -> None:
    """Same size and mtime but another inode (an editor's rename) still voids it."""
    _snapshot(config)
    info = config.stat()
    replacement = config.with_name("new.toml")
    replacement.write_text(CONFIG)
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
    replacement.replace(config)
    assert SettingsProbe(str(config)).read() is None


def test_an_smtp_oauth_variable_voids_the_snapshot(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting SMTP_OAUTH_* after the snapshot was taken means validating again."""
    _snapshot(config)
    monkeypatch.setenv("SMTP_OAUTH_SEND_MAIL__VIA", "direct")
    assert SettingsProbe(str(config)).read() is None


def test_a_new_secret_file_voids_the_snapshot(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file added to the secrets directory changes its listing: the snapshot no longer serves."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    monkeypatch.setenv("SMTP_OAUTH_SECRETS_DIR", str(secrets_dir))
    _snapshot(config)
    (secrets_dir / "SMTP_OAUTH_SMTP__FROM_ADDRESS").write_text("alerts@contoso.com")
    assert SettingsProbe(str(config)).read() is None


def test_a_snapshot_others_could_write_is_ignored(config: Path) -> None:
    """A group- or world-accessible snapshot decides nothing: it might not be ours."""
    probe = _snapshot(config)
    probe.path.chmod(0o660)
    assert SettingsProbe(str(config)).read() is None


def test_a_corrupt_snapshot_is_ignored(config: Path) -> None:
    """A truncated or foreign file is a miss, never an error."""
    probe = _snapshot(config)
    probe.path.write_text('{"format": 1, "fingerprint": ')
    assert SettingsProbe(str(config)).read() is None
