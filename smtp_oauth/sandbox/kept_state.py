"""What ``smtp-oauth sandbox`` keeps across restarts, so that what a user configured against it
(a relay's ``smtp.ca_file``, the client secret, the ports, their own ``[[relay.users]]``) keeps
working: ``D/sandbox-state.json`` (0600: it holds the tenant's secrets) and ``D/signing-key.pem``.

The certificates are kept by :func:`~smtp_oauth.sandbox.certs.kept_certificates` and the app's
certificate by :func:`~smtp_oauth.sandbox.tenant.make_tenant`; this module keeps the rest.
A damaged or missing file means a fresh start, as on the first one, and says so in the log.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtp_oauth.files import write_private
from smtp_oauth.sandbox.keys import SigningKey

__all__ = ["KeptState", "kept_config", "kept_signing_key", "load_state", "save_state"]

log = logging.getLogger("smtp_oauth.sandbox")

STATE_FILE = "sandbox-state.json"
KEY_FILE = "signing-key.pem"


@dataclass
class KeptState:
    """Tenant ids and secrets (``make_tenant``'s ``kept``) and the ports of the last start."""

    tenant: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # the tenant values include client secrets and passwords
        return f"KeptState(tenant=<{len(self.tenant)} values>, ports={self.ports!r})"


def load_state(directory: Path) -> KeptState:
    """The state of the last start in ``directory``, or an empty one (first start, damaged file)."""
    path = directory / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tenant = {str(key): str(value) for key, value in document["tenant"].items()}
        ports = {str(key): int(value) for key, value in document["ports"].items()}
    except FileNotFoundError:
        return KeptState()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s is unreadable (%s): the sandbox starts afresh, with new ids and secrets", path, exc)
        return KeptState()
    return KeptState(tenant=tenant, ports={name: port for name, port in ports.items() if 0 < port < 65536})


def save_state(directory: Path, state: KeptState) -> None:
    """Write ``state`` for the next start (0600)."""
    text = json.dumps({"tenant": state.tenant, "ports": state.ports}, indent=2, sort_keys=True)
    write_private(directory / STATE_FILE, (text + "\n").encode("utf-8"))


def kept_signing_key(directory: Path) -> SigningKey:
    """The token signing key of the last start (tokens a client cached stay valid), else a new one."""
    path = directory / KEY_FILE
    try:
        return SigningKey.from_pem(path.read_bytes())
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s is unreadable (%s): a new token signing key is made", path, exc)
    key = SigningKey()
    write_private(path, key.private_pem())
    return key


def kept_config(path: Path) -> dict[str, Any]:
    """The tables of the sandbox.toml a user may have edited ({} when there is none).

    The sandbox writes its own keys over them; what it does not write (``[[relay.users]]``,
    ``relay.tls_certificate``, ``smtp.timeout`` ...) is the user's and stays. A file that is not TOML
    any more is set aside as ``sandbox.toml.invalid`` rather than lost.
    """
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        aside = path.with_name(path.name + ".invalid")
        path.replace(aside)
        log.warning("%s is not valid TOML (%s): moved to %s; a new one is written", path, exc, aside)
        return {}
