"""Failed logins limited per client address and per user, across all connections (like Postfix's anvil).

- Per address: its AUTH attempts run one at a time, whatever the number of connections, and each
  failure from it is answered after a delay doubling from ``auth_failure_delay`` up to
  ``auth_failure_delay_max`` (the delay is served while the address's turn is held). 300
  connections from one address therefore guess no faster than one: about one guess per 16 s once
  the delay has grown. A successful login from the address clears its record.
- Per user: once a user has ``user_failure_limit`` failures in the window (from any addresses),
  the user is under attack: an attempt from an address that has not logged in as that user before
  is allowed only once per ``user_attempt_interval``; the others get ``454 4.7.0`` at once,
  without their password being checked, and count toward the session's failure limit (so one
  connection cannot poll for the next slot for free). Addresses the user logged in from keep logging in as
  usual, so the legitimate user is not locked out; a new address is slowed, not refused for good.

Memory is bounded: records older than the window are dropped when the tables grow.

A listener asks a ``LoginCounter`` for each attempt: ``LoginGuard`` in the process that holds the
records, or, in an accept worker (``relay.workers``), the relay's main process over the control
channel (which holds the address's turn and the records for all the workers, so N workers guess
no faster than one). A counter that cannot be asked raises ``LimitsUnavailable``: the attempt
gets 454, its password is not checked.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["REPLY_AUTH_THROTTLED", "LoginAttempt", "LoginCounter", "LoginGuard", "LoginLimits"]

# RFC 4954 section 6: 454 4.7.0 "Temporary authentication failure".
REPLY_AUTH_THROTTLED = "454 4.7.0 Temporary authentication failure, try again later"
_MAX_RECORDS = 10_000
_MAX_TRUSTED = 1_000  # addresses remembered per user


@dataclass(frozen=True)
class LoginLimits:
    """The numbers (``ListenerTuning`` holds them)."""

    delay: float = 1.0
    delay_max: float = 16.0
    window: float = 900.0
    user_failure_limit: int = 5
    user_attempt_interval: float = 5.0


class LoginAttempt(Protocol):
    """One AUTH attempt, while it holds its address's turn."""

    @property
    def refused(self) -> bool:
        """Answer 454 without checking the password: the user is under attack, the address new."""
        ...

    async def succeeded(self, user: str) -> None:
        """The password matched ``user`` (the configured name)."""
        ...

    async def failed(self) -> tuple[int, float]:
        """It did not: (failures from this address in the window, seconds to wait before the 535)."""
        ...


class LoginCounter(Protocol):
    def attempt(self, login: str, address: str) -> AbstractAsyncContextManager[LoginAttempt]:
        """Wait for ``address``'s turn (LimitsUnavailable if it cannot be had); held until exit."""
        ...


@dataclass
class _Address:
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    last: float = 0.0


@dataclass
class _User:
    failures: deque[float] = field(default_factory=deque)
    trusted: dict[str, float] = field(default_factory=dict)  # address -> last successful login
    next_untrusted: float = 0.0


class LoginGuard:
    """Shared by all sessions of a listener."""

    def __init__(self, limits: LoginLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._addresses: dict[str, _Address] = {}
        self._users: dict[str, _User] = {}

    @asynccontextmanager
    async def turn(self, address: str) -> AsyncIterator[None]:
        """Hold ``address``'s turn: one AUTH of that address at a time, failure delay included."""
        record = self._addresses.get(address)
        if record is None:
            self._prune()
            record = self._addresses[address] = _Address()
        async with record.turn:
            yield

    @asynccontextmanager
    async def attempt(self, login: str, address: str) -> AsyncIterator[LoginAttempt]:
        """``LoginCounter.attempt`` in this process."""
        async with self.turn(address):
            yield _Attempt(self, login, address, refused=self.refuse_untrusted(login, address))

    def refuse_untrusted(self, user: str, address: str) -> bool:
        """True if this attempt must get 454 unchecked: the user is under attack, the address new."""
        record = self._users.get(user)
        if record is None or address in record.trusted:
            return False
        now = self._clock()
        self._expire(record, now)
        if len(record.failures) < self.limits.user_failure_limit:
            return False
        if now < record.next_untrusted:
            return True
        record.next_untrusted = now + self.limits.user_attempt_interval
        return False

    def succeeded(self, user: str, address: str) -> None:
        """A login went through: the address's failures are forgiven, and it is trusted for ``user``."""
        record = self._addresses.get(address)
        if record is not None:
            record.failures, record.last = 0, 0.0
        trusted = self._users.setdefault(user, _User()).trusted
        if len(trusted) >= _MAX_TRUSTED and address not in trusted:
            trusted.pop(min(trusted, key=trusted.__getitem__))  # the address unused the longest
        trusted[address] = self._clock()

    def failed(self, user: str, address: str) -> tuple[int, float]:
        """Count a failure; (failures from this address in the window, seconds to wait)."""
        now = self._clock()
        record = self._addresses.setdefault(address, _Address())
        record.failures = record.failures + 1 if now - record.last < self.limits.window else 1
        record.last = now
        user_record = self._users.get(user)
        if user_record is None:
            self._prune()
            user_record = self._users[user] = _User()
        self._expire(user_record, now)
        user_record.failures.append(now)
        delay = self.limits.delay * 2 ** min(record.failures - 1, 16)
        return record.failures, min(delay, self.limits.delay_max)

    def _expire(self, record: _User, now: float) -> None:
        while record.failures and now - record.failures[0] >= self.limits.window:
            record.failures.popleft()

    def _prune(self) -> None:
        now = self._clock()
        window = self.limits.window
        if len(self._addresses) > _MAX_RECORDS:
            self._addresses = {
                a: r for a, r in self._addresses.items() if r.turn.locked() or now - r.last < window
            }
        if len(self._users) > _MAX_RECORDS:
            for record in self._users.values():
                self._expire(record, now)
            self._users = {u: r for u, r in self._users.items() if r.failures or r.trusted}


@dataclass(frozen=True)
class _Attempt:
    guard: LoginGuard
    login: str
    address: str
    refused: bool

    async def succeeded(self, user: str) -> None:
        self.guard.succeeded(user, self.address)

    async def failed(self) -> tuple[int, float]:
        return self.guard.failed(self.login, self.address)
