"""Fault injection for the fake Exchange Online: "the next N replies to AUTH are ``535 5.7.139 ...``".

Tests (ours and users') and the ``smtp-oauth sandbox`` command queue replies from any thread; the
SMTP server, on its event loop, takes them one at a time as the matching commands arrive. A queued
reply replaces the command's normal processing: the command has no effect (no login, no sender or
recipient recorded, no message stored), which is what a client sees when Exchange refuses it.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["INJECTABLE_COMMANDS", "FaultInjector", "InjectedReply"]

# CONNECT is the greeting (banner); DATA is the reply after the message content, where Exchange
# reports submission failures such as SubmissionQuotaExceededException.
INJECTABLE_COMMANDS = frozenset({"CONNECT", "EHLO", "AUTH", "MAIL", "RCPT", "DATA"})

# One line, a 4xx or 5xx code, optionally followed by text: injected replies are refusals.
_FAILURE_REPLY = re.compile(r"[45][0-9][0-9]( [^\r\n]*)?")


@dataclass(frozen=True)
class InjectedReply:
    """A reply to send instead of the normal one, and whether to hang up after sending it."""

    reply: str
    disconnect: bool = False


class FaultInjector:
    """Thread-safe queues of injected replies, one queue per SMTP command."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[InjectedReply]] = {name: deque() for name in INJECTABLE_COMMANDS}

    def inject(self, command: str, reply: str, *, times: int = 1, disconnect: bool = False) -> None:
        """Queue ``reply`` for the next ``times`` ``command``s; ValueError on a bad command or reply."""
        name = command.upper()
        if name not in INJECTABLE_COMMANDS:
            choices = ", ".join(sorted(INJECTABLE_COMMANDS))
            raise ValueError(f"cannot inject a reply for {command!r}: choose one of {choices}")
        if not _FAILURE_REPLY.fullmatch(reply):
            raise ValueError(f"an injected reply is one line starting with a 4xx or 5xx code, got {reply!r}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        injected = InjectedReply(reply=reply, disconnect=disconnect)
        with self._lock:
            self._queues[name].extend([injected] * times)

    def take(self, command: str) -> InjectedReply | None:
        """The next reply queued for ``command``, removed from its queue; None when there is none."""
        with self._lock:
            queue = self._queues[command]
            return queue.popleft() if queue else None

    def pending(self, command: str) -> int:
        """How many injected replies are still waiting for ``command``."""
        with self._lock:
            return len(self._queues[command.upper()])

    def clear(self) -> None:
        """Forget every queued reply."""
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
