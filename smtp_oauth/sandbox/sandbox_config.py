"""The sandbox's configuration file: the interface's TOML schema, pointed at the fake services.

``sandbox_sections`` says what goes in (per flow and credential), ``render_toml`` writes it. The
file holds a client secret or a password, so it is written 0600.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtp_oauth.files import write_private
from smtp_oauth.sandbox.tenant import SandboxTenant

__all__ = ["FLOWS", "SandboxEndpoints", "render_toml", "sandbox_sections", "write_private_text"]

FLOWS = (
    "client_credentials",
    "device_code",
    "interactive",
    "username_password",
    "managed_identity",
    "workload_identity",
)
# client_credentials: "secret" | "certificate" (the daemon app, API permission + FullAccess on
# sender@) | "rbac" (the scanner app's secret: no API permission, SMTP App RBAC on scanner@);
# managed_identity: "system" | "user" (assigned); the other flows ignore it.
CREDENTIALS = ("secret", "certificate", "rbac", "system", "user")
FEDERATED_TOKEN_FILE = "federated-token"  # noqa: S105  # a file name, not a secret

_HEADER = """\
# smtp-oauth sandbox configuration: FOR TESTING ONLY.
# It points at a fake Entra ID and a fake Exchange Online on 127.0.0.1, with throwaway ids and
# secrets that change every time the sandbox starts. Never use these settings for real mail.
#
# To send through the fake Microsoft Graph instead of SMTP, add at the top:
#   transport = "graph"
# or keep SMTP and let a mailbox with SMTP AUTH disabled (535 5.7.139) fall back to Graph:
#   fallback_transport = "graph"
"""

_RELAY_USERS_PLACE = """
# Relay users go here, one [[relay.users]] table each; make the hash with `smtp-oauth hash-password`:
# [[relay.users]]
# name = "app"
# password_hash = "..."
"""


@dataclass(frozen=True)
class SandboxEndpoints:
    """Where the running sandbox's pieces are, as the configuration names them."""

    authority_host: str
    ca_file: Path
    smtp_host: str
    smtp_port: int
    relay_listen: str
    token_cache: Path
    spool_dir: Path
    federated_token_file: Path | None = None
    service: str = "exchange"
    graph_endpoint: str = ""


def sandbox_sections(
    tenant: SandboxTenant, endpoints: SandboxEndpoints, *, flow: str, credential: str
) -> dict[str, Any]:
    """The settings for ``flow``: the confidential app for client credentials, else the public one.

    ``credential`` ("secret" or "certificate") only matters for client credentials.
    """
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; use one of {', '.join(FLOWS)}")
    if credential not in CREDENTIALS:
        raise ValueError(f"unknown credential {credential!r}; use one of {', '.join(CREDENTIALS)}")
    identity: dict[str, Any] = {"tenant_id": tenant.tenant_id}
    mailbox = tenant.mailbox
    if flow == "client_credentials":
        identity["client_id"] = tenant.app.client_id
        identity["flow"] = flow
        if credential == "rbac":
            identity["client_id"] = tenant.rbac_app.client_id
            identity["client_secret"] = tenant.rbac_app.client_secret
            mailbox = tenant.second_user.upn
        elif credential == "certificate":
            identity["certificate_path"] = tenant.certificate_path
        else:
            identity["client_secret"] = tenant.app.client_secret
    elif flow == "managed_identity":
        # No tenant, no secret: the endpoint in IDENTITY_ENDPOINT/IDENTITY_HEADER issues the tokens.
        identity = {"flow": flow}
        if credential == "user":
            identity["client_id"] = tenant.user_identity.client_id
        identity.update(ca_file=endpoints.ca_file, token_cache=endpoints.token_cache)
        return _sections(identity, endpoints, mailbox)
    elif flow == "workload_identity":
        identity.update(
            client_id=tenant.app.client_id, flow=flow, federated_token_file=endpoints.federated_token_file
        )
    else:
        identity["client_id"] = tenant.public_app.client_id
        identity["flow"] = flow
        if flow == "username_password":
            identity["username"] = tenant.user.upn
            identity["password"] = tenant.user.password
    identity.update(
        authority_host=endpoints.authority_host, ca_file=endpoints.ca_file, token_cache=endpoints.token_cache
    )
    return _sections(identity, endpoints, mailbox)


def _sections(identity: dict[str, Any], endpoints: SandboxEndpoints, mailbox: str) -> dict[str, Any]:
    smtp: dict[str, Any] = {
        "host": endpoints.smtp_host,
        "port": endpoints.smtp_port,
        "security": "starttls",
        "username": mailbox,
        "ca_file": endpoints.ca_file,
    }
    if endpoints.service != "exchange":
        smtp["service"] = endpoints.service
    return {
        "identity": identity,
        "smtp": smtp,
        **({"graph": {"endpoint": endpoints.graph_endpoint}} if endpoints.graph_endpoint else {}),
        "relay": {"listen": endpoints.relay_listen, "spool_dir": endpoints.spool_dir},
    }


def merge_sections(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, table by table; a None value removes the key."""
    merged = dict(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _table(name: str, table: Mapping[str, Any], *, array: bool = False) -> list[str]:
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in nested:
        lines.append("")
        if isinstance(value, Mapping):
            lines.extend(_table(f"{name}.{key}", value))
        else:
            for item in value:
                lines.extend(_table(f"{name}.{key}", item, array=True))
    return lines


def render_toml(sections: Mapping[str, Any]) -> str:
    """TOML for plain settings: scalars, lists, tables and arrays of tables (enough for ours)."""
    lines = [_HEADER]
    tables = []
    for key, value in sections.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in tables:
        lines.append("")
        lines.extend(_table(key, value))
        if key == "relay" and "users" not in value:
            lines.append(_RELAY_USERS_PLACE.rstrip("\n"))
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner only (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text.encode("utf-8"))
