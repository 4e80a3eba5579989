"""What ``send-mail`` needs of the settings, kept from its last full validation: no pydantic per message.

``load_settings`` (pydantic-settings) stays the one reader and validator of the configuration. After
it succeeds, ``send-mail`` writes the few values its hot path uses (:class:`SendMailView`; for a
direct send with a cached token, :class:`DirectView`: the server, the mailbox and which cached token
would do) to
``$XDG_STATE_HOME/smtp-oauth/send-mail-<key>.json``, next to the token cache, owner-only (0600), no
secret in it. The next run reads that file instead of importing pydantic, but only if nothing that
could change the outcome of validation has changed since:

- the configuration file's identity: its path, mtime (ns), size, inode and device;
- every ``SMTP_OAUTH_*`` and ``AZURE_*`` variable, and the others that change what the settings
  mean (``HOME``, ``XDG_*``, ``CREDENTIALS_DIRECTORY``);
- the secrets directory's listing (each file's name, size, mtime and inode);
- the profile asked for (``--profile``) and the settings models themselves (an upgrade).

These go into a SHA-256 fingerprint (only the hash is stored). Any difference, an unreadable or
foreign file (another owner, group- or world-accessible, a symlink) means a full load, which writes
a fresh snapshot. Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.discovery import (
    ENV_PREFIX,
    find_config_file,
    secrets_directory,
    state_dir,
)

if TYPE_CHECKING:
    from hashlib import sha256

    from smtp_oauth.settings.models import Settings
else:
    # CPython's own SHA-256 module: the same digest, without hashlib loading OpenSSL's libcrypto
    # (~3 ms, and its pages) on the relay path, which has no TLS to share that cost with.
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # Python 3.12+
        except ImportError:  # a build without either
            from hashlib import sha256

__all__ = ["CacheQuery", "DirectView", "SendMailView", "SettingsProbe", "view_of"]

FORMAT = 2
_PREFIXES = (ENV_PREFIX, "AZURE_", "XDG_")
_VARIABLES = frozenset({"HOME", "CREDENTIALS_DIRECTORY"})
_MODELS = Path(__file__).with_name("models.py")


class CacheQuery(NamedTuple):
    """Which cached access token would do for an identity, in plain values (JSON-safe); made by
    ``tokens.fastpath.cache_query`` from validated settings and answered by ``fastpath.read_token``.

    ``account_names`` are the delegated account's usernames in the order MsalSession tries them
    (identity.username, then smtp.username); ``scopes`` the scope key (lowercase, sorted, without
    MSAL's reserved scopes); ``min_validity`` seconds the token must still be valid.
    """

    cache_file: str
    client_id: str
    environment: str  # the authority's host name, lowercase
    tenant_id: str
    delegated: bool
    account_names: list[str | None]
    scopes: list[str]
    min_validity: float


class DirectView(NamedTuple):
    """What a direct send over SMTP with a cached token reads: the submission server and mailbox
    (``smtp.*``), the service's recipient limit, and which cached token would do (``token``)."""

    host: str
    port: int
    implicit_tls: bool  # smtp.security = "tls"
    ca_file: str | None
    timeout: float
    mailbox: str  # smtp.username
    max_recipients: int | None  # the service's, per message (ACS: 50)
    token: CacheQuery


class SendMailView(NamedTuple):
    """The validated values ``send-mail``'s hot path reads (never a secret).

    A NamedTuple, not a dataclass: ``dataclasses`` (with inspect and ast) costs more to import
    than the rest of this module.
    """

    via: str
    submission_socket: str | None  # relay.submission_socket as configured (None: the defaults)
    sender: str  # smtp.from_address or smtp.username
    smtp_timeout: float
    log_level: str
    log_format: str
    hint_context: dict[str, str]  # tenant, client and mailbox ids
    # None where only the full path can send: Graph, a fallback transport, a managed identity.
    direct: DirectView | None

    @property
    def submission_socket_path(self) -> Path | None:
        return Path(self.submission_socket) if self.submission_socket else None


def _direct_view(settings: Settings, token: CacheQuery | None) -> DirectView | None:
    if settings.transport != "smtp" or settings.fallback_transport is not None:
        return None  # Graph, or SMTP that may hand a message on to Graph: the transport layer decides
    if token is None:
        return None
    smtp = settings.smtp
    return DirectView(
        host=settings.smtp_host,
        port=smtp.port,
        implicit_tls=smtp.security == "tls",
        ca_file=str(smtp.ca_file) if smtp.ca_file else None,
        timeout=smtp.timeout,
        mailbox=smtp.username,
        max_recipients=smtp.preset.max_recipients,
        token=token,
    )


def view_of(settings: Settings, *, token: CacheQuery | None) -> SendMailView:
    """The view of validated settings; ``token`` says which cached token a direct send would use
    (``tokens.fastpath.cache_query``), None where none can (the view then has no ``direct``)."""
    socket = settings.relay.submission_socket
    return SendMailView(
        via=settings.send_mail.via,
        submission_socket=str(socket) if socket is not None else None,
        sender=settings.smtp.sender,
        smtp_timeout=settings.smtp.timeout,
        log_level=settings.log_level,
        log_format=settings.log_format,
        hint_context=settings.hint_context(),
        direct=_direct_view(settings, token),
    )


def _as_json(view: SendMailView) -> dict[str, object]:
    data: dict[str, object] = view._asdict()
    if view.direct is not None:
        data["direct"] = {**view.direct._asdict(), "token": view.direct.token._asdict()}
    return data


def _file_identity(path: Path | None) -> list[Any]:
    if path is None:
        return ["(no file)"]
    info = path.stat()
    # The mode too: a chmod that opens a file holding a secret must meet the loader's refusal.
    return [os.path.abspath(path), info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev, info.st_mode]


def _listing(directory: Path | None) -> list[Any]:
    if directory is None:
        return []
    listed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            info = entry.stat()
            listed.append([entry.name, info.st_size, info.st_mtime_ns, info.st_ino])
    return sorted(listed)


def _fingerprint(toml_file: Path | None, environ: Mapping[str, str], profile: str | None) -> str:
    variables = sorted(
        (name, value) for name, value in environ.items() if name in _VARIABLES or name.startswith(_PREFIXES)
    )
    material = [
        FORMAT,
        profile,  # --profile (SMTP_OAUTH_PROFILE is among the variables)
        _file_identity(_MODELS),
        _file_identity(toml_file),
        variables,
        _listing(secrets_directory(environ)),
    ]
    return sha256(json.dumps(material).encode("utf-8", "surrogateescape")).hexdigest()


class SettingsProbe:
    """The fingerprint of the settings' inputs now, and the snapshot file that goes with them.

    Taken *before* a full load, so a file edited during the load makes the next run load again.
    Raises ConfigurationError as ``load_settings`` would when ``--config`` names no file.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | None,
        *,
        profile: str | None = None,
        environ: Mapping[str, str] | None = None,
    ):
        env = os.environ if environ is None else environ
        toml_file = find_config_file(config, environ=env)
        self.fingerprint: str | None
        try:
            self.fingerprint = _fingerprint(toml_file, env, profile)
        except (OSError, ConfigurationError):  # a full load reports what is wrong
            self.fingerprint = None
        key = sha256(os.fsencode(os.path.abspath(toml_file) if toml_file else "-")).hexdigest()
        self.path = state_dir(env) / f"send-mail-{key[:16]}.json"

    def read(self) -> SendMailView | None:
        """The snapshot, if it is ours, private and was written for exactly these inputs."""
        if self.fingerprint is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
                return None  # someone else could have written it: it decides where mail goes
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = json.loads(handle.read(1 << 16))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        return _parse(data, self.fingerprint)

    def write(self, view: SendMailView) -> None:
        """Keep ``view`` for the next run (best effort: a missing snapshot only costs speed)."""
        if self.fingerprint is None:
            return
        data = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "view": _as_json(view)})
        from smtp_oauth.files import write_private  # after the send: tempfile is no start-up cost

        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.path, data, durable=False)  # lost in a crash: the next run rebuilds it


_OPTIONAL_STR = (str, type(None))
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "via": (str,),
    "submission_socket": _OPTIONAL_STR,
    "sender": (str,),
    "smtp_timeout": _NUMBER,
    "log_level": (str,),
    "log_format": (str,),
    "hint_context": (dict,),
    "direct": (dict, type(None)),
}
_DIRECT_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "implicit_tls": (bool,),
    "ca_file": _OPTIONAL_STR,
    "timeout": _NUMBER,
    "mailbox": (str,),
    "max_recipients": (int, type(None)),
    "token": (dict,),
}
_TOKEN_TYPES: dict[str, tuple[type, ...]] = {
    "cache_file": (str,),
    "client_id": (str,),
    "environment": (str,),
    "tenant_id": (str,),
    "delegated": (bool,),
    "account_names": (list,),
    "scopes": (list,),
    "min_validity": _NUMBER,
}


def _fields(data: object, types: Mapping[str, tuple[type, ...]]) -> dict[str, Any] | None:
    """``data`` if it is a dict with exactly these keys, each of its type; else None."""
    if not isinstance(data, dict) or set(data) != set(types):
        return None
    if not all(isinstance(data[name], kinds) for name, kinds in types.items()):
        return None
    return data


def _direct(data: object) -> DirectView | None:
    direct = _fields(data, _DIRECT_TYPES)
    token = _fields(direct["token"], _TOKEN_TYPES) if direct is not None else None
    if direct is None or token is None:
        return None
    names, scopes = token["account_names"], token["scopes"]
    if len(names) != 2 or not all(isinstance(name, str | None) for name in names):
        return None
    if not all(isinstance(scope, str) for scope in scopes):
        return None
    return DirectView(**{**direct, "token": CacheQuery(**token)})


def _parse(data: object, fingerprint: str) -> SendMailView | None:
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("fingerprint") != fingerprint:
        return None
    view = _fields(data.get("view"), _TYPES)
    if view is None:
        return None
    if view["direct"] is not None:
        direct = _direct(view["direct"])
        if direct is None:
            return None
        view = {**view, "direct": direct}
    return SendMailView(**view)
