"""Loading settings: the only module that reads the environment and configuration files.

Sources, strongest first: keyword arguments, environment (``SMTP_OAUTH_<SECTION>__<KEY>``), a
secrets directory holding one file per key with the same names (systemd ``$CREDENTIALS_DIRECTORY``,
Docker's ``/run/secrets``, or ``$SMTP_OAUTH_SECRETS_DIR``), then the TOML file. The file is found as
the interface says: ``--config``, ``$SMTP_OAUTH_CONFIG``, ``./smtp-oauth.toml``,
``$XDG_CONFIG_HOME/smtp-oauth/config.toml``, ``/etc/smtp-oauth/config.toml``.

The sources are pydantic-settings' own (:func:`setting_sources`), asked one by one and merged
here, so that the one :class:`~smtp_oauth.settings.models.Settings` class serves every file and
secrets directory; ``smtp-oauth config`` asks the same sources where each value came from.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_settings import (
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsError,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources import NestedSecretsSettingsSource

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.discovery import find_config_file, secrets_directory
from smtp_oauth.settings.models import ENV_PREFIX, Settings
from smtp_oauth.settings.profiles import PROFILE_VARIABLE, apply_profile

__all__ = [
    "check_file_permissions",
    "find_config_file",
    "load_settings",
    "secrets_directory",
    "setting_sources",
    "settings_for_profile",
]

NESTED_DELIMITER = "__"
_SECRET_KEYS = {"client_secret", "certificate_password", "password", "password_hash", "spool_url"}


def setting_sources(
    toml_file: Path | None, secrets_dir: Path | None
) -> dict[str, PydanticBaseSettingsSource]:
    """The sources settings are read from, strongest first: ``env``, then ``secrets``, ``file``."""
    sources: dict[str, PydanticBaseSettingsSource] = {"env": EnvSettingsSource(Settings)}
    if secrets_dir is not None:
        sources["secrets"] = NestedSecretsSettingsSource(
            SecretsSettingsSource(Settings, secrets_dir=secrets_dir),
            secrets_prefix=ENV_PREFIX,
            secrets_nested_delimiter=NESTED_DELIMITER,
        )
    if toml_file is not None:
        sources["file"] = TomlConfigSettingsSource(Settings, toml_file=toml_file)
    return sources


def _merged(weaker: Mapping[str, Any], stronger: Mapping[str, Any]) -> dict[str, Any]:
    """``stronger`` over ``weaker``, section by section (a variable sets one key, not the section)."""
    merged = dict(weaker)
    for key, value in stronger.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merged(below, value)
        else:
            merged[key] = value
    return merged


def _describe_validation_error(error: ValidationError, source: str) -> ConfigurationError:
    lines = []
    first_key = None
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"])
        first_key = first_key or key
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "required but not set"
        shown = ""
        last = str(item["loc"][-1]) if item["loc"] else ""
        # An unknown key is most often a misspelt known one (client_secert): its value may be the
        # secret, so it is never shown; nor are values of secret keys, or whole tables.
        showable = (
            last not in _SECRET_KEYS
            and item["type"] != "extra_forbidden"
            and not isinstance(item.get("input"), dict)
        )
        if "input" in item and item["type"] != "missing" and showable:
            shown = f" (got {item['input']!r})"
        # The environment beats the file: a value set there must not send the reader to the file.
        variable = ENV_PREFIX + NESTED_DELIMITER.join(str(part) for part in item["loc"]).upper()
        if item["loc"] and variable in {name.upper() for name in os.environ}:
            shown += f" (set by {variable})"
        lines.append(f"  {key or '(top level)'}: {message}{shown}")
    text = f"invalid configuration ({source}):\n" + "\n".join(lines)
    return ConfigurationError(
        text,
        file=source,
        key=first_key,
        hint="Fix the keys above; `smtp-oauth config --example` shows every key with its default.",
    )


def _check_toml(toml_file: Path) -> dict[str, Any]:
    """The file's tables; a syntax error or an unreadable file said as such, not as missing keys."""
    try:
        with toml_file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{toml_file}: TOML syntax error: {exc}", file=str(toml_file), hint="Fix the TOML syntax."
        ) from exc
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read configuration file {toml_file}: {exc.strerror}", file=str(toml_file)
        ) from exc


# What counts as a secret in a configuration file. Keys that give access by themselves (the app's
# client secret, its certificate's password, a user's password (ROPC), a password inside the
# spool's database URL) are refused in a file group or others may read or write, as msmtp refuses
# a password in such a file
# ("must not have more than user read/write permissions"). Relay users' scrypt hashes are not
# access by themselves, only material for offline guessing: like /etc/shadow (0640 root:shadow)
# they may be read through the service's group (the systemd unit's root:smtp-oauth 0640), but not
# by everyone. Secrets from the environment or a secrets directory never reach this check.
_ACCESS_SECRET_KEYS = frozenset({"client_secret", "certificate_password", "password"})
_HASH_KEYS = frozenset({"password_hash"})


