"""How one mailbox's upstream is doing: how many sessions it may use now, and whether it is suspended.

Two rules, both Postfix's ("delivery temporarily suspended", per destination) adapted to a
mailbox on Exchange Online:

- ``432 4.3.2 ... thread limit exceeded``: someone else (send-mail, the library, another relay)
  holds some of the mailbox's 3 concurrent sessions. The pool uses one session fewer and retries
  the message within seconds; after ``RESTORE_AFTER`` seconds without a 432 it grows back.
- An upstream-wide failure (the server cannot be reached, TLS fails, 421, a 432 with one session
  left, 535 after a fresh token, the identity platform refusing or unreachable) says nothing
  about the message: every other message would fail the same way. The mailbox is *suspended*:
  no message is tried but one probe, first after ``probe_first`` seconds, then doubling up to
  ``probe_max`` (30 s). When the upstream said when to come back (Graph's ``Retry-After`` on a
  429 or 503, https://learn.microsoft.com/en-us/graph/throttling), the probe comes then instead,
  at most ``RETRY_AFTER_MAX`` away. A failure of a send that was already under way when the
  mailbox was suspended does not push the probe further out. When a probe is delivered, the
  messages held back for that reason are sent at once. Each state change is one log line, per
  mailbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from smtp_oauth.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    TemporaryDeliveryError,
    TokenError,
)
from smtp_oauth.relay.spool.base import SpoolDelivery, SpooledMessage

__all__ = [
    "PROBE_FIRST",
    "PROBE_MAX",
    "RESTORE_AFTER",
    "RETRY_AFTER_MAX",
    "DeliverySpool",
    "UpstreamHealth",
    "is_congestion",
    "is_upstream_wide",
]

PROBE_FIRST = 5.0
PROBE_MAX = 30.0
RESTORE_AFTER = 60.0  # seconds without a 432 before the pool takes one more session again
CONGESTION_RETRY = 2.0  # a message refused with 432 is tried again this soon
# The longest Retry-After honoured as given: a proxy asking for hours must not hold the queue for
# hours (``smtp-oauth queue retry`` still sends at once).
RETRY_AFTER_MAX = 300.0


class DeliverySpool(SpoolDelivery, Protocol):
    """The spool as delivery uses it: its delivery side, plus making held-back messages due
    again (``get`` and ``retry`` of the admin side) when a suspended mailbox recovers."""

    async def get(self, queue_id: str) -> SpooledMessage | None: ...

    async def retry(self, queue_id: str | None = None) -> int:
        """Make one message (deferred or dead), or every deferred one, due now; the count."""
        ...


def is_congestion(error: BaseException) -> bool:
    """Exchange's per-mailbox concurrency limit: ``432 4.3.2``.

    https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements
    """
    return isinstance(error, DeliveryError) and error.code == 432


def is_upstream_wide(error: BaseException) -> bool:
    """Whether ``error`` would hit every message of the mailbox, not just this one."""
    if isinstance(error, AuthenticationError | TokenError | ConfigurationError | OSError):
        return True
    if isinstance(error, TemporaryDeliveryError):
        # No reply code: refused, unreachable, TLS, a timeout. 421: the server is going away.
        return error.code is None or error.code in {421, 432}
    return False


@dataclass
class UpstreamHealth:
    """The state of one mailbox's upstream, changed by each attempt's outcome."""

    connections: int  # relay.upstream_connections
    probe_first: float = PROBE_FIRST
    probe_max: float = PROBE_MAX
    restore_after: float = RESTORE_AFTER
    clock: Callable[[], float] = time.monotonic
    limit: int = 0  # sessions the pool may use now
    suspended_by: str | None = None  # the reply that suspended the mailbox
    next_probe: float = 0.0
    probing: bool = False
    held: set[str] = field(default_factory=set)  # queue ids deferred while suspended
    _probe_wait: float = 0.0
    _last_congestion: float = 0.0

    def __post_init__(self) -> None:
        self.limit = self.limit or self.connections

    @property
    def suspended(self) -> bool:
        return self.suspended_by is not None

    def may_claim(self, worker: int) -> bool:
        """Whether worker number ``worker`` may claim a message now (as a probe if suspended)."""
        if worker >= self.limit:
            return False
        if not self.suspended:
            return True
        return not self.probing and self.clock() >= self.next_probe

    def seconds_to_probe(self) -> float | None:
        """How long a suspended mailbox waits for its next probe (None when not suspended)."""
        if not self.suspended:
            return None
        return max(0.0, self.next_probe - self.clock())

    def start_probe(self) -> None:
        self.probing = True

    def end_probe(self) -> None:
        """The probe found nothing to send, or failed: the next one is due after the interval."""
        self.probing = False
        self._probe_wait = min(self.probe_max, max(self.probe_first, self._probe_wait * 2))
        self.next_probe = self.clock() + self._probe_wait

    def congested(self) -> bool:
        """A 432: one session fewer. False when there was only one left (then it is upstream-wide)."""
        self._last_congestion = self.clock()
        if self.limit <= 1:
            return False
        self.limit -= 1
        return True

    def delivered(self) -> tuple[bool, bool]:
        """A message went through: (resumed from suspension, took one more session)."""
        resumed = self.suspended
        if resumed:
            self.suspended_by = None
            self.probing = False
            self._probe_wait = 0.0
        grown = False
        if self.limit < self.connections and self.clock() - self._last_congestion >= self.restore_after:
            self.limit += 1
            self._last_congestion = self.clock()  # one more per interval, not all at once
            grown = True
        return resumed, grown

    def suspend(self, reply: str, *, retry_after: float | None = None) -> bool:
        """An upstream-wide failure; True if that is a change (the mailbox was not suspended).

        The next probe comes after ``retry_after`` (the upstream's Retry-After, at most
        ``RETRY_AFTER_MAX``) if given, else after the doubling interval. Only the failure that
        suspends the mailbox and a failed probe set it; a send that was under way meanwhile and
        fails too only makes it wait longer when the upstream asked for longer.
        """
        changed = not self.suspended
        decides = changed or self.probing
        self.suspended_by = reply
        if changed:
            self._probe_wait = 0.0
        if decides:
            self.end_probe()
        if retry_after is not None:
            at = self.clock() + min(max(retry_after, 0.0), RETRY_AFTER_MAX)
            self.next_probe = at if decides else max(self.next_probe, at)
        return changed
