"""Specification of settings.py: sources and their order, every bad-config message, cloud presets, paths."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import find_config_file, load_settings
from smtp_oauth.settings.models import parse_duration, parse_listen

SECRET = "s3cret-Value~do-not-echo"

MINIMAL = f"""
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "{SECRET}"

[smtp]
username = "sender@contoso.com"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray config files: cwd and XDG dirs are in tmp_path (the root conftest cleans the rest)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "smtp-oauth.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(path: Path | None = None, **overrides: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, **overrides)
    return caught.value


# -- bad configuration: each message names the file and the key, never a secret ----------------


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    """A typo in a section is an error naming the dotted key and the file."""
    path = write(tmp_path, MINIMAL.replace("[smtp]", "[smtp]\nhots = 'x'"))
    error = config_error(path)
    assert "smtp.hots" in str(error)
    assert str(path) in str(error)
    assert error.key == "smtp.hots"
    assert error.file == str(path)
    assert exit_code_of(error) == ExitCode.CONFIG


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    """An unknown top-level key (or section) is refused too."""
    error = config_error(write(tmp_path, MINIMAL + "\n[smpt]\nport = 25\n"))
    assert "smpt" in str(error)


def test_missing_required_key_says_required(tmp_path: Path) -> None:
    """A missing required key is reported as 'required but not set'."""
    error = config_error(write(tmp_path, MINIMAL.replace('tenant_id = "contoso.onmicrosoft.com"', "")))
    assert "identity.tenant_id: required but not set" in str(error)


def test_bad_value_is_shown_with_the_key(tmp_path: Path) -> None:
    """A value of the wrong type is quoted back next to its key."""
    error = config_error(write(tmp_path, MINIMAL + 'port = "submission"\n'))
    assert "smtp.port" in str(error)
    assert "'submission'" in str(error)


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    """Every invalid key is listed, not just the first one."""
    error = config_error(write(tmp_path, MINIMAL + 'port = "x"\nsecurity = "ssl"\n'))
    assert "smtp.port" in str(error)
    assert "smtp.security" in str(error)


def test_secret_with_bad_type_is_not_echoed(tmp_path: Path) -> None:
    """A secret key with an invalid value is named, but its value never appears in the message."""
    text = MINIMAL.replace(f'client_secret = "{SECRET}"', f'client_secret = ["{SECRET}"]')
    error = config_error(write(tmp_path, text))
    assert "identity.client_secret" in str(error)
    assert SECRET not in str(error)


def test_secret_not_echoed_in_section_level_error(tmp_path: Path) -> None:
    """A check over the whole [identity] section does not dump the section (with its secret)."""
    text = MINIMAL.replace("[smtp]", 'certificate_path = "app.pem"\n[smtp]')
    error = config_error(write(tmp_path, text))
    assert "identity.client_secret or identity.certificate_path, not both" in str(error)
    assert SECRET not in str(error)


def test_client_credentials_need_a_credential(tmp_path: Path) -> None:
    """flow client_credentials without secret or certificate is refused with both options named."""
    error = config_error(write(tmp_path, MINIMAL.replace(f'client_secret = "{SECRET}"', "")))
    assert "needs identity.client_secret or identity.certificate_path" in str(error)


def test_username_password_needs_both(tmp_path: Path) -> None:
    """flow username_password without a password is refused."""
    text = MINIMAL.replace("[smtp]", 'flow = "username_password"\nusername = "u@contoso.com"\n[smtp]')
    error = config_error(write(tmp_path, text))
    assert "needs identity.username and identity.password" in str(error)


def test_unknown_flow_is_refused(tmp_path: Path) -> None:
    """A flow that does not exist is an error naming identity.flow and the value."""
    error = config_error(write(tmp_path, MINIMAL.replace("[smtp]", 'flow = "implicit"\n[smtp]')))
    assert "identity.flow" in str(error)
    assert "'implicit'" in str(error)


def test_unknown_cloud_is_refused(tmp_path: Path) -> None:
    """identity.cloud accepts only global, usgov and china."""
    error = config_error(write(tmp_path, MINIMAL.replace("[smtp]", 'cloud = "germany"\n[smtp]')))
    assert "identity.cloud" in str(error)


def test_authority_host_must_be_https(tmp_path: Path) -> None:
    """An http:// authority is refused up front (MSAL would refuse it later, less clearly)."""
    text = MINIMAL.replace("[smtp]", 'authority_host = "http://127.0.0.1:8080"\n[smtp]')
    error = config_error(write(tmp_path, text))
    assert "identity.authority_host: must be an https:// URL" in str(error)


