"""The settings models: what smtp-oauth is configured with, as frozen values.

Every section is a frozen pydantic model, and so is :class:`Settings`: code that needs another
value builds a copy (``settings.model_copy(update=...)``) rather than changing the one it was given.
Reading files and the environment is :mod:`smtp_oauth.settings.loading`'s job.

Cloud presets fill in the authority host, SMTP host and scope resource; an explicit key wins.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

# The stdlib half (send-mail's hot path uses it without pydantic), here under its old names too.
from smtp_oauth.settings.discovery import ENV_PREFIX, state_dir, submission_socket_candidates

__all__ = [
    "CLOUDS",
    "ENV_PREFIX",
    "SERVICES",
    "Cloud",
    "GraphSettings",
    "IdentitySettings",
    "RelaySettings",
    "RelayUser",
    "SendMailSettings",
    "Settings",
    "SmtpSettings",
    "parse_duration",
    "parse_listen",
    "state_dir",
    "submission_socket_candidates",
]

SUBMISSION_PORT = 587
IMPLICIT_TLS_PORT = 465
DEFAULT_RELAY_LISTEN = "127.0.0.1:2525"
EXCHANGE_MAX_MESSAGE_SIZE = 35 * 1024 * 1024  # Exchange Online's default MaxSendSize (35 MB)
MAX_WORKERS = 256  # relay.workers: accept processes at most

Flow = Literal[
    "client_credentials",
    "device_code",
    "interactive",
    "username_password",
    "managed_identity",
    "workload_identity",
]
TransportName = Literal["smtp", "graph"]
# `smtp-oauth token --resource` names; anything else is taken as a resource URI.
RESOURCES = ("exchange", "graph")
DELEGATED_FLOWS: frozenset[str] = frozenset({"device_code", "interactive", "username_password"})
# App-only flows: no user, a token for "<resource>/.default" that the app itself holds.
APP_ONLY_FLOWS: frozenset[str] = frozenset({"client_credentials", "managed_identity", "workload_identity"})


@dataclass(frozen=True)
class Cloud:
    """Where a Microsoft cloud's identity platform and Exchange Online live."""

    authority_host: str
    smtp_host: str
    app_scope: str  # client credentials: "<resource>/.default"
    delegated_scope: str  # delegated flows: "<resource>/SMTP.Send"
    graph_endpoint: str  # Microsoft Graph's service root, which is also its resource URI

    @property
    def graph_app_scope(self) -> str:
        return f"{self.graph_endpoint}/.default"

    @property
    def graph_delegated_scope(self) -> str:
        return f"{self.graph_endpoint}/Mail.Send"


