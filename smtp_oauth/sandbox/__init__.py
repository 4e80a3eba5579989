"""The sandbox: a fake Entra ID and a fake Exchange Online on 127.0.0.1, FOR TESTING ONLY.

``Sandbox`` runs both and writes a configuration for them; ``SandboxIdentityProvider`` and
``FakeExchange`` can also be used alone. Names are imported on first use, so that importing a
small piece (``smtp_oauth.sandbox.certs``) does not pull in aiosmtpd and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtp_oauth.sandbox.exchange.server import DeliveredMessage, FakeExchange
    from smtp_oauth.sandbox.idp.provider import SandboxIdentityProvider
    from smtp_oauth.sandbox.runner import Sandbox
    from smtp_oauth.sandbox.tenant import RegisteredApp, SandboxTenant, SandboxUser

__all__ = [
    "DeliveredMessage",
    "FakeExchange",
    "RegisteredApp",
    "Sandbox",
    "SandboxIdentityProvider",
    "SandboxTenant",
    "SandboxUser",
]

_HOMES = {
    "DeliveredMessage": "smtp_oauth.sandbox.exchange.server",
    "FakeExchange": "smtp_oauth.sandbox.exchange.server",
    "SandboxIdentityProvider": "smtp_oauth.sandbox.idp.provider",
    "Sandbox": "smtp_oauth.sandbox.runner",
    "RegisteredApp": "smtp_oauth.sandbox.tenant",
    "SandboxTenant": "smtp_oauth.sandbox.tenant",
    "SandboxUser": "smtp_oauth.sandbox.tenant",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
