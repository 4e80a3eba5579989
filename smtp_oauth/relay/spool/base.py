"""The relay's durable queue: what was accepted, and where each message stands.

A message moves through these states::

    queued --claim--> sending --ok--> delivered (body dropped; row pruned after relay.retention)
      ^                 |  \\--4xx/network--> deferred --due--> (claimed again; after a partial
      |                 |                          delivery, for the 4xx-refused recipients only)
      |                 |   \\--5xx or too old--> dead (kept, with its body, until deleted or retried)
      +---- recover() --+   (a relay killed mid-delivery sends again: at-least-once)

``Spool`` is the small interface the listener, the delivery workers and ``smtp-oauth queue`` use.
``SqliteSpool`` (``relay/spool_sqlite.py``) is the embedded default: stdlib sqlite3 in WAL mode
with ``synchronous=FULL``, since the 250 after DATA promises the message survives a power cut.
A PostgreSQL backend (several relays sharing one queue) can follow behind the same interface:
``claim_due`` becomes ``SELECT ... FOR UPDATE SKIP LOCKED`` and ``recover`` a lease expiry instead
of a blanket reset.

A body crosses the interface as bytes or, when big, as a file: the listener writes a message it
receives into the spool's ``incoming/`` directory and ``enqueue`` takes that file over (a rename,
no copy); ``read_body`` hands delivery the path of a stored file rather than its bytes, and the
Mailer streams it. A 35 MiB message is thus never held whole in the relay's memory.

This module holds the interface and the types that cross it; it imports nothing of smtp_oauth.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "STATES",
    "IncomingMessage",
    "NewMessage",
    "QueueState",
    "Spool",
    "SpooledMessage",
    "new_queue_id",
]

QueueState = Literal["queued", "sending", "deferred", "delivered", "dead"]
STATES: tuple[QueueState, ...] = ("queued", "sending", "deferred", "delivered", "dead")


class IncomingMessage(Protocol):
    """What ``enqueue`` needs; the listener's ``AcceptedMessage`` has this shape."""

    @property
    def local_user(self) -> str: ...
    @property
    def mailbox(self) -> str: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def rcpt_tos(self) -> list[str]: ...
    @property
    def data(self) -> bytes | Path:
        """The body; a path is a file on the spool's file system that ``enqueue`` takes over."""
        ...

    @property
    def size(self) -> int: ...
    @property
    def peer(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...


@dataclass(frozen=True)
class NewMessage:
    """A message the relay makes itself (a non-delivery report), in ``IncomingMessage`` shape."""

    local_user: str
    mailbox: str
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str = ""
    message_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class SpooledMessage:
    """One queue entry without its body (read that with ``Spool.read_data``)."""

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
        }


class Spool(Protocol):
    """The relay's queue. Every method that changes state returns after a durable commit."""

    async def enqueue(self, message: IncomingMessage) -> str:
        """Store a new message (state queued, due now); return its queue id."""
        ...

    async def recover(self) -> int:
        """At start-up: put messages left in ``sending`` by a dead relay back to ``queued``."""
        ...

    async def pending_by_mailbox(self) -> dict[str, float]:
        """Mailbox -> earliest next_attempt_at among its queued and deferred messages."""
        ...

    async def claim_due(self, mailbox: str, limit: int = 1) -> list[SpooledMessage]:
        """Move up to ``limit`` due messages of ``mailbox`` to ``sending`` and return them."""
        ...

    async def read_data(self, queue_id: str) -> bytes:
        """The raw message; FileNotFoundError if its body is gone."""
        ...

    async def read_body(self, queue_id: str) -> bytes | Path:
        """The raw message, or the path of the file holding it (not read); FileNotFoundError if gone."""
        ...

    async def mark_delivered(
        self, queue_id: str, *, reply: str, refused: dict[str, tuple[int, str]] | None = None
    ) -> None: ...

    async def mark_deferred(self, queue_id: str, *, next_attempt_at: float, reply: str) -> None: ...

    async def mark_partly_delivered(
        self,
        queue_id: str,
        *,
        remaining: list[str],
        next_attempt_at: float,
        reply: str,
        refused: dict[str, tuple[int, str]],
    ) -> None:
        """The others got it; ``remaining`` were refused for now (4xx): ``deferred`` for them alone."""
        ...

    async def mark_dead(self, queue_id: str, *, reply: str) -> None: ...

    async def release(self, queue_id: str) -> None:
        """Give a claimed message back untried (shutdown): ``sending`` -> ``queued``."""
        ...

    async def list(self, states: Iterable[QueueState] | None = None) -> list[SpooledMessage]: ...

    async def get(self, queue_id: str) -> SpooledMessage | None: ...

    async def retry(self, queue_id: str | None = None) -> int:
        """Make one message (deferred or dead), or every deferred one, due now; the count."""
        ...

    async def delete(self, queue_id: str) -> bool: ...

    async def counts_by_state(self) -> dict[QueueState, int]: ...

    async def prune(self, *, older_than: float) -> int:
        """Forget delivered messages last updated before ``older_than`` (epoch seconds)."""
        ...

    async def close(self) -> None: ...


def new_queue_id() -> str:
    """16 hex digits: milliseconds since the epoch, then randomness, so ids sort by arrival."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(3)[:5]}"