def test_smtp_username_must_be_an_address(tmp_path: Path) -> None:
    """smtp.username must look like a mailbox address."""
    error = config_error(write(tmp_path, MINIMAL.replace("sender@contoso.com", "sender")))
    assert "smtp.username" in str(error)


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    """identity.timeout = 0 would mean no timeout at all in requests: refused."""
    error = config_error(write(tmp_path, MINIMAL.replace("[smtp]", "timeout = 0\n[smtp]")))
    assert "identity.timeout" in str(error)


def test_relay_tls_needs_certificate_and_key(tmp_path: Path) -> None:
    """relay.tls_certificate without relay.tls_key is refused."""
    error = config_error(write(tmp_path, MINIMAL + '\n[relay]\ntls_certificate = "cert.pem"\n'))
    assert "relay.tls_certificate and relay.tls_key go together" in str(error)


def test_relay_listen_must_parse(tmp_path: Path) -> None:
    """A listen address with a bad port names relay.listen."""
    error = config_error(write(tmp_path, MINIMAL + '\n[relay]\nlisten = "127.0.0.1:99999"\n'))
    assert "relay.listen" in str(error)


def test_relay_allow_networks_needs_a_valid_cidr(tmp_path: Path) -> None:
    """A malformed CIDR in allow_networks is an error naming it."""
    text = MINIMAL + '\n[relay]\nallow_networks = [{ cidr = "10.0.5.0/33", user = "scanner" }]\n'
    error = config_error(write(tmp_path, text))
    assert "relay.allow_networks.0.cidr" in str(error)


def test_relay_duration_must_parse(tmp_path: Path) -> None:
    """relay.max_queue_age takes durations such as '5d'; 'soon' is refused with an example."""
    error = config_error(write(tmp_path, MINIMAL + '\n[relay]\nmax_queue_age = "soon"\n'))
    assert "relay.max_queue_age" in str(error)
    assert "'5d'" in str(error)


def test_log_level_is_case_insensitive_but_checked(tmp_path: Path) -> None:
    """log_level = 'debug' is accepted as DEBUG; 'verbose' is refused."""
    assert load_settings(write(tmp_path, 'log_level = "debug"\n' + MINIMAL)).log_level == "DEBUG"
    error = config_error(write(tmp_path, 'log_level = "verbose"\n' + MINIMAL, "other.toml"))
    assert "log_level" in str(error)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error says where: file, line and column."""
    path = write(tmp_path, '[identity]\ntenant_id = "t"\nclient_id = "unterminated\n')
    error = config_error(path)
    assert str(path) in str(error)
    assert "TOML syntax error" in str(error)
    assert "line 3" in str(error)
    assert "column" in str(error)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist is an error naming it, with a hint."""
    error = config_error(tmp_path / "nope.toml")
    assert f"{tmp_path / 'nope.toml'} does not exist" in str(error)
    assert error.explain()


def test_missing_file_via_environment_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMTP_OAUTH_CONFIG naming a missing file is an error too (not a silent fallback)."""
    monkeypatch.setenv("SMTP_OAUTH_CONFIG", str(tmp_path / "gone.toml"))
    assert "gone.toml does not exist" in str(config_error())


def test_no_file_and_no_environment_explains_discovery(tmp_path: Path) -> None:
    """Without any file or variables, the hint lists where files are looked for and the options."""
    error = config_error()
    assert "identity" in str(error)
    hint = error.explain() or ""
    assert "./smtp-oauth.toml" in hint
    assert "--config" in hint


def test_bad_environment_value_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from SMTP_OAUTH_SMTP__PORT is reported under smtp.port."""
    monkeypatch.setenv("SMTP_OAUTH_SMTP__PORT", "abc")
    error = config_error(write(tmp_path, MINIMAL))
    assert "smtp.port" in str(error)
    assert "'abc'" in str(error)


def test_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value that came from the environment names the variable, not only the file it beat."""
    monkeypatch.setenv("SMTP_OAUTH_SMTP__PORT", "99999")
    error = config_error(write(tmp_path, MINIMAL))
    assert "smtp.port" in str(error)
    assert "SMTP_OAUTH_SMTP__PORT" in str(error)


def test_missing_secrets_directory_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMTP_OAUTH_SECRETS_DIR naming no directory is reported, not silently ignored."""
    monkeypatch.setenv("SMTP_OAUTH_SECRETS_DIR", str(tmp_path / "no-such-dir"))
    error = config_error(write(tmp_path, MINIMAL))
    assert "SMTP_OAUTH_SECRETS_DIR" in str(error)
    assert "is not a directory" in str(error)


# -- sources and their order -----------------------------------------------------------------------


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMTP_OAUTH_<SECTION>__<KEY> overrides the file's value."""
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__TENANT_ID", "fabrikam.onmicrosoft.com")
    monkeypatch.setenv("SMTP_OAUTH_SMTP__PORT", "465")
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.identity.tenant_id == "fabrikam.onmicrosoft.com"
    assert settings.smtp.port == 465
    assert settings.identity.client_id == "11111111-2222-3333-4444-555555555555"  # rest from the file


