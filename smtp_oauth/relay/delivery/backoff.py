"""When to try again: exponential backoff with jitter, the queue-age limit, and per-mailbox pacing.

Pure timing; nothing here knows about SMTP or the spool.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Pacer", "next_attempt_at", "retry_delay"]

BACKOFF_BASE = 60.0  # first retry after about a minute...
BACKOFF_CAP = 3600.0  # ...doubling up to an hour between attempts
JITTER = 0.25  # +-25 %: messages deferred together (Exchange down) do not come back together

_random = random.Random()  # noqa: S311  # jitter, not cryptography


def retry_delay(
    attempts: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    jitter: float = JITTER,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...).

    ``base * 2**(attempts-1)`` capped at ``cap``, then scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` (and capped again, so an hour means an hour).
    """
    nominal = min(cap, base * 2.0 ** max(0, attempts - 1))
    factor = 1 + (rng or _random).uniform(-jitter, jitter)
    return min(cap, nominal * factor)


def next_attempt_at(
    *,
    now: float,
    created_at: float,
    attempts: int,
    max_queue_age: float,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float | None:
    """When to try a message again after its ``attempts``-th temporary failure, or None to give up.

    Like Postfix's maximal_queue_lifetime: a message older than ``max_queue_age`` is not tried
    again; the last retry is moved forward so it happens right at that age, not an hour past it.
    """
    expires_at = created_at + max_queue_age
    if now >= expires_at:
        return None
    return min(now + retry_delay(attempts, base=base, cap=cap), expires_at)


class Pacer:
    """Spaces sends ``60 / per_minute`` seconds apart (0 = unpaced); shared by a mailbox's sessions.

    Exchange Online accepts 30 messages a minute per mailbox and delays the excess
    (https://learn.microsoft.com/en-us/exchange/troubleshoot/send-emails/smtp-submission-improvements);
    pacing ourselves keeps delivery latency predictable instead.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._next_slot = 0.0

    async def wait(self) -> None:
        """Return when the caller may send; reserves the slot before sleeping, so callers queue up."""
        if not self.interval:
            return
        now = self._clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
