"""The relay's durable queue: what was accepted, and where each message stands.

A message moves through these states::

    queued --claim--> sending --ok--> delivered (body dropped; row pruned after relay.retention)
      ^                 |  \\--4xx/network--> deferred --due--> (claimed again; after a partial
      |                 |                          delivery, for the 4xx-refused recipients only)
      |                 |   \\--5xx or too old--> dead (kept, with its body, until deleted or retried)
      +---- recover() --+   (a relay killed mid-delivery: sent again, at-least-once)

Three roles use the queue, each through its own Protocol: the listener (``SpoolIntake``: enqueue),
the delivery workers (``SpoolDelivery``: claim, read, record the outcome) and ``smtp-oauth queue``
(``SpoolAdmin``). ``Spool`` is all three; ``open_spool`` (``relay/spool/__init__.py``) picks the
backend: SQLite in ``relay.spool_dir`` (the embedded default) or PostgreSQL (``relay.spool_url``,
several relays sharing one queue).

Bodies cross the seam as files to stream, never as "a path on the spool's file system": the
listener writes a big message it receives into ``staging_dir`` (a local directory) and ``enqueue``
takes that file over (SQLite renames it; PostgreSQL streams it into the database and removes
it); delivery reads a body with ``open_body`` (a seekable binary file, which ``Mailer.send``
streams). A 35 MiB message is never held whole in the relay's memory.

Errors of the backends (sqlite3, psycopg, OSError) are turned into ``SpoolError`` at the backend's
boundary: ``temporary`` says whether trying again can help (a locked or unreachable database, a
full disk), ``MessageGone`` that the entry or its body no longer exists.

This module holds the interface and the types that cross it; it imports only ``smtp_oauth.errors``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from smtp_oauth.errors import FailureKind, SmtpOAuthError

__all__ = [
    "STATES",
    "ClaimBook",
    "Message",
    "MessageGone",
    "QueueState",
    "Spool",
    "SpoolAdmin",
    "SpoolDelivery",
    "SpoolError",
    "SpoolIntake",
    "SpooledMessage",
    "new_queue_id",
]

QueueState = Literal["queued", "sending", "deferred", "delivered", "dead"]
STATES: tuple[QueueState, ...] = ("queued", "sending", "deferred", "delivered", "dead")


class SpoolError(SmtpOAuthError):
    """The queue could not do what was asked; ``temporary``: trying again later may work."""

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.kind = FailureKind.TEMPORARY if temporary else FailureKind.SOFTWARE


class MessageGone(SpoolError):  # the name says what happened, like FileNotFoundError
    """The queue entry, or its body, no longer exists (deleted, or delivered meanwhile)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


@dataclass(frozen=True, repr=False)
class Message:
    """A message to queue: accepted by the listener, or made by the relay (a non-delivery report).

    ``mail_from`` is ``""`` for the null sender <>. ``data`` is exactly what was received
    (dot-unstuffed, never rewritten): bytes, or a file in the spool's ``staging_dir`` that
    ``enqueue`` takes over (the caller removes it if ``enqueue`` fails).
    """

    local_user: str
    mailbox: str  # the upstream mailbox (XOAUTH2 user) it goes out through
    mail_from: str
    rcpt_tos: list[str]
    data: bytes | Path
    peer: str = ""  # the client's IP address ("" for the relay's own reports)
    message_id: str | None = None  # from the Message-ID: header, for logs only
    size: int = field(default=-1)  # of ``data``; worked out for bytes, required for a file

    def __post_init__(self) -> None:
        if self.size < 0:
            if isinstance(self.data, Path):
                raise ValueError("a Message with a body file needs its size")
            object.__setattr__(self, "size", len(self.data))  # frozen: set once, here

    def __repr__(self) -> str:
        # Bodies never go into logs or tracebacks.
        return (
            f"Message(local_user={self.local_user!r}, mailbox={self.mailbox!r}, "
            f"mail_from={self.mail_from!r}, rcpt_tos=<{len(self.rcpt_tos)}>, data=<{self.size} bytes>, "
            f"peer={self.peer!r}, message_id={self.message_id!r})"
        )