# Sources: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
# and https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud;
# Graph's national cloud roots: https://learn.microsoft.com/graph/deployments
CLOUDS: dict[str, Cloud] = {
    "global": Cloud(
        "https://login.microsoftonline.com",
        "smtp.office365.com",
        "https://outlook.office365.com/.default",
        "https://outlook.office.com/SMTP.Send",
        "https://graph.microsoft.com",
    ),
    "usgov": Cloud(  # GCC High / DoD
        "https://login.microsoftonline.us",
        "smtp.office365.us",
        "https://outlook.office365.us/.default",
        "https://outlook.office365.us/SMTP.Send",
        "https://graph.microsoft.us",
    ),
    "china": Cloud(  # operated by 21Vianet
        "https://login.partner.microsoftonline.cn",
        "smtp.partner.outlook.cn",
        "https://partner.outlook.cn/.default",
        "https://partner.outlook.cn/SMTP.Send",
        "https://microsoftgraph.chinacloudapi.cn",
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


def _https_url(value: str) -> str:
    value = value.rstrip("/")
    if not value.startswith("https://"):
        # MSAL refuses anything but https authorities (msal/authority.py canonicalize()).
        raise ValueError("must be an https:// URL, e.g. https://login.microsoftonline.com")
    return value


class _Section(BaseModel):
    # Typos inside a section are errors, not silently ignored keys; values never change once made.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=False, frozen=True)


class IdentitySettings(_Section):
    """``[identity]``: who we are to the Microsoft identity platform.

    ``tenant_id`` and ``client_id`` are required, except for a managed identity (no tenant; a
    ``client_id`` picks a user-assigned identity) and for workload identity federation, where
    they default to the ``AZURE_*`` variables AKS's webhook and azure-identity use.
    """

    tenant_id: str | None = Field(None, min_length=1)
    client_id: str | None = Field(None, min_length=1)
    flow: Flow = "client_credentials"
    federated_token_file: Path | None = None
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
        return None if value is None else _https_url(value)

    @model_validator(mode="before")
    @classmethod
    def _workload_identity_defaults(cls, data: object) -> object:
        if not isinstance(data, Mapping) or data.get("flow") != "workload_identity":
            return data
        # The names AKS's workload identity webhook injects and azure-identity reads:
        # https://learn.microsoft.com/en-us/azure/aks/workload-identity-overview
        defaults = {
            "tenant_id": "AZURE_TENANT_ID",
            "client_id": "AZURE_CLIENT_ID",
            "federated_token_file": "AZURE_FEDERATED_TOKEN_FILE",
            "authority_host": "AZURE_AUTHORITY_HOST",
        }
        filled = dict(data)
        for key, variable in defaults.items():
            if filled.get(key) is None and os.environ.get(variable):
                filled[key] = os.environ[variable]
        if filled.get("federated_token_file") is None:
            raise ValueError(
                "flow 'workload_identity' needs identity.federated_token_file "
                "(or $AZURE_FEDERATED_TOKEN_FILE): the file the platform writes the OIDC token to"
            )
        return filled

    @model_validator(mode="after")
    def _ids_fit_flow(self) -> IdentitySettings:
        if self.flow == "managed_identity":
            if self.client_secret or self.certificate_path or self.federated_token_file:
                raise ValueError(
                    "flow 'managed_identity' uses no secret, certificate or federated token file: "
                    "remove identity.client_secret / certificate_path / federated_token_file"
                )
            return self
        missing = [name for name in ("tenant_id", "client_id") if getattr(self, name) is None]
        if missing:
            # Reported per key ("identity.tenant_id: required but not set"), as a missing field is.
            raise ValidationError.from_exception_data(
                "IdentitySettings",
                [InitErrorDetails(type="missing", loc=(name,), input=None) for name in missing],
            )
        return self

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
    def is_managed_identity(self) -> bool:
        return self.flow == "managed_identity"

    @property
    def cache_key(self) -> str:
        """What tells this identity's tokens apart from other identities' (authority + client)."""
        if self.is_managed_identity:
            return f"managed_identity\n{self.client_id or 'system-assigned'}"
        return f"{self.authority.lower()}\n{self.client_id}"

    @property
    def cloud_preset(self) -> Cloud:
        return CLOUDS[self.cloud]

    @property
    def effective_authority_host(self) -> str:
        return self.authority_host or self.cloud_preset.authority_host

    @property
    def authority(self) -> str:
        """Tenant-specific authority URL (``/common`` is unreliable for these flows).

        A managed identity has none: Azure's local endpoint issues its tokens.
        """
        if self.tenant_id is None:
            return (
                "the managed identity endpoint" if self.is_managed_identity else self.effective_authority_host
            )
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


ServiceName = Literal["exchange", "hve", "acs"]


@dataclass(frozen=True)
class SmtpService:
    """What a Microsoft submission service presets: where, which token, whose address, how much."""

    host: str | None  # None: the cloud's Exchange Online host
    scope: str | None  # app-only token scope; None: Exchange Online's (the cloud's)
    # Ask for a new token this long before the old one expires.
    refresh_margin: timedelta
    max_recipients: int | None  # per message; None: left to the server
    max_message_size: int | None  # bytes; None: left to the server
    sender_is_account: bool  # MAIL FROM and From: must be smtp.username itself
    username_is_address: bool  # smtp.username is a mailbox address (not ACS's SMTP username)


# Sources: High Volume Email, https://learn.microsoft.com/exchange/mail-flow-best-practices/oauth-high-volume-mails-m365
# (endpoint smtp.hve.mx.microsoft; tokens refused in their last minutes, "535 5.7.142 token will
# expire soon", so refresh 20 minutes ahead as deployed relays do; sender rules 5.7.62 / 5.6.241);
# Azure Communication Services (smtp.azurecomm.net, the communication.azure.com scope, 50 recipients
# and 10 MB per message), https://learn.microsoft.com/en-us/azure/communication-services/concepts/service-limits.
SERVICES: dict[str, SmtpService] = {
    "exchange": SmtpService(None, None, timedelta(minutes=10), None, None, False, True),
    "hve": SmtpService("smtp.hve.mx.microsoft", None, timedelta(minutes=20), None, None, True, True),
    "acs": SmtpService(
        "smtp.azurecomm.net",
        "https://communication.azure.com/.default",
        timedelta(minutes=10),
        50,
        10 * 1024 * 1024,
        False,
        False,
    ),
}
_ADDRESS = re.compile(r"^[^\s@]+@[^\s@]+$")
# ACS's SMTP username when no custom one was made: "<resource name>|<Entra app id>|<tenant id>".
_ACS_USERNAME = re.compile(r"^[^\s|]+\|[^\s|]+\|[^\s|]+$")


class SmtpSettings(_Section):
    """``[smtp]``: the submission endpoint (Exchange Online, HVE or ACS) and who we send as."""

    service: ServiceName = "exchange"
    host: str | None = None
    port: int = Field(SUBMISSION_PORT, ge=1, le=65535)
    security: Literal["starttls", "tls"] = "starttls"
    username: str = Field(min_length=3)
    from_address: str | None = None
    ca_file: Path | None = None
    timeout: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _username_fits_service(self) -> SmtpSettings:
        if _ADDRESS.match(self.username):
            pass
        elif self.service != "acs" or not _ACS_USERNAME.match(self.username):
            form = (
                "an address, or ACS's <resource>|<app id>|<tenant id>"
                if self.service == "acs"
                else "an address"
            )
            raise ValueError(f"smtp.username {self.username!r} is not {form}")
        elif self.from_address is None:
            raise ValueError(
                "smtp.service 'acs' with an SMTP username that is not an address needs "
                "smtp.from_address (a MailFrom address of the ACS email domain, e.g. DoNotReply@contoso.com)"
            )
        if (
            self.preset.sender_is_account
            and self.from_address
            and self.from_address.lower() != self.username.lower()
        ):
            raise ValueError(
                f"smtp.service 'hve' sends only as the HVE account itself: smtp.from_address "
                f"{self.from_address!r} must be smtp.username {self.username!r} (or be removed)"
            )
        return self

    @property
    def preset(self) -> SmtpService:
        return SERVICES[self.service]

    @property
    def sender(self) -> str:
        return self.from_address or self.username


class GraphSettings(_Section):
    """``[graph]``: Microsoft Graph ``sendMail``, the transport for tenants without SMTP AUTH."""

    endpoint: str | None = None  # default: the cloud's Graph root (identity.cloud)
    mailbox: str | None = Field(None, min_length=1)  # user id or UPN; default smtp.username
    scopes: list[str] | None = None  # default: <graph root>/.default, or <graph root>/Mail.Send
    timeout: float = Field(60.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _https_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not value.startswith("https://"):
            # A bearer token must never travel in clear text.
            raise ValueError("must be an https:// URL, e.g. https://graph.microsoft.com")
        return value


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
    profile: str | None = Field(None, min_length=1)  # [profiles.NAME] whose identity/transport it uses


class RelaySettings(_Section):
    """``[relay]``: the local store-and-forward relay."""

    listen: str = DEFAULT_RELAY_LISTEN
    spool_dir: Path | None = None
    # postgresql://user@host/db: a queue shared by several relays. A secret (it may hold a password).
    spool_url: SecretStr | None = None
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
    # None: $XDG_RUNTIME_DIR/smtp-oauth/submit.sock, or /run/smtp-oauth/submit.sock without one.
    submission_socket: Path | None = None
    users: list[RelayUser] = []
    # Limits and defences (README, "The relay"); Postfix's anvil and
    # queue_minfree are the models.
    max_connections: int = Field(200, ge=1)
    max_connections_per_client: int = Field(20, ge=1)
    min_free_space: ByteSize = Field(ByteSize(100 * 1024 * 1024), ge=0)  # "100MiB", "1GB", bytes
    upstream_idle_timeout: Duration = timedelta(seconds=5)
    # Accept processes sharing relay.listen and the spool (the main process delivers, and counts
    # the connection and login limits for all of them); unset: one per CPU this process may run
    # on, 1: everything in one process.
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS)

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("spool_url")
    @classmethod
    def _valid_spool_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            # The value is not repeated: it may hold a password.
            raise ValueError("relay.spool_url must be a postgresql:// URL (unset: SQLite in relay.spool_dir)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RelaySettings:
        if bool(self.tls_certificate) != bool(self.tls_key):
            raise ValueError("relay.tls_certificate and relay.tls_key go together")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def worker_count(self) -> int:
        """relay.workers: how many accept processes (unset: the CPUs this process may use)."""
        if self.workers is not None:
            return self.workers
        # The affinity mask, not os.cpu_count(): a relay pinned (taskset, a systemd CPUAffinity=)
        # to 2 of 64 CPUs gains nothing from 64 workers.
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(usable or 1, MAX_WORKERS))

    @property
    def submission_socket_path(self) -> Path:
        """Where the relay puts its submission socket (the first of the candidates)."""
        return submission_socket_candidates(self.submission_socket)[0]


class SendMailSettings(_Section):
    """``[send_mail]``: how ``send-mail`` hands over its message."""

    # "direct": to Exchange Online itself; "relay": to the local relay's submission socket, which
    # stores it durably and owns delivery and retries (as Postfix's sendmail hands mail to postdrop).
    via: Literal["direct", "relay"] = "direct"


# What a [profiles.NAME] table may override; the tables merge key by key (settings/profiles.py).
PROFILE_KEYS = ("transport", "fallback_transport", "identity", "smtp", "graph")


class ProfileSettings(_Section):
    """``[profiles.NAME]``: another sender in the same file (another app, tenant, mailbox, transport).

    The tables hold raw keys: they are validated once merged over the top level, as a whole
    configuration of their own (``load_settings(profile=NAME)``).
    """

    transport: TransportName | None = None
    fallback_transport: Literal["graph"] | None = None
    identity: dict[str, object] | None = None
    smtp: dict[str, object] | None = None
    graph: dict[str, object] | None = None


class Settings(BaseSettings):
    """Everything smtp-oauth is configured with; see config.example.toml."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=False,
        frozen=True,
        # Built on first use: building the validator at import would slow every command's start-up.
        defer_build=True,
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    transport: TransportName = "smtp"
    fallback_transport: Literal["graph"] | None = None
    identity: IdentitySettings
    smtp: SmtpSettings
    graph: GraphSettings = GraphSettings()
    relay: RelaySettings = RelaySettings()
    send_mail: SendMailSettings = SendMailSettings()
    profiles: dict[str, ProfileSettings] = {}
    _source_file: Path | None = PrivateAttr(default=None)
    _profile: str | None = PrivateAttr(default=None)
    # The merged raw values of every source, before any profile: what other profiles derive from.
    _raw: dict[str, object] | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._source_file

    @property
    def profile(self) -> str | None:
        """The ``[profiles.NAME]`` these settings were merged with, if any."""
        return self._profile

    @model_validator(mode="after")
    def _relay_profiles_exist(self) -> Settings:
        for index, user in enumerate(self.relay.users):
            if user.profile is not None and user.profile not in self.profiles:
                known = ", ".join(sorted(self.profiles)) or "none defined"
                raise ValidationError.from_exception_data(
                    "Settings",
                    [
                        InitErrorDetails(
                            type="value_error",
                            loc=("relay", "users", index, "profile"),
                            input=user.profile,
                            ctx={"error": f"no [profiles.{user.profile}] (profiles: {known})"},
                        )
                    ],
                )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("smtp")
    @classmethod
    def _apply_cloud_presets(cls, smtp: SmtpSettings, info: ValidationInfo) -> SmtpSettings:
        # identity is declared before smtp, so it is already validated (absent if it failed).
        identity = info.data.get("identity")
        if smtp.host is None and isinstance(identity, IdentitySettings):
            return smtp.model_copy(update={"host": smtp.preset.host or identity.cloud_preset.smtp_host})
        return smtp

    @model_validator(mode="after")
    def _fallback_differs(self) -> Settings:
        if self.fallback_transport is not None and self.fallback_transport == self.transport:
            raise ValueError(
                f"fallback_transport = {self.fallback_transport!r} is the transport itself; "
                'it applies to transport = "smtp" (remove it, or set transport = "smtp")'
            )
        return self

    @property
    def graph_endpoint(self) -> str:
        """Microsoft Graph's service root: ``graph.endpoint``, else the cloud's."""
        return self.graph.endpoint or self.identity.cloud_preset.graph_endpoint

    @property
    def graph_mailbox(self) -> str:
        """The mailbox Graph sends as (``/users/{mailbox}/sendMail``): ``graph.mailbox`` or smtp.username."""
        return self.graph.mailbox or self.smtp.username

    @property
    def graph_scopes(self) -> list[str]:
        """``graph.scopes``, else ``<graph>/.default`` (app-only) or ``<graph>/Mail.Send`` (delegated).

        From the cloud, never from ``graph.endpoint``: a token's audience is the resource's URI,
        which a proxy or test endpoint does not change.
        """
        if self.graph.scopes:
            return list(self.graph.scopes)
        preset = self.identity.cloud_preset
        return [preset.graph_delegated_scope if self.identity.is_delegated else preset.graph_app_scope]

    def token_scopes(self, resource: str | None = None) -> list[str]:
        """The scopes of a token for ``resource``: "exchange", "graph", a resource URI, or None for
        the one ``transport`` needs. A URI gets ``<uri>/.default`` (every permission granted on it)."""
        if resource is None and self.transport != "graph":
            return self.smtp_scopes
        chosen = resource or ("graph" if self.transport == "graph" else "exchange")
        if chosen == "exchange":
            return self.identity.effective_scopes
        if chosen == "graph":
            return self.graph_scopes
        return [chosen.rstrip("/") + "/.default"]

    @property
    def smtp_host(self) -> str:
        return self.smtp.host or self.smtp.preset.host or self.identity.cloud_preset.smtp_host

    @property
    def smtp_scopes(self) -> list[str]:
        """The token scopes of the SMTP service: identity.scopes, else the service's (ACS), else
        Exchange Online's."""
        if self.identity.scopes or self.smtp.preset.scope is None or self.identity.is_delegated:
            return self.identity.effective_scopes
        return [self.smtp.preset.scope]

    @property
    def refresh_margin(self) -> timedelta:
        """How long before expiry a token is replaced: per service (HVE refuses tokens near expiry)."""
        return self.smtp.preset.refresh_margin

    @property
    def token_cache_path(self) -> Path:
        return self.identity.token_cache or state_dir() / "token-cache"

    @property
    def spool_path(self) -> Path:
        return self.relay.spool_dir or state_dir() / "spool"

    def hint_context(self) -> dict[str, str]:
        """Ids used to fill in the hints of errors (never a secret)."""
        return {
            "tenant_id": self.identity.tenant_id or "(managed identity's tenant)",
            "client_id": self.identity.client_id or "(system-assigned managed identity)",
            "mailbox": self.smtp.username,
        }
