"""Fault injection for the fake Microsoft Graph: "the next N sendMail requests get 429, Retry-After 2".

Like the fake Exchange's SMTP faults (``sandbox/faults.py``): queued from any thread, taken by the
server one per matching request, and an injected answer replaces the request's processing (no
mail stored, no draft made). Operations: ``sendMail``, ``createDraft``, ``attachment``,
``createUploadSession``, ``upload``, ``send`` (a draft), ``mailFolders``, or ``any``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["OPERATIONS", "GraphFault", "GraphFaults"]

OPERATIONS = frozenset(
    {"sendMail", "createDraft", "attachment", "createUploadSession", "upload", "send", "mailFolders", "any"}
)


@dataclass(frozen=True)
class GraphFault:
    """An answer to give instead of the normal one."""

    status: int
    code: str
    message: str
    retry_after: str | None = None  # the Retry-After header as sent (seconds or an HTTP-date)


class GraphFaults:
    """Thread-safe queues of injected answers, one per operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[GraphFault]] = {name: deque() for name in OPERATIONS}

    def inject(self, operation: str, fault: GraphFault, *, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests of ``operation``; ValueError if unknown."""
        if operation not in OPERATIONS:
            raise ValueError(
                f"cannot inject a Graph fault for {operation!r}: choose one of {sorted(OPERATIONS)}"
            )
        if not 400 <= fault.status < 600:
            raise ValueError(f"an injected Graph answer is a 4xx or 5xx, got {fault.status}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._queues[operation].extend([fault] * times)

    def take(self, operation: str) -> GraphFault | None:
        """The next fault for ``operation`` (or for any operation), removed; None when none waits."""
        with self._lock:
            for name in (operation, "any"):
                if self._queues[name]:
                    return self._queues[name].popleft()
        return None

    def pending(self, operation: str) -> int:
        with self._lock:
            return len(self._queues[operation])

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
