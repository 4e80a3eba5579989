"""Settings: the only module that reads the environment and configuration files.

Sources, strongest first: keyword arguments, environment (``SMTP_OAUTH_<SECTION>__<KEY>``), a
secrets directory holding one file per key with the same names (systemd ``$CREDENTIALS_DIRECTORY``,
Docker's ``/run/secrets``, or ``$SMTP_OAUTH_SECRETS_DIR``), then the TOML file. The file is found as
the interface says: ``--config``, ``$SMTP_OAUTH_CONFIG``, ``./smtp-oauth.toml``,
``$XDG_CONFIG_HOME/smtp-oauth/config.toml``, ``/etc/smtp-oauth/config.toml``.

Cloud presets fill in the authority host, SMTP host and scope resource; an explicit key wins.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources import NestedSecretsSettingsSource

from smtp_oauth.errors import ConfigurationError

__all__ = [
    "CLOUDS",
    "Cloud",
    "IdentitySettings",
    "RelaySettings",
    "RelayUser",
    "Settings",
    "SmtpSettings",
    "find_config_file",
    "load_settings",
    "parse_duration",
    "parse_listen",
]

ENV_PREFIX = "SMTP_OAUTH_"
SUBMISSION_PORT = 587
IMPLICIT_TLS_PORT = 465
DEFAULT_RELAY_LISTEN = "127.0.0.1:2525"
EXCHANGE_MAX_MESSAGE_SIZE = 35 * 1024 * 1024  # Exchange Online's default MaxSendSize (35 MB)

Flow = Literal["client_credentials", "device_code", "interactive", "username_password"]
DELEGATED_FLOWS: frozenset[str] = frozenset({"device_code", "interactive", "username_password"})


@dataclass(frozen=True)
class Cloud:
    """Where a Microsoft cloud's identity platform and Exchange Online live."""

    authority_host: str
    smtp_host: str
    app_scope: str  # client credentials: "<resource>/.default"
    delegated_scope: str  # delegated flows: "<resource>/SMTP.Send"