@dataclass(frozen=True)
class SpooledMessage:
    """One queue entry without its body (read that with ``open_body``)."""

    id: str
    state: QueueState
    local_user: str
    mailbox: str
    mail_from: str
    rcpt_tos: list[str]
    message_id: str | None
    peer: str
    size: int
    attempts: int
    next_attempt_at: float
    last_reply: str
    refused: dict[str, tuple[int, str]]
    created_at: float
    updated_at: float
    claimed_by: str = ""  # the relay sending it (state sending, shared queue), else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``smtp-oauth queue --json``)."""
        return {
            "id": self.id,
            "state": self.state,
            "local_user": self.local_user,
            "mailbox": self.mailbox,
            "mail_from": self.mail_from,
            "rcpt_tos": self.rcpt_tos,
            "message_id": self.message_id,
            "peer": self.peer,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_reply": self.last_reply,
            "refused": {addr: list(reply) for addr, reply in self.refused.items()},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "claimed_by": self.claimed_by,
        }


Body = AbstractAsyncContextManager[BinaryIO]
"""What ``open_body`` gives: ``async with spool.open_body(id) as file`` (seekable, binary)."""


class SpoolIntake(Protocol):
    """The listener's side: store what was accepted."""

    @property
    def staging_dir(self) -> Path:
        """A local directory where a body being received may be written, for ``enqueue`` to take."""
        ...

    async def enqueue(self, message: Message) -> str:
        """Store a new message durably (state queued, due now); return its queue id."""
        ...


class SpoolDelivery(Protocol):
    """The delivery workers' side: claim due messages, read them, record what happened."""

    async def enqueue(self, message: Message) -> str:
        """Store a message of the relay's own (a non-delivery report)."""
        ...

    async def recover(self) -> int:
        """At start-up: put back in the queue what a dead relay left in ``sending``; the count."""
        ...

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the event loop) whenever work may have appeared (another process)."""
        ...

    async def pending_by_mailbox(self) -> dict[str, float]:
        """Mailbox -> earliest next_attempt_at of its queued and deferred messages (for a shared
        queue: of the mailboxes this relay delivers for)."""
        ...

    async def claim_due(self, mailbox: str, limit: int = 1) -> list[SpooledMessage]:
        """Move up to ``limit`` due messages of ``mailbox`` to ``sending`` and return them."""
        ...

    def open_body(self, queue_id: str) -> Body:
        """The raw message as a seekable binary file; ``MessageGone`` if its body is gone."""
        ...

    async def mark_delivered(
        self,
        queue_id: str,
        *,
        reply: str,
        refused: dict[str, tuple[int, str]] | None = None,
        report: Message | None = None,
    ) -> str | None:
        """Delivered (``refused``: the recipients that were not); ``report``: a non-delivery
        report for those, queued in the same transaction. The report's queue id, if one was queued
        (the mark_* that take a report all do this: a crash never loses a report, nor makes one
        for a failure it did not record)."""
        ...

    async def mark_deferred(self, queue_id: str, *, next_attempt_at: float, reply: str) -> None: ...

    async def mark_partly_delivered(
        self,
        queue_id: str,
        *,
        remaining: list[str],
        next_attempt_at: float,
        reply: str,
        refused: dict[str, tuple[int, str]],
        report: Message | None = None,
    ) -> str | None:
        """The others got it; ``remaining`` were refused for now (4xx): ``deferred`` for them alone."""
        ...

    async def mark_dead(self, queue_id: str, *, reply: str, report: Message | None = None) -> str | None:
        """Failed for good; ``report`` (a non-delivery report) is queued in the same transaction."""
        ...

    async def release(self, queue_id: str) -> None:
        """Give a claimed message back untried (shutdown, bookkeeping failure): -> ``queued``."""
        ...

    async def prune(self, *, older_than: float) -> int:
        """Forget delivered messages last updated before ``older_than`` (epoch seconds)."""
        ...


class SpoolAdmin(Protocol):
    """``smtp-oauth queue``'s side: look at entries, retry or delete them."""

    async def list(self, states: Iterable[QueueState] | None = None) -> list[SpooledMessage]: ...

    async def get(self, queue_id: str) -> SpooledMessage | None: ...

    def open_body(self, queue_id: str) -> Body: ...

    async def retry(self, queue_id: str | None = None) -> int:
        """Make one message (deferred or dead), or every deferred one, due now; the count."""
        ...

    async def delete(self, queue_id: str) -> bool: ...

    async def counts_by_state(self) -> dict[QueueState, int]: ...

    async def close(self) -> None: ...


