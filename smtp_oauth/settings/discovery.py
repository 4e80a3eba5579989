"""Where configuration, state and the relay's socket are found: stdlib only, no validation.

``load_settings`` (pydantic-settings) and ``send-mail``'s snapshot (``settings/snapshot.py``) both
start here, so the file they read and the places they look are decided once. The file is found as
the interface says: ``--config``, ``$SMTP_OAUTH_CONFIG``, ``./smtp-oauth.toml``,
``$XDG_CONFIG_HOME/smtp-oauth/config.toml``, ``/etc/smtp-oauth/config.toml``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from smtp_oauth.errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "SECRETS_DIR_VARIABLES",
    "find_config_file",
    "secrets_directory",
    "state_dir",
    "submission_socket_candidates",
]

ENV_PREFIX = "SMTP_OAUTH_"
SECRETS_DIR_VARIABLES = ("SMTP_OAUTH_SECRETS_DIR", "CREDENTIALS_DIRECTORY")
DOCKER_SECRETS = Path("/run/secrets")
SUBMISSION_SOCKET_NAME = Path("smtp-oauth") / "submit.sock"
SYSTEM_RUNTIME_DIR = Path("/run")  # a system service's RuntimeDirectory= lives here


def _candidate_files(environ: Mapping[str, str]) -> Iterable[Path]:
    yield Path("smtp-oauth.toml")
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    yield Path(xdg) / "smtp-oauth" / "config.toml"
    yield Path("/etc/smtp-oauth/config.toml")


def find_config_file(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The configuration file to read, or None when there is none (environment only).

    An explicitly named file (argument or ``$SMTP_OAUTH_CONFIG``) must exist.
    """
    env = os.environ if environ is None else environ
    explicit = path if path is not None else env.get("SMTP_OAUTH_CONFIG")
    if explicit:
        explicit_path = Path(explicit)
        if not explicit_path.is_file():
            raise ConfigurationError(
                f"configuration file {explicit_path} does not exist",
                file=str(explicit_path),
                hint="Create it (`smtp-oauth config --example > smtp-oauth.toml`) or fix the path.",
            )
        return explicit_path
    for candidate in _candidate_files(env):
        if candidate.is_file():
            return candidate
    return None


def secrets_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where per-key secret files live: $SMTP_OAUTH_SECRETS_DIR, systemd's credentials, or None."""
    env = os.environ if environ is None else environ
    for name in SECRETS_DIR_VARIABLES:
        if env.get(name):
            if not Path(env[name]).is_dir():
                # Ignoring it would surface later as a confusing "client_secret is missing".
                raise ConfigurationError(
                    f"{name}={env[name]} is not a directory", key=name, hint=f"Fix or unset {name}."
                )
            return Path(env[name])
    docker = DOCKER_SECRETS
    return docker if docker.is_dir() and any(docker.glob(f"{ENV_PREFIX}*")) else None


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/smtp-oauth`` (default ``~/.local/state/smtp-oauth``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "smtp-oauth"


def submission_socket_candidates(
    configured: Path | None, *, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """The submission socket: the configured path, else the per-user one, then the system one.

    A relay binds the first; ``send-mail`` tries them in order, so a cron job (which has no
    ``$XDG_RUNTIME_DIR``) and a login shell (which has one) both find a system relay's socket.
    """
    if configured is not None:
        return [configured]
    env = os.environ if environ is None else environ
    system = SYSTEM_RUNTIME_DIR / SUBMISSION_SOCKET_NAME
    runtime = env.get("XDG_RUNTIME_DIR")
    return [Path(runtime) / SUBMISSION_SOCKET_NAME, system] if runtime else [system]
