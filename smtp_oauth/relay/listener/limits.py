"""What one client, and all of them together, may hold of the relay: connections, disk, free space.

Modelled on Postfix: anvil's ``smtpd_client_connection_count_limit`` (connections per client
address) next to a process limit (``relay.max_connections``), and ``queue_minfree`` (no new mail
below ``relay.min_free_space``). Beyond a connection limit the client gets ``421 4.7.0`` and the
connection is closed before the greeting (RFC 5321 3.1: a server may answer 421 instead of 220).

Who counts is a ``ConnectionCounter``: ``ConnectionLimits`` in the process that holds the limits,
or, in an accept worker (``relay.workers``), the relay's main process asked over the control
channel, so one client holds at most ``max_connections_per_client`` across all the workers. A
counter that cannot be asked raises ``LimitsUnavailable`` and the connection is refused: a limit
that cannot be checked is never waived.

Bodies being received count against their client's address while they are unfinished
(``ClientBytes``): 12 DATA transfers that never end cannot fill the spool's disk. Only the part
written to the spool's ``incoming/`` counts; what is still in memory is bounded by
``incoming.SPILL_AT`` per connection and by the connection limits. As with connections, who counts
is a ``ByteCounter``: in an accept worker the main process, so the allowance is one per client
address for the whole relay, not one per worker.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

__all__ = [
    "REPLY_INSUFFICIENT_STORAGE",
    "REPLY_LIMITS_UNAVAILABLE",
    "REPLY_TOO_MANY_CONNECTIONS",
    "REPLY_TOO_MANY_FROM_CLIENT",
    "ByteCounter",
    "ClientBytes",
    "ConnectionCounter",
    "ConnectionLimits",
    "FreeSpace",
    "LimitsUnavailable",
]

REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
REPLY_TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
REPLY_LIMITS_UNAVAILABLE = "421 4.7.0 Service temporarily unavailable, try again later"
# RFC 3463 4.3.1 "mail system full"; Postfix's wording for queue_minfree.
REPLY_INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"
FREE_SPACE_MAX_AGE = 1.0  # seconds a statvfs answer is reused: one syscall per second, not per MAIL


class LimitsUnavailable(Exception):
    """The process that holds the connection and login limits cannot be asked (it has gone)."""


class ConnectionCounter(Protocol):
    """Who admits a listener's connections and is told when they close."""

    async def admit(self, peer: str) -> str | None:
        """Count a new connection from ``peer``; or the 421 reply refusing it (then not counted).

        LimitsUnavailable when the count cannot be taken.
        """
        ...

    def release(self, peer: str) -> None:
        """A connection ``admit`` counted has closed."""
        ...


class ConnectionLimits:
    """Counts open connections, in all and per client address; refuses beyond the limits."""

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._count = 0

    async def admit(self, peer: str) -> str | None:
        return self.take(peer)

    def take(self, peer: str) -> str | None:
        """Count a new connection from ``peer``; or the 421 reply refusing it (then not counted)."""
        if self._count >= self.total:
            return REPLY_TOO_MANY_CONNECTIONS
        if self._open[peer] >= self.per_client:
            return REPLY_TOO_MANY_FROM_CLIENT
        self._open[peer] += 1
        self._count += 1
        return None

    def release(self, peer: str) -> None:
        """A connection counted by ``admit`` has closed."""
        self._count -= 1
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]

    def open_from(self, peer: str) -> int:
        return self._open[peer]


class ByteCounter(Protocol):
    """Who charges a client address for the unfinished DATA transfers it has on disk."""

    async def reserve(self, peer: str, size: int) -> None:
        """Charge ``size`` more bytes to ``peer``; OSError to refuse them.

        EDQUOT when that would pass the client's allowance; another errno when the charge cannot
        be counted (an accept worker without its main process): then the write fails with a 451.
        """
        ...

    def give_back(self, peer: str, size: int) -> None:
        """A transfer ended (stored or dropped): its bytes no longer count."""
        ...


class ClientBytes:
    """Bytes of unfinished DATA transfers on disk, per client address, up to ``per_client``."""

    def __init__(self, *, per_client: int) -> None:
        self.per_client = per_client
        self._held: Counter[str] = Counter()

    def take(self, peer: str, size: int) -> None:
        """Charge ``size`` more bytes to ``peer``; OSError(EDQUOT) if that would pass the limit."""
        if self._held[peer] + size > self.per_client:
            raise OSError(
                errno.EDQUOT,
                f"unfinished transfers from {peer} would hold more than {self.per_client} bytes",
            )
        self._held[peer] += size

    async def reserve(self, peer: str, size: int) -> None:
        self.take(peer, size)

    def give_back(self, peer: str, size: int) -> None:
        """A transfer ended (stored or dropped): its bytes no longer count."""
        self._held[peer] -= size
        if self._held[peer] <= 0:
            del self._held[peer]

    def held(self, peer: str) -> int:
        return self._held[peer]


class FreeSpace:
    """Whether the file system holding ``path`` has at least ``minimum`` bytes free for us."""

    def __init__(self, path: Path, *, minimum: int, max_age: float = FREE_SPACE_MAX_AGE) -> None:
        self.path = path
        self.minimum = minimum
        self._max_age = max_age
        self._checked_at = -max_age
        self._free: int | None = None

    def available(self) -> int | None:
        """Free bytes for an unprivileged writer (f_bavail), None if the path cannot be examined.

        Blocking (statvfs may wait for a network file system): call it in a thread.
        """
        probe = self.path
        while not probe.exists() and probe != probe.parent:  # incoming/ is made on the first spill
            probe = probe.parent
        try:
            stat = os.statvfs(probe)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def check(self) -> None:
        """OSError(ENOSPC) when below the minimum. Blocking: for the writer's thread."""
        free = self.available()
        if free is not None and free < self.minimum:
            raise OSError(errno.ENOSPC, f"only {free} bytes free, below relay.min_free_space {self.minimum}")

    async def low(self) -> bool:
        """True while below the minimum (answers at most ``max_age`` seconds old)."""
        if not self.minimum:
            return False
        now = time.monotonic()
        if now - self._checked_at >= self._max_age:
            self._free = await asyncio.to_thread(self.available)
            self._checked_at = now
        return self._free is not None and self._free < self.minimum
