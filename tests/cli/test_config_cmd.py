"""`smtp-oauth config`: effective settings with their sources, secrets redacted; `--example`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from smtp_oauth.cli.config_cmd import example_config
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import (
    GraphSettings,
    IdentitySettings,
    RelaySettings,
    SendMailSettings,
    Settings,
    SmtpSettings,
)
from tests.cli.admin_cli import clean_env, run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-value-that-must-not-show"

CONFIG = """\
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "{secret}"

[smtp]
username = "sender@contoso.com"
port = 587

[[relay.users]]
name = "fern"
password_hash = "{password_hash}"
"""
PASSWORD_HASH = "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaC10aGF0LW11c3Qtbm90LXNob3c"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-oauth.toml"
    path.write_text(CONFIG.format(secret=SECRET, password_hash=PASSWORD_HASH))
    return path


def _listing_line(stdout: str, section: str, key: str) -> str:
    current = ""
    for line in stdout.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key} = "):
            return line
    raise AssertionError(f"{section}.{key} not listed:\n{stdout}")


def test_config_names_the_file_as_source_of_file_values(tmp_path: Path, config_file: Path) -> None:
    """A key set in the file is listed with the file's path as its source."""
    done = run_cli("--config", str(config_file), "config", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = _listing_line(done.stdout, "identity", "client_id")
    assert '"11111111-2222-3333-4444-555555555555"' in line
    assert f"file {config_file.resolve()}" in line


def test_config_names_the_variable_that_beats_the_file(tmp_path: Path, config_file: Path) -> None:
    """An SMTP_OAUTH_* variable overriding the file is named as the source."""
    env = clean_env(tmp_path, SMTP_OAUTH_SMTP__PORT="2525")
    done = run_cli("config", "--config", str(config_file), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = _listing_line(done.stdout, "smtp", "port")
    assert "2525" in line
    assert "env SMTP_OAUTH_SMTP__PORT" in line


def test_config_names_the_secrets_directory_file(tmp_path: Path, config_file: Path) -> None:
    """A value from the secrets directory names that file, and stays redacted."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "SMTP_OAUTH_IDENTITY__CLIENT_SECRET").write_text("from-the-secrets-dir")
    env = clean_env(tmp_path, SMTP_OAUTH_SECRETS_DIR=str(secrets_dir))
    done = run_cli("config", "--config", str(config_file), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = _listing_line(done.stdout, "identity", "client_secret")
    assert "secrets dir" in line
    assert "SMTP_OAUTH_IDENTITY__CLIENT_SECRET" in line
    assert "from-the-secrets-dir" not in done.stdout


def test_config_marks_defaults_and_derived_values(tmp_path: Path, config_file: Path) -> None:
    """Unset keys show their default; the SMTP host says it comes from the cloud preset."""
    done = run_cli("config", "--config", str(config_file), env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _listing_line(done.stdout, "smtp", "security").endswith("# default")
    host = _listing_line(done.stdout, "smtp", "host")
    assert '"smtp.office365.com"' in host
    assert "from identity.cloud" in host


def test_config_redacts_secrets(tmp_path: Path, config_file: Path) -> None:
    """The client secret and relay password hashes never appear in the listing, text or JSON."""
    env = clean_env(tmp_path)
    text = run_cli("config", "--config", str(config_file), env=env, cwd=tmp_path)
    as_json = run_cli("config", "--json", "--config", str(config_file), env=env, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert as_json.returncode == 0, as_json.stderr
    for output in (text.stdout + text.stderr, as_json.stdout + as_json.stderr):
        assert SECRET not in output
        assert "aGFzaC10aGF0LW11c3Qtbm90LXNob3c" not in output
    assert '"**********"' in _listing_line(text.stdout, "identity", "client_secret")
    document = json.loads(as_json.stdout)
    assert document["settings"]["identity.client_secret"]["value"] == "**********"
    assert document["settings"]["relay.users"]["value"][0]["password_hash"] == "**********"


def test_config_listing_is_valid_toml(tmp_path: Path, config_file: Path) -> None:
    """The listing parses as TOML: unset keys are commented out, relay users are inline tables."""
    done = run_cli("config", "--config", str(config_file), env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    parsed = tomllib.loads(done.stdout)
    assert parsed["relay"]["users"] == [{"name": "fern", "password_hash": "**********"}]
    assert "fallback_transport" not in parsed
    assert "# fallback_transport = (not set)" in done.stdout


def test_config_listing_loads_back_to_the_same_settings(tmp_path: Path, config_file: Path) -> None:
    """The listing, saved as a file, is a configuration that gives the same effective values."""
    env = clean_env(tmp_path)
    listing = run_cli("config", "--config", str(config_file), env=env, cwd=tmp_path)
    saved = tmp_path / "listing.toml"
    saved.write_text(listing.stdout)
    saved.chmod(0o600)
    before = run_cli("config", "--json", "--config", str(config_file), env=env, cwd=tmp_path)
    after = run_cli("config", "--json", "--config", str(saved), env=env, cwd=tmp_path)
    assert after.returncode == 0, after.stderr

    def values(stdout: str) -> dict[str, object]:
        return {key: item["value"] for key, item in json.loads(stdout)["settings"].items()}

    assert values(after.stdout) == values(before.stdout)


def test_config_json_gives_source_kinds(tmp_path: Path, config_file: Path) -> None:
    """--json gives each key's value, source kind and where."""
    env = clean_env(tmp_path, SMTP_OAUTH_LOG_LEVEL="DEBUG")
    done = run_cli("config", "--json", "--config", str(config_file), env=env, cwd=tmp_path)
    settings = json.loads(done.stdout)["settings"]
    assert settings["log_level"] == {"value": "DEBUG", "source": "env", "where": "SMTP_OAUTH_LOG_LEVEL"}
    assert settings["smtp.username"]["source"] == "file"
    assert settings["relay.listen"] == {"value": "127.0.0.1:2525", "source": "default", "where": ""}


def test_config_without_settings_exits_78(tmp_path: Path) -> None:
    """With no configuration anywhere, config fails as a configuration error (exit 78)."""
    done = run_cli("config", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 78
    assert "required" in done.stderr


def test_example_needs_no_settings_and_parses_as_toml(tmp_path: Path) -> None:
    """config --example works with nothing configured and prints valid TOML."""
    done = run_cli("config", "--example", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    parsed = tomllib.loads(done.stdout)
    assert set(parsed) >= {"identity", "smtp", "relay"}


def test_example_round_trips_through_load_settings(tmp_path: Path) -> None:
    """The example, with its required keys filled in, loads into the documented defaults."""
    text = example_config()
    text = text.replace('"contoso.onmicrosoft.com"', '"fabrikam.onmicrosoft.com"', 1)
    path = tmp_path / "example.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.identity.tenant_id == "fabrikam.onmicrosoft.com"
    assert settings.smtp.port == 587
    assert settings.relay.listen == "127.0.0.1:2525"


def test_example_states_the_real_defaults(tmp_path: Path) -> None:
    """Every commented `# key = value` line of the example gives the model's actual default."""
    defaults = {
        "": Settings.model_fields,
        "identity": IdentitySettings.model_fields,
        "smtp": SmtpSettings.model_fields,
        "relay": RelaySettings.model_fields,
    }
    loaded = load_settings_for_example(tmp_path)
    section = ""
    checked = 0
    for line in example_config().splitlines():
        if line.startswith("[") and not line.startswith("[["):
            section = line.strip("[]")
            continue
        if line.startswith("[[") or line.startswith("# [["):
            section = "relay.users"
            continue
        if not line.startswith("# ") or " = " not in line or section not in defaults:
            continue
        key, _, rest = line[2:].partition(" = ")
        if not key.isidentifier() or key not in defaults[section]:
            continue
        value_text = rest.split("  #")[0].strip()
        stated = tomllib.loads(f"v = {value_text}")["v"]
        field = defaults[section][key]
        if field.default is None:
            continue  # computed defaults (host, scopes, paths): the comment says where they come from
        actual = getattr(loaded if not section else getattr(loaded, section), key)
        if hasattr(actual, "total_seconds"):
            from smtp_oauth.settings.models import parse_duration

            stated = parse_duration(stated)
        elif isinstance(stated, str) and isinstance(actual, int):  # a size: "100MiB"
            from pydantic import ByteSize, TypeAdapter

            stated = TypeAdapter(ByteSize).validate_python(stated)
        assert stated == actual, f"{section}.{key}: example says {stated!r}, default is {actual!r}"
        checked += 1
    assert checked >= 15


def load_settings_for_example(tmp_path: Path) -> Settings:
    path = tmp_path / "example-defaults.toml"
    path.write_text(example_config())
    return load_settings(path)


def test_example_lists_every_key() -> None:
    """Every settings key appears in the example, in its section."""
    text = example_config()
    sections: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[]")
        sections[current] = sections.get(current, "") + line + "\n"
    models: dict[str, type[BaseModel]] = {
        "": Settings,
        "identity": IdentitySettings,
        "smtp": SmtpSettings,
        "graph": GraphSettings,
        "relay": RelaySettings,
        "send_mail": SendMailSettings,
    }
    for section, model in models.items():
        for key in model.model_fields:
            if key in {"identity", "smtp", "graph", "relay", "send_mail", "profiles"}:
                continue
            listed = f"{key} = " in sections[section] or f"[[{section}.{key}]]" in sections[section]
            assert listed, f"{section}.{key} is not in config.example.toml"
    for key in ("name", "password_hash", "mailbox", "allowed_senders", "profile"):
        assert f"# {key} = " in sections["relay"], f"relay.users.{key}"
    assert "# [profiles.scanner]" in text


def test_example_in_package_is_the_repository_copy() -> None:
    """config.example.toml at the repository root is identical to the copy shipped in the package."""
    assert (REPO_ROOT / "config.example.toml").read_text(encoding="utf-8") == example_config()