def test_environment_alone_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file at all, SMTP_OAUTH_* variables make complete settings."""
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__TENANT_ID", "t")
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__CLIENT_ID", "c")
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__CLIENT_SECRET", SECRET)
    monkeypatch.setenv("SMTP_OAUTH_SMTP__USERNAME", "sender@contoso.com")
    settings = load_settings()
    assert settings.source_file is None
    assert settings.identity.client_secret is not None
    assert settings.identity.client_secret.get_secret_value() == SECRET


def test_keyword_arguments_beat_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides are the strongest source."""
    monkeypatch.setenv("SMTP_OAUTH_LOG_LEVEL", "ERROR")
    assert load_settings(write(tmp_path, MINIMAL), log_level="DEBUG").log_level == "DEBUG"


def test_secrets_directory_with_nested_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file SMTP_OAUTH_IDENTITY__CLIENT_SECRET in the secrets dir sets identity.client_secret
    (trailing newline stripped), as systemd credentials and Docker secrets provide them."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SMTP_OAUTH_IDENTITY__CLIENT_SECRET").write_text(SECRET + "\n")
    monkeypatch.setenv("SMTP_OAUTH_SECRETS_DIR", str(secrets))
    settings = load_settings(write(tmp_path, MINIMAL.replace(f'client_secret = "{SECRET}"', "")))
    assert settings.identity.client_secret is not None
    assert settings.identity.client_secret.get_secret_value() == SECRET


def test_systemd_credentials_directory_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CREDENTIALS_DIRECTORY (systemd LoadCredential=) works as the secrets directory."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "SMTP_OAUTH_IDENTITY__CLIENT_SECRET").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = load_settings(write(tmp_path, MINIMAL.replace(f'client_secret = "{SECRET}"', "")))
    assert settings.identity.client_secret is not None
    assert settings.identity.client_secret.get_secret_value() == "from-systemd"


