"""[profiles.NAME]: several senders in one configuration, merged key by key over the top level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import load_settings, settings_for_profile
from tests.cli.admin_cli import clean_env, run_cli

BASE = """
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "top-secret-value"
timeout = 12

[smtp]
username = "hr@contoso.com"

[profiles.scanner.identity]
client_id = "22222222-2222-2222-2222-222222222222"
flow = "managed_identity"
tenant_id = "fabrikam.onmicrosoft.com"

[profiles.scanner.smtp]
username = "scanner@contoso.com"

[profiles.second-tenant.identity]
tenant_id = "fabrikam.onmicrosoft.com"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-oauth.toml"
    path.write_text(BASE)
    return path


def test_profile_overrides_key_by_key(config: Path) -> None:
    """A profile replaces the keys it sets; every other key is the top level's."""
    settings = load_settings(config, profile="scanner")
    assert settings.smtp.username == "scanner@contoso.com"
    assert settings.identity.client_id == "22222222-2222-2222-2222-222222222222"
    assert settings.identity.timeout == 12
    assert settings.profile == "scanner"


def test_another_app_does_not_inherit_the_secret(config: Path) -> None:
    """A profile naming another app or flow brings its own credential: the top level's is dropped."""
    settings = load_settings(config, profile="scanner")
    assert settings.identity.client_secret is None


def test_same_app_in_another_tenant_keeps_the_secret(config: Path) -> None:
    """Only the tenant changes (a multi-tenant app): the secret is inherited."""
    settings = load_settings(config, profile="second-tenant")
    assert settings.identity.tenant_id == "fabrikam.onmicrosoft.com"
    assert settings.identity.client_secret is not None


def test_profile_comes_from_the_environment(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SMTP_OAUTH_PROFILE picks the profile when none is passed."""
    monkeypatch.setenv("SMTP_OAUTH_PROFILE", "scanner")
    assert load_settings(config).smtp.username == "scanner@contoso.com"


def test_unknown_profile_is_a_configuration_error(config: Path) -> None:
    """An unknown profile names the defined ones."""
    with pytest.raises(ConfigurationError, match="scanner, second-tenant"):
        load_settings(config, profile="nope")


def test_settings_switch_between_profiles(config: Path) -> None:
    """settings_for_profile derives another profile (or the top level) from loaded settings."""
    scanner = load_settings(config, profile="scanner")
    top = settings_for_profile(scanner, None)
    assert top.smtp.username == "hr@contoso.com"
    assert settings_for_profile(top, "second-tenant").identity.tenant_id == "fabrikam.onmicrosoft.com"


def test_a_profile_with_a_bad_value_names_the_profile(tmp_path: Path) -> None:
    """A bad key in a profile is reported with the profile's name."""
    path = tmp_path / "c.toml"
    path.write_text(BASE + '\n[profiles.broken.smtp]\nport = "many"\n')
    with pytest.raises(ConfigurationError, match="profile broken"):
        load_settings(path, profile="broken")


def test_relay_user_with_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    """relay.users[].profile must name a [profiles.NAME]."""
    path = tmp_path / "c.toml"
    path.write_text(BASE + '\n[[relay.users]]\nname = "a"\npassword_hash = "x"\nprofile = "ghost"\n')
    with pytest.raises(ConfigurationError, match=r"relay\.users\.0\.profile"):
        load_settings(path)


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_profile_option_before_or_after_the_subcommand(config: Path, tmp_path: Path, where: str) -> None:
    """`smtp-oauth --profile X config` and `smtp-oauth config --profile X` are the same."""
    args = (
        ["--profile", "scanner", "config", "--json"]
        if where == "before"
        else ["config", "--profile", "scanner", "--json"]
    )
    done = run_cli("--config", str(config), *args, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["profile"] == "scanner"
    assert document["settings"]["smtp.username"]["value"] == "scanner@contoso.com"


def test_config_says_where_a_profile_value_came_from(config: Path, tmp_path: Path) -> None:
    """config --profile labels a profile's keys with [profiles.NAME], inherited ones with the top level."""
    done = run_cli(
        "config", "--config", str(config), "--profile", "scanner", env=clean_env(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split("=")[0].strip(): line for line in done.stdout.splitlines() if "=" in line}
    assert "[profiles.scanner]" in lines["username"]
    assert "[profiles" not in lines["timeout"]
    assert "top-secret-value" not in done.stdout


def test_cli_unknown_profile_exits_78(config: Path, tmp_path: Path) -> None:
    """An unknown --profile is a configuration error: exit 78, naming the defined profiles."""
    done = run_cli(
        "config", "--config", str(config), "--profile", "nope", env=clean_env(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 78
    assert "unknown profile 'nope'" in done.stderr
