"""The token wing's value types and constants: a leaf that imports nothing of smtp_oauth.

Every other module of ``smtp_oauth.tokens`` (and the transports) depends on these; keeping them
here is what lets ``provider`` import ``msal_session`` and ``fastpath`` without an import circle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

__all__ = [
    "DELEGATED_LOGIN_FLOWS",
    "REFRESH_MARGIN",
    "RESERVED_SCOPES",
    "AbortSignal",
    "DeviceCodePrompt",
    "IssuedToken",
    "SignedIn",
    "TokenProvider",
    "request_scopes",
    "scope_key",
]

# Exchange Online rejects tokens close to expiry ("Token will expire soon"); MSAL itself only skips
# cached tokens with less than 5 minutes left, so we ask for a new one 10 minutes before.
REFRESH_MARGIN = timedelta(minutes=10)
# MSAL adds these to every delegated request itself and refuses them in the scope list.
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})
DELEGATED_LOGIN_FLOWS = ("device_code", "interactive", "username_password")


class TokenProvider(Protocol):
    """Anything that can hand out an access token: for Exchange Online, or for ``scopes``.

    ``scopes`` names another resource for the same identity (Microsoft Graph's
    ``https://graph.microsoft.com/.default``); None means the identity's configured ones
    (``identity.scopes``, Exchange Online by default).
    """

    async def access_token(
        self, *, force_refresh: bool = False, scopes: Sequence[str] | None = None
    ) -> str: ...


@dataclass(frozen=True)
class DeviceCodePrompt:
    """What the user must do to finish a device code sign-in ("open <uri> and enter <code>")."""

    verification_uri: str
    user_code: str
    message: str
    expires_in: int


@dataclass(frozen=True)
class SignedIn:
    """The result of a delegated sign-in: who, for what, until when."""

    username: str | None
    scopes: list[str]
    expires_on: datetime
    tenant_id: str | None


@dataclass(frozen=True)
class IssuedToken:
    """An access token and its timing (epoch seconds); the token itself is kept out of reprs."""

    access_token: str = field(repr=False)
    expires_on: float
    refresh_on: float | None
    source: str  # "identity_provider" | "cache"

    def remaining(self, now: float | None = None) -> float:
        return self.expires_on - (time.time() if now is None else now)


def request_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes to ask for: the configured ones without those MSAL adds (and rejects) itself."""
    return [scope for scope in scopes if scope.lower() not in RESERVED_SCOPES]


def scope_key(scopes: Iterable[str]) -> tuple[str, ...]:
    """One key per set of scopes, whatever their order or case (scopes compare case-insensitively)."""
    return tuple(sorted({scope.lower() for scope in request_scopes(scopes)}))


class AbortSignal:
    """Lets the event loop stop a sign-in running in a thread (device code polling, loopback wait)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def aborted(self) -> bool:
        return self._aborted

    def on_abort(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._aborted:
                self._callbacks.append(callback)
                return
        callback()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