# Sources: exchange-online.md B2 (national clouds as documented by sasl-xoauth2 and Microsoft).
CLOUDS: dict[str, Cloud] = {
    "global": Cloud(
        "https://login.microsoftonline.com",
        "smtp.office365.com",
        "https://outlook.office365.com/.default",
        "https://outlook.office.com/SMTP.Send",
    ),
    "usgov": Cloud(  # GCC High / DoD
        "https://login.microsoftonline.us",
        "smtp.office365.us",
        "https://outlook.office365.us/.default",
        "https://outlook.office365.us/SMTP.Send",
    ),
    "china": Cloud(  # operated by 21Vianet
        "https://login.partner.microsoftonline.cn",
        "smtp.partner.outlook.cn",
        "https://partner.outlook.cn/.default",
        "https://partner.outlook.cn/SMTP.Send",
    ),
}
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {cloud.authority_host.removeprefix("https://") for cloud in CLOUDS.values()}
    | {"login.microsoft.com", "login.windows.net", "login.chinacloudapi.cn", "login-us.microsoftonline.com"}
)

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """``"30s"``, ``"15m"``, ``"1h30m"``, ``"5d"``, or a number of seconds, as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic turns only ValueError into a validation message.
        raise ValueError("expected a duration such as '30s', '15m', '1h' or '5d'")  # noqa: TRY004
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])", "", text).strip():
        raise ValueError(f"{value!r} is not a duration; use e.g. '30s', '15m', '1h' or '5d'")
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def parse_listen(value: str, *, default_port: int = 2525) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:2525"``, ``"::1"`` or ``"localhost"`` as (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # bare IPv6 address or bare host
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{value!r} has no host; use e.g. '127.0.0.1:2525'")
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


class _Section(BaseModel):
    # Typos inside a section are errors, not silently ignored keys.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=False)


class IdentitySettings(_Section):
    """``[identity]``: who we are to the Microsoft identity platform."""

    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    flow: Flow = "client_credentials"
    client_secret: SecretStr | None = None
    certificate_path: Path | None = None
    certificate_password: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    cloud: Literal["global", "usgov", "china"] = "global"
    authority_host: str | None = None
    scopes: list[str] | None = None
    token_cache: Path | None = None
    ca_file: Path | None = None
    timeout: float = Field(30.0, gt=0)

    @field_validator("authority_host")
    @classmethod
    def _https_authority(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not value.startswith("https://"):
            # MSAL refuses anything but https authorities (libraries.md §2).
            raise ValueError("must be an https:// URL, e.g. https://login.microsoftonline.com")
        return value

    @model_validator(mode="after")
    def _credentials_fit_flow(self) -> IdentitySettings:
        if self.flow == "client_credentials" and not (self.client_secret or self.certificate_path):
            raise ValueError(
                "flow 'client_credentials' needs identity.client_secret or identity.certificate_path"
            )
        if self.client_secret and self.certificate_path:
            raise ValueError("set identity.client_secret or identity.certificate_path, not both")
        if self.flow == "username_password" and not (self.username and self.password):
            raise ValueError("flow 'username_password' needs identity.username and identity.password")
        return self

    @property
    def is_delegated(self) -> bool:
        return self.flow in DELEGATED_FLOWS

    @property
    def cloud_preset(self) -> Cloud:
        return CLOUDS[self.cloud]

    @property
    def effective_authority_host(self) -> str:
        return self.authority_host or self.cloud_preset.authority_host

    @property
    def authority(self) -> str:
        """Tenant-specific authority URL (``/common`` is unreliable for these flows)."""
        return f"{self.effective_authority_host}/{self.tenant_id}"

    @property
    def is_microsoft_authority(self) -> bool:
        """False for the sandbox or a private test IdP: used as given, without instance discovery."""
        host = self.effective_authority_host.removeprefix("https://").split("/")[0]
        return host.lower() in MICROSOFT_AUTHORITY_HOSTS

    @property
    def effective_scopes(self) -> list[str]:
        if self.scopes:
            return list(self.scopes)
        preset = self.cloud_preset
        return [preset.delegated_scope] if self.is_delegated else [preset.app_scope]


class SmtpSettings(_Section):
    """``[smtp]``: the Exchange Online submission endpoint and the mailbox we send as."""

    host: str | None = None
    port: int = Field(SUBMISSION_PORT, ge=1, le=65535)
    security: Literal["starttls", "tls"] = "starttls"
    username: str = Field(min_length=3, pattern=r"^[^\s@]+@[^\s@]+$")
    from_address: str | None = None
    ca_file: Path | None = None
    timeout: float = Field(60.0, gt=0)

    @property
    def sender(self) -> str:
        return self.from_address or self.username


class AllowNetwork(_Section):
    """A network whose clients may send without AUTH, as if they were ``user``."""

    cidr: str
    user: str

    @field_validator("cidr")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        ipaddress.ip_network(value, strict=False)
        return value


class RelayUser(_Section):
    """``[[relay.users]]``: a local account a legacy sender logs in with."""

    name: str = Field(min_length=1)
    password_hash: SecretStr
    mailbox: str | None = None
    allowed_senders: list[str] | None = None


class RelaySettings(_Section):
    """``[relay]``: the local store-and-forward relay."""

    listen: str = DEFAULT_RELAY_LISTEN
    spool_dir: Path | None = None
    max_message_size: int = Field(EXCHANGE_MAX_MESSAGE_SIZE, gt=0)
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    upstream_connections: int = Field(3, ge=1, le=50)
    messages_per_minute: int = Field(30, ge=0)
    max_queue_age: Duration = timedelta(days=5)
    retention: Duration = timedelta(days=7)
    bounce: bool = False
    shutdown_timeout: Duration = timedelta(seconds=30)
    # Plain [] (pydantic copies a mutable default per instance): default_factory=list would make
    # pydantic call inspect.signature(list), which compiles tokenize's regexes at every start-up.
    allow_networks: list[AllowNetwork] = []
    metrics_listen: str = ""
    users: list[RelayUser] = []

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RelaySettings:
        if bool(self.tls_certificate) != bool(self.tls_key):
            raise ValueError("relay.tls_certificate and relay.tls_key go together")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def state_dir() -> Path:
    """``$XDG_STATE_HOME/smtp-oauth`` (default ``~/.local/state/smtp-oauth``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "smtp-oauth"


class Settings(BaseSettings):
    """Everything smtp-oauth is configured with; see config.example.toml."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=False,
        # load_settings validates through a subclass (_settings_class) that builds its own
        # validator: building this one at import would be wasted on every command's start-up.
        defer_build=True,
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    identity: IdentitySettings
    smtp: SmtpSettings
    relay: RelaySettings = RelaySettings()
    _source_file: Path | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._source_file

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _apply_cloud_presets(self) -> Settings:
        if self.smtp.host is None:
            self.smtp.host = self.identity.cloud_preset.smtp_host
        return self

    @property
    def smtp_host(self) -> str:
        assert self.smtp.host is not None  # filled by _apply_cloud_presets
        return self.smtp.host

    @property
    def token_cache_path(self) -> Path:
        return self.identity.token_cache or state_dir() / "token-cache"

    @property
    def spool_path(self) -> Path:
        return self.relay.spool_dir or state_dir() / "spool"

    def hint_context(self) -> dict[str, str]:
        """Ids used to fill in the hints of errors (never a secret)."""
        return {
            "tenant_id": self.identity.tenant_id,
            "client_id": self.identity.client_id,
            "mailbox": self.smtp.username,
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("secrets_dir"):
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings, secrets_prefix=ENV_PREFIX, secrets_nested_delimiter="__"
                )
            )
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


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
    for name in ("SMTP_OAUTH_SECRETS_DIR", "CREDENTIALS_DIRECTORY"):
        if env.get(name):
            if not Path(env[name]).is_dir():
                # Ignoring it would surface later as a confusing "client_secret is missing".
                raise ConfigurationError(
                    f"{name}={env[name]} is not a directory", key=name, hint=f"Fix or unset {name}."
                )
            return Path(env[name])
    docker = Path("/run/secrets")
    return docker if docker.is_dir() and any(docker.glob(f"{ENV_PREFIX}*")) else None


def _settings_class(toml_file: Path | None, secrets_dir: Path | None) -> type[Settings]:
    class _Configured(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file, secrets_dir=secrets_dir)
        if secrets_dir is not None:
            model_config["secrets_dir_missing"] = "ok"

    _Configured.__name__ = "Settings"
    _Configured.__qualname__ = "Settings"
    return _Configured


_SECRET_KEYS = {"client_secret", "certificate_password", "password", "password_hash"}


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
        showable = last not in _SECRET_KEYS and not isinstance(item.get("input"), dict)
        if "input" in item and item["type"] != "missing" and showable:
            shown = f" (got {item['input']!r})"
        # The environment beats the file: a value set there must not send the reader to the file.
        variable = ENV_PREFIX + "__".join(str(part) for part in item["loc"]).upper()
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


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from the file (discovered as the CLI does), the environment and secrets.

    Keyword arguments are the strongest source (``identity={...}``). Raises ConfigurationError.
    """
    toml_file = find_config_file(path)
    source = str(toml_file) if toml_file else "environment"
    if toml_file is not None:
        try:
            with toml_file.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(
                f"{toml_file}: TOML syntax error: {exc}", file=str(toml_file), hint="Fix the TOML syntax."
            ) from exc
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read configuration file {toml_file}: {exc.strerror}", file=str(toml_file)
            ) from exc
    settings_cls = _settings_class(toml_file, secrets_directory())
    try:
        settings = settings_cls(**overrides)
    except ValidationError as exc:
        error = _describe_validation_error(exc, source)
        if toml_file is None:
            error.hint = (
                "No configuration file was found (looked for ./smtp-oauth.toml, "
                "$XDG_CONFIG_HOME/smtp-oauth/config.toml and /etc/smtp-oauth/config.toml). "
                "Pass --config, set SMTP_OAUTH_CONFIG, or set SMTP_OAUTH_* variables."
            )
        raise error from None
    except SettingsError as exc:
        raise ConfigurationError(
            f"invalid configuration ({source}): {exc}", file=source, hint="Check the SMTP_OAUTH_* variables."
        ) from None
    settings._source_file = toml_file
    if toml_file is not None:
        # Absolute, so that a later chdir (a daemon) does not change what the paths mean.
        _resolve_relative_paths(settings, toml_file.parent.absolute())
    return settings


def _resolve_relative_paths(settings: Settings, base: Path) -> None:
    """Relative paths in a configuration file are relative to that file, as in nginx or Postfix."""

    def resolved(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()  # "~/..." as in msmtp's and ssh's configuration files
        return path if path.is_absolute() else base / path

    identity, relay = settings.identity, settings.relay
    identity.certificate_path = resolved(identity.certificate_path)
    identity.ca_file = resolved(identity.ca_file)
    identity.token_cache = resolved(identity.token_cache)
    settings.smtp.ca_file = resolved(settings.smtp.ca_file)
    relay.spool_dir = resolved(relay.spool_dir)
    relay.tls_certificate = resolved(relay.tls_certificate)
    relay.tls_key = resolved(relay.tls_key)
