"""Exchange Online's per-mailbox submission limits, as the fake Exchange enforces them.

Microsoft, "Changes in message store and throttling for concurrent connections" (SMTP AUTH client
submission): at most 3 connections per mailbox may submit at once, the others get ``432 4.3.2
STOREDRV.ClientSubmit; sender thread limit exceeded`` at MAIL FROM; 30 messages a minute.

Both classes are used from the server's event loop only; no locking.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable

__all__ = ["SessionSlots", "SubmissionRate"]


class SessionSlots:
    """Concurrent authenticated sessions per mailbox; the first ``limit`` of them may submit.

    A session that authenticated while ``limit`` others were open may still log in (Exchange
    accepts the AUTH), but is refused at MAIL FROM until one of the earlier sessions ends.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, list[Hashable]] = defaultdict(list)
        self._mailbox_of: dict[Hashable, str] = {}
        self.peak: dict[str, int] = {}

    def open(self, mailbox: str, session: Hashable) -> None:
        """Count ``session`` as authenticated to ``mailbox`` until ``close``."""
        self._open[mailbox].append(session)
        self._mailbox_of[session] = mailbox
        self.peak[mailbox] = max(self.peak.get(mailbox, 0), len(self._open[mailbox]))

    def close(self, session: Hashable) -> None:
        """Forget ``session`` (its connection ended); no-op when it never authenticated."""
        mailbox = self._mailbox_of.pop(session, None)
        if mailbox is not None:
            self._open[mailbox].remove(session)

    def may_submit(self, session: Hashable) -> bool:
        """Whether ``session`` is among the first ``limit`` open sessions of its mailbox."""
        mailbox = self._mailbox_of.get(session)
        if mailbox is None:
            return False
        return self._open[mailbox].index(session) < self.limit

    def count(self, mailbox: str) -> int:
        """How many authenticated sessions ``mailbox`` has now."""
        return len(self._open.get(mailbox, []))


class SubmissionRate:
    """Messages accepted per mailbox over the last minute; ``per_minute`` 0 means no limit."""

    WINDOW_SECONDS = 60.0

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._accepted: dict[str, deque[float]] = defaultdict(deque)

    def allows(self, mailbox: str) -> bool:
        """Whether one more message from ``mailbox`` stays within the limit."""
        if self.per_minute <= 0:
            return True
        accepted = self._accepted[mailbox]
        horizon = self._clock() - self.WINDOW_SECONDS
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        return len(accepted) < self.per_minute

    def record(self, mailbox: str) -> None:
        """Count one accepted message for ``mailbox``."""
        if self.per_minute > 0:
            self._accepted[mailbox].append(self._clock())