def _secrets_in(value: object) -> tuple[set[str], set[str]]:
    """The access secrets and hash keys set (non-empty) anywhere in a TOML document."""
    access: set[str] = set()
    hashes: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in _ACCESS_SECRET_KEYS and item:
                access.add(key)
            elif key == "spool_url" and isinstance(item, str) and _url_password(item):
                access.add("spool_url (its password)")
            elif key in _HASH_KEYS and item:
                hashes.add(key)
            else:
                more_access, more_hashes = _secrets_in(item)
                access |= more_access
                hashes |= more_hashes
    elif isinstance(value, list):
        for item in value:
            more_access, more_hashes = _secrets_in(item)
            access |= more_access
            hashes |= more_hashes
    return access, hashes


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def check_file_permissions(toml_file: Path, document: Mapping[str, Any]) -> None:
    """Refuse a configuration file holding a secret that others may read (see _ACCESS_SECRET_KEYS)."""
    if os.name == "nt":  # mode bits mean nothing there; the file's ACL protects it
        return
    access, hashes = _secrets_in(document)
    if not access and not hashes:
        return
    mode = stat.S_IMODE(toml_file.stat().st_mode)
    if access and mode & 0o077:
        held, allowed, wanted = ", ".join(sorted(access)), "user read/write", "600"
    elif hashes and mode & 0o007:
        held, allowed, wanted = "relay users' password hashes", "user and group", "640"
    else:
        return
    raise ConfigurationError(
        f"configuration file {toml_file} holds {held} but its mode is {mode:04o}: it must not have "
        f"more than {allowed} permissions; run: chmod {wanted} {toml_file}",
        file=str(toml_file),
        hint=(
            "Or move the secret out of the file: SMTP_OAUTH_IDENTITY__CLIENT_SECRET in the environment "
            "or a file of that name in the secrets directory ($CREDENTIALS_DIRECTORY, /run/secrets)."
        ),
    )


def load_settings(
    path: str | os.PathLike[str] | None = None, *, profile: str | None = None, **overrides: Any
) -> Settings:
    """Read the settings from the file (discovered as the CLI does), the environment and secrets.

    Keyword arguments are the strongest source (``identity={...}``). ``profile`` (default
    ``$SMTP_OAUTH_PROFILE``) merges ``[profiles.NAME]`` over the top level. Raises ConfigurationError.
    """
    toml_file = find_config_file(path)
    source = str(toml_file) if toml_file else "environment"
    if toml_file is not None:
        check_file_permissions(toml_file, _check_toml(toml_file))
    sources = setting_sources(toml_file, secrets_directory())
    try:
        values: dict[str, Any] = {}
        for each in reversed(sources.values()):
            values = _merged(values, each())
    except SettingsError as exc:
        raise ConfigurationError(
            f"invalid configuration ({source}): {exc}", file=source, hint="Check the SMTP_OAUTH_* variables."
        ) from None
    values = _merged(values, overrides)
    chosen = profile if profile is not None else (os.environ.get(PROFILE_VARIABLE) or None)
    return _validated(values, chosen, toml_file)


def settings_for_profile(settings: Settings, profile: str | None) -> Settings:
    """``settings`` as ``[profiles.profile]`` makes them (None: the top level): another sender of
    the same configuration, e.g. a relay user's. ConfigurationError for an unknown profile."""
    if profile == settings.profile:
        return settings
    raw = settings._raw
    if raw is None:  # made in code, not by load_settings: what was set is what there is
        raw = settings.model_dump(exclude_unset=True)
    return _validated(raw, profile, settings.source_file)


def _validated(values: dict[str, Any], profile: str | None, toml_file: Path | None) -> Settings:
    source = str(toml_file) if toml_file else "environment"
    chosen = apply_profile(values, profile, source=source) if profile is not None else values
    try:
        settings = Settings.model_validate(chosen)
    except ValidationError as exc:
        error = _describe_validation_error(exc, source if profile is None else f"{source}, profile {profile}")
        if toml_file is None:
            error.hint = (
                "No configuration file was found (looked for ./smtp-oauth.toml, "
                "$XDG_CONFIG_HOME/smtp-oauth/config.toml and /etc/smtp-oauth/config.toml). "
                "Pass --config, set SMTP_OAUTH_CONFIG, or set SMTP_OAUTH_* variables."
            )
        raise error from None
    if toml_file is not None:
        # Absolute, so that a later chdir (a daemon) does not change what the paths mean.
        settings = _resolve_relative_paths(settings, toml_file.parent.absolute())
    settings._source_file = toml_file
    settings._profile = profile
    settings._raw = values
    return settings


def _resolve_relative_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a configuration file are relative to that file, as in nginx or Postfix."""

    def resolved(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()  # "~/..." as in msmtp's and ssh's configuration files
        return path if path.is_absolute() else base / path

    identity, smtp, relay = settings.identity, settings.smtp, settings.relay
    identity_paths = ("certificate_path", "federated_token_file", "ca_file", "token_cache")
    relay_paths = ("spool_dir", "tls_certificate", "tls_key", "submission_socket")
    return settings.model_copy(
        update={
            "identity": identity.model_copy(
                update={name: resolved(getattr(identity, name)) for name in identity_paths}
            ),
            "smtp": smtp.model_copy(update={"ca_file": resolved(smtp.ca_file)}),
            "relay": relay.model_copy(update={name: resolved(getattr(relay, name)) for name in relay_paths}),
        }
    )