def test_secrets_beat_file_and_environment_beats_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order: environment > secrets directory > file."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SMTP_OAUTH_IDENTITY__CLIENT_SECRET").write_text("from-secrets")
    monkeypatch.setenv("SMTP_OAUTH_SECRETS_DIR", str(secrets))
    path = write(tmp_path, MINIMAL)
    secret = load_settings(path).identity.client_secret
    assert secret is not None
    assert secret.get_secret_value() == "from-secrets"
    monkeypatch.setenv("SMTP_OAUTH_IDENTITY__CLIENT_SECRET", "from-env")
    secret = load_settings(path).identity.client_secret
    assert secret is not None
    assert secret.get_secret_value() == "from-env"


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    """repr() of the settings (as logged or printed in a traceback) hides the secret."""
    settings = load_settings(write(tmp_path, MINIMAL))
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_file_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config: $SMTP_OAUTH_CONFIG, ./smtp-oauth.toml, $XDG_CONFIG_HOME/smtp-oauth/config.toml."""
    xdg = write(tmp_path, MINIMAL, "xdg-config/smtp-oauth/config.toml")
    assert find_config_file() == xdg
    local = write(tmp_path, MINIMAL)
    assert find_config_file() == Path("smtp-oauth.toml")
    assert find_config_file().resolve() == local.resolve()  # type: ignore[union-attr]
    named = write(tmp_path, MINIMAL, "named.toml")
    monkeypatch.setenv("SMTP_OAUTH_CONFIG", str(named))
    assert find_config_file() == named
    assert find_config_file(xdg) == xdg  # --config beats everything


# -- cloud presets, scopes and derived values ------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "expected"),
    [
        (
            "global",
            (
                "https://login.microsoftonline.com",
                "smtp.office365.com",
                "https://outlook.office365.com/.default",
                "https://outlook.office.com/SMTP.Send",
            ),
        ),
        (
            "usgov",
            (
                "https://login.microsoftonline.us",
                "smtp.office365.us",
                "https://outlook.office365.us/.default",
                "https://outlook.office365.us/SMTP.Send",
            ),
        ),
        (
            "china",
            (
                "https://login.partner.microsoftonline.cn",
                "smtp.partner.outlook.cn",
                "https://partner.outlook.cn/.default",
                "https://partner.outlook.cn/SMTP.Send",
            ),
        ),
    ],
)
def test_cloud_presets(tmp_path: Path, cloud: str, expected: tuple[str, str, str, str]) -> None:
    """Each cloud fills in authority host, SMTP host and the app-only and delegated scopes."""
    authority_host, smtp_host, app_scope, delegated_scope = expected
    settings = load_settings(write(tmp_path, MINIMAL.replace("[smtp]", f'cloud = "{cloud}"\n[smtp]')))
    assert settings.identity.authority == f"{authority_host}/contoso.onmicrosoft.com"
    assert settings.smtp_host == smtp_host
    assert settings.identity.effective_scopes == [app_scope]
    assert settings.identity.is_microsoft_authority
    delegated = settings.identity.model_copy(update={"flow": "device_code"})
    assert delegated.effective_scopes == [delegated_scope]


def test_explicit_keys_beat_cloud_presets(tmp_path: Path) -> None:
    """smtp.host, identity.authority_host and identity.scopes override the preset."""
    text = MINIMAL.replace(
        "[smtp]",
        'authority_host = "https://127.0.0.1:8443/"\nscopes = ["api://x/.default"]\n'
        '[smtp]\nhost = "mail.example"',
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.smtp_host == "mail.example"
    assert settings.identity.authority == "https://127.0.0.1:8443/contoso.onmicrosoft.com"
    assert settings.identity.effective_scopes == ["api://x/.default"]
    assert not settings.identity.is_microsoft_authority  # used as given, no instance discovery


def test_defaults(tmp_path: Path) -> None:
    """Defaults: STARTTLS on 587, 30 s IdP timeout, sender = username, token cache in XDG state."""
    settings = load_settings(write(tmp_path, MINIMAL))
    assert (settings.smtp.port, settings.smtp.security) == (587, "starttls")
    assert settings.identity.timeout == 30
    assert settings.smtp.sender == "sender@contoso.com"
    assert settings.token_cache_path == tmp_path / "xdg-state" / "smtp-oauth" / "token-cache"
    assert settings.spool_path == tmp_path / "xdg-state" / "smtp-oauth" / "spool"


def test_hint_context_has_ids_but_no_secret(tmp_path: Path) -> None:
    """The context filled into error hints names tenant, client and mailbox, nothing secret."""
    context = load_settings(write(tmp_path, MINIMAL)).hint_context()
    assert context == {
        "tenant_id": "contoso.onmicrosoft.com",
        "client_id": "11111111-2222-3333-4444-555555555555",
        "mailbox": "sender@contoso.com",
    }


# -- paths -----------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths in a file resolve against the file's directory (absolute), not the cwd."""
    text = MINIMAL.replace(f'client_secret = "{SECRET}"', 'certificate_path = "keys/app.pem"')
    text = text.replace(
        "[smtp]", 'ca_file = "ca.pem"\ntoken_cache = "cache"\n[smtp]\nca_file = "/etc/ssl/ca.pem"'
    )
    text += '\n[relay]\nspool_dir = "spool"\ntls_certificate = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
    config = write(tmp_path, text, "conf/smtp-oauth.toml")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf/smtp-oauth.toml"))
    base = config.parent
    assert settings.identity.certificate_path == base / "keys/app.pem"
    assert settings.identity.ca_file == base / "ca.pem"
    assert settings.identity.token_cache == base / "cache"
    assert settings.relay.spool_dir == base / "spool"
    assert settings.relay.tls_certificate == base / "tls/cert.pem"
    assert settings.relay.tls_key == base / "tls/key.pem"
    assert settings.smtp.ca_file == Path("/etc/ssl/ca.pem")  # absolute: untouched
    assert settings.identity.certificate_path.is_absolute()


def test_home_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'~/...' in a path means the home directory, as in msmtp and ssh configuration files."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load_settings(write(tmp_path, MINIMAL.replace("[smtp]", 'token_cache = "~/tokens"\n[smtp]')))
    assert settings.identity.token_cache == tmp_path / "home" / "tokens"


# -- parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("5d", timedelta(days=5)),
        ("2w", timedelta(weeks=2)),
        ("90", timedelta(seconds=90)),
        (45, timedelta(seconds=45)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    """Durations: units s, m, h, d, w, combined, or plain seconds."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5x", "1h and then some", "-5m"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    """Anything else is a ValueError with an example of a valid duration."""
    with pytest.raises(ValueError, match=r"e\.g\."):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("::1", ("::1", 2525)),
        ("localhost", ("localhost", 2525)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    """Listen addresses: host:port, [v6]:port, bare v6 or host (default port)."""
    assert parse_listen(text) == expected


def test_loaded_settings_are_one_frozen_class(tmp_path: Path) -> None:
    """load_settings returns the Settings class itself, whose values cannot be changed in place."""
    from pydantic import ValidationError

    from smtp_oauth.settings.models import Settings

    settings = load_settings(write(tmp_path, MINIMAL))
    assert type(settings) is Settings
    with pytest.raises(ValidationError, match="frozen"):
        settings.smtp.port = 25  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_environment_value_is_resolved_against_the_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path from the environment is relative to the configuration file, like the file's."""
    config = write(tmp_path, MINIMAL, "conf/smtp-oauth.toml")
    monkeypatch.setenv("SMTP_OAUTH_RELAY__SPOOL_DIR", "spool")
    assert load_settings(config).spool_path == config.parent.absolute() / "spool"
