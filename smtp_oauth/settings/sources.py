"""Where each effective setting came from: a file, an environment variable, a secrets file, a default.

``smtp-oauth config`` shows this so a person can tell why a value is what it is (the classic
"I changed the file but nothing happened": an ``SMTP_OAUTH_*`` variable was beating it). The
sources are asked exactly as ``load_settings`` asks them (pydantic-settings' own sources, same
prefix and delimiter), strongest first: environment, secrets directory, file; what none of them
set is a default, or a value derived from another key (cloud preset, flow, state directory).

Secrets are never returned in clear: :func:`describe_settings` gives ``**********`` for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from smtp_oauth.settings.loading import NESTED_DELIMITER, find_config_file, secrets_directory, setting_sources
from smtp_oauth.settings.models import ENV_PREFIX, Settings

__all__ = ["REDACTED", "SettingSource", "SettingValue", "describe_settings", "format_value"]

REDACTED = "**********"


@dataclass(frozen=True)
class SettingSource:
    """One place a value can come from. ``kind``: file, env, secrets, default or derived."""

    kind: str
    where: str = ""  # file path, variable name, secret file path, or what the value derives from

    def __str__(self) -> str:
        labels = {"file": "file", "env": "env", "secrets": "secrets dir", "default": "default"}
        if self.kind == "derived":
            return f"default ({self.where})"
        label = labels.get(self.kind, self.kind)
        return f"{label} {self.where}".strip()


@dataclass(frozen=True)
class SettingValue:
    """An effective setting: dotted key, printable value (secrets redacted), and its source."""

    key: str
    value: Any  # JSON-compatible; secrets already replaced by REDACTED, unset values are None
    source: SettingSource
    secret: bool = False


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _env_name(path: tuple[str, ...], environ: Mapping[str, str]) -> str:
    """The variable that set ``path``: the leaf's own name, or a section's JSON variable."""
    names = {name.upper(): name for name in environ}
    for depth in range(len(path), 0, -1):
        candidate = ENV_PREFIX + NESTED_DELIMITER.join(path[:depth]).upper()
        if candidate in names:
            return names[candidate]
    return ENV_PREFIX + NESTED_DELIMITER.join(path).upper()


def _secret_file(path: tuple[str, ...], directory: Path) -> str:
    wanted = (ENV_PREFIX + NESTED_DELIMITER.join(path)).lower()
    try:
        for entry in directory.iterdir():
            if entry.name.lower() == wanted:
                return str(entry)
    except OSError:
        pass
    return str(directory / (ENV_PREFIX + NESTED_DELIMITER.join(path).upper()))


# Keys whose default is computed from other keys: what to say about them when nothing set them,
# and the value actually used.
_DERIVED: dict[str, tuple[str, Callable[[Settings], Any]]] = {
    "identity.authority_host": ("from identity.cloud", lambda s: s.identity.effective_authority_host),
    "identity.scopes": ("from identity.flow and identity.cloud", lambda s: s.identity.effective_scopes),
    "identity.token_cache": ("$XDG_STATE_HOME/smtp-oauth/token-cache", lambda s: s.token_cache_path),
    "smtp.host": ("from identity.cloud", lambda s: s.smtp_host),
    "smtp.from_address": ("same as smtp.username", lambda s: s.smtp.sender),
    "graph.endpoint": ("from identity.cloud", lambda s: s.graph_endpoint),
    "graph.mailbox": ("same as smtp.username", lambda s: s.graph_mailbox),
    "graph.scopes": ("from identity.flow and identity.cloud", lambda s: s.graph_scopes),
    "relay.spool_dir": ("$XDG_STATE_HOME/smtp-oauth/spool", lambda s: s.spool_path),
    "relay.submission_socket": (
        "$XDG_RUNTIME_DIR/smtp-oauth/submit.sock, else /run/smtp-oauth/submit.sock",
        lambda s: s.relay.submission_socket_path,
    ),
}


def _effective(settings: Settings, key: str, value: Any) -> Any:
    """The value actually used for keys whose unset default is computed elsewhere."""
    if value is None and key in _DERIVED:
        return _DERIVED[key][1](settings)
    return value


def format_value(value: Any) -> Any:
    """A JSON-compatible form: paths as strings, durations as ``"30s"``-style text."""
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, timedelta):
        return _format_duration(value)
    if isinstance(value, BaseModel):
        return {name: format_value(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list | tuple):
        return [format_value(item) for item in value]
    return value


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _leaves(model: BaseModel, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every field; sections recurse, lists (relay.users) are one leaf."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def _profile_source(
    path: tuple[str, ...],
    sources: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str],
    secrets_dir: Path | None,
    toml_file: Path | None,
) -> SettingSource | None:
    """Where ``profiles.NAME.<key>`` was set, if it was: the profile's value beats the top level's."""
    label = f"[{'.'.join(path[:2])}]"
    if _lookup(sources["env"], path):
        return SettingSource("env", _env_name(path, env))
    if "secrets" in sources and secrets_dir is not None and _lookup(sources["secrets"], path):
        return SettingSource("secrets", _secret_file(path, secrets_dir))
    if "file" in sources and _lookup(sources["file"], path):
        return SettingSource("file", f"{Path(str(toml_file)).resolve()} {label}")
    return None


def describe_settings(
    settings: Settings,
    *,
    config_path: str | os.PathLike[str] | None = None,
) -> list[SettingValue]:
    """Every key of ``settings`` with its effective value (secrets redacted) and where it came from.

    ``config_path`` is what was passed as ``--config`` (None: discovered as load_settings does).
    The environment is this process's, as for load_settings.
    """
    env = os.environ
    toml_file = settings.source_file or find_config_file(config_path, environ=env)
    secrets_dir = secrets_directory(env)
    sources = {kind: source() for kind, source in setting_sources(toml_file, secrets_dir).items()}
    described = []
    profile = settings.profile
    for path, raw in _leaves(settings):
        key = ".".join(path)
        if path[0] == "profiles":
            continue  # the raw tables; a profile's effect shows in the keys it overrides
        own = ("profiles", profile, *path) if profile is not None else None
        if own is not None and (found := _profile_source(own, sources, env, secrets_dir, toml_file)):
            source = found
        elif _lookup(sources["env"], path):
            source = SettingSource("env", _env_name(path, env))
        elif "secrets" in sources and secrets_dir is not None and _lookup(sources["secrets"], path):
            source = SettingSource("secrets", _secret_file(path, secrets_dir))
        elif "file" in sources and _lookup(sources["file"], path):
            source = SettingSource("file", str(Path(str(toml_file)).resolve()))
        elif key in _DERIVED:
            source = SettingSource("derived", _DERIVED[key][0])
        else:
            source = SettingSource("default")
        # relay.users holds password hashes: SecretStr inside the models, redacted by format_value.
        value = format_value(_effective(settings, key, raw))
        described.append(SettingValue(key=key, value=value, source=source, secret=isinstance(raw, SecretStr)))
    return described
