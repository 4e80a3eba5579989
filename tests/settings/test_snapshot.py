"""Specification of settings/snapshot.py: send-mail's view of the last validation, and what voids it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings
from smtp_oauth.settings.snapshot import SendMailView, SettingsProbe, view_of
from smtp_oauth.tokens.fastpath import cache_query

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


def _view(settings: Settings) -> SendMailView:
    """The view send-mail keeps: with the cached token a direct send would look for."""
    token = cache_query(settings, scopes=settings.token_scopes(), min_validity=settings.refresh_margin)
    return view_of(settings, token=token)


def _snapshot(config: Path) -> SettingsProbe:
    """Take a probe, load fully and write the snapshot, as send-mail does on a miss."""
    probe = SettingsProbe(str(config))
    probe.write(_view(load_settings(config)))
    return probe


def test_snapshot_serves_the_validated_view_when_nothing_changed(config: Path) -> None:
    """A second probe of unchanged inputs reads back exactly the view that was written."""
    _snapshot(config)
    view = SettingsProbe(str(config)).read()
    assert view == _view(load_settings(config))
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


def test_a_chmod_of_the_config_file_voids_the_snapshot(config: Path) -> None:
    """Opening the file to others after the snapshot sends the next run through the loader's refusal."""
    _snapshot(config)
    config.chmod(0o644)
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


def test_snapshot_keeps_what_a_direct_send_reads(config: Path) -> None:
    """The server, mailbox and cached-token query of a direct SMTP send round-trip through the file."""
    config.write_text(CONFIG.replace('via = "relay"', 'via = "direct"'))
    _snapshot(config)
    view = SettingsProbe(str(config)).read()
    assert view is not None
    assert view.direct is not None
    assert (view.direct.host, view.direct.port, view.direct.mailbox) == (
        "smtp.office365.com",
        587,
        "sender@contoso.com",
    )
    assert view.direct.token.scopes == ["https://outlook.office365.com/.default"]
    assert view == _view(load_settings(config))


@pytest.mark.parametrize(
    "extra",
    ['transport = "graph"\n', 'fallback_transport = "graph"\n'],
    ids=["graph", "fallback"],
)
def test_no_direct_view_where_only_the_full_path_can_send(config: Path, extra: str) -> None:
    """Graph, or SMTP with a Graph fallback: the view has no direct part (the full path sends)."""
    config.write_text(extra + CONFIG)
    assert _view(load_settings(config)).direct is None


def test_managed_identity_has_no_direct_view(config: Path) -> None:
    """A managed identity's tokens are not read without msal: no direct part."""
    config.write_text('[identity]\nflow = "managed_identity"\n[smtp]\nusername = "sender@contoso.com"\n')
    assert _view(load_settings(config)).direct is None


def test_a_direct_part_of_the_wrong_shape_voids_the_snapshot(config: Path) -> None:
    """A snapshot whose direct part lacks a key or has one of the wrong type is not used."""
    config.write_text(CONFIG.replace('via = "relay"', 'via = "direct"'))
    probe = _snapshot(config)
    text = probe.path.read_text()
    probe.path.write_text(text.replace('"port": 587', '"port": "587"'))
    assert SettingsProbe(str(config)).read() is None