class Spool(SpoolIntake, SpoolDelivery, SpoolAdmin, Protocol):
    """All three roles: what a running relay holds."""

    async def figures(self) -> dict[str, float]:
        """Backend figures for /metrics, by name (e.g. leases held, relays sharing the queue)."""
        ...


class ClaimBook:
    """Which of this process's ``sending`` rows its delivery holds, so that none is left behind.

    A claim's UPDATE can commit and its reply still be lost (the database restarted or the
    connection broke between COMMIT and the answer, or the caller was cancelled meanwhile): the
    rows are then ``sending`` under this process's name, and no worker knows them. Nobody else
    takes them either (a live relay's claims are never stolen), so without this they would wait
    for a restart. The spool notes every claim that reached its caller (``held``) until its
    outcome or release is recorded; ``adoptable`` tells which of its own ``sending`` rows may go
    back to the queue: those not held, and stamped before any claim still running (a claim in
    progress may have committed rows whose ids are not known yet).

    A claim writes its stamp as the rows' ``updated_at``. Stamps are wall-clock seconds (they are
    stored, and read by ``smtp-oauth queue``) but strictly increasing within the process, so a
    clock stepped back cannot make a claim that started later look older than the bound an
    adoption computed before it. Nothing here measures a duration.
    """

    def __init__(self) -> None:
        self.held: set[str] = set()  # claims delivery has, outcome not recorded yet
        self.suspect = False  # a claim failed or was cancelled since the last adoption
        self._running: set[float] = set()  # the stamps of the claims in progress
        self._last = 0.0

    def stamp(self) -> float:
        """``time.time()``, but always above the previous stamp (1 µs is far above a double's
        resolution at today's epoch, about 0.24 µs)."""
        self._last = max(time.time(), self._last + 1e-6)
        return self._last

    @contextmanager
    def claiming(self) -> Iterator[float]:
        """Around a claim: gives its stamp, which the claim must write as ``updated_at``."""
        stamp = self.stamp()
        self._running.add(stamp)
        try:
            yield stamp
        except BaseException:
            self.suspect = True
            raise
        finally:
            self._running.discard(stamp)

    def took(self, queue_ids: Iterable[str]) -> None:
        """These claims reached delivery."""
        self.held.update(queue_ids)

    def settled(self, queue_id: str) -> None:
        """Its outcome (or its release) is recorded: the row is no longer ``sending`` of ours."""
        self.held.discard(queue_id)

    def adoptable(self) -> tuple[float, list[str]]:
        """(stamped before, held ids): own ``sending`` rows whose ``updated_at`` is below the first
        and whose id is not among the second went astray and may be queued again. With no claim
        running the bound is a fresh stamp, which every claim that starts later exceeds."""
        bound = min(self._running) if self._running else self.stamp()
        return bound, sorted(self.held)


def new_queue_id() -> str:
    """24 hex digits: milliseconds since the epoch (11), then 52 random bits (13).

    The ids sort by arrival to the millisecond. Every accept worker of every relay sharing a
    queue makes them with no coordination, so the random part must make a clash in one
    millisecond negligible: with 52 bits, 1,000 ids in the same millisecond clash with a
    probability of about 1e-10 (the birthday bound n**2 / 2**53); 20 bits clashed within a
    tight loop of 20,000.
    """
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(7)[:13]}"
