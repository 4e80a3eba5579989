"""Where the fake Exchange Online puts accepted mail: a folder a person can look at and a test can read.

Each message is two files, ``<n>-<id>.eml`` (the raw message as received, dot-unstuffed) and
``<n>-<id>.json`` (its envelope: ``auth_user``, ``mail_from``, ``rcpt_tos``, ``received_at``,
``message_id``, ``size``). Both are written to a temporary name and renamed into place, the ``.eml``
first: a reader that lists ``*.json`` files never sees half a message. ``n`` counts up from the
highest number already in the folder, so reusing a sandbox folder keeps the order.
"""

from __future__ import annotations

import datetime
import email.policy
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

__all__ = ["DeliveredMessage", "MailStore"]

_NUMBERED = re.compile(r"(\d+)-[0-9a-f]+\.eml")


@dataclass(frozen=True)
class DeliveredMessage:
    """A message the fake Exchange accepted, with its envelope and where it lies on disk."""

    path: Path
    auth_user: str
    mail_from: str
    rcpt_tos: list[str]
    data: bytes = field(repr=False)
    message_id: str = ""
    received_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def message(self) -> EmailMessage:
        """The message parsed with ``email.policy.default``."""
        return BytesParser(policy=email.policy.default).parsebytes(self.data)

    @property
    def envelope(self) -> dict[str, Any]:
        """The envelope as written to the ``.json`` file beside the ``.eml``."""
        return {
            "auth_user": self.auth_user,
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "received_at": self.received_at.isoformat(),
            "message_id": self.message_id,
            "size": len(self.data),
            "eml": self.path.name,
        }


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class MailStore:
    """The delivered-mail folder plus an in-memory list of what this server delivered.

    ``save`` and ``prepare`` do file I/O: call them through ``asyncio.to_thread`` from the loop.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._next_number = 1
        self._delivered: list[DeliveredMessage] = []

    def prepare(self) -> None:
        """Create the folder and continue numbering after the messages already in it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = [
            int(match.group(1))
            for entry in self.directory.iterdir()
            if (match := _NUMBERED.fullmatch(entry.name))
        ]
        with self._lock:
            self._next_number = max(numbers, default=0) + 1

    def save(
        self, *, auth_user: str, mail_from: str, rcpt_tos: list[str], data: bytes, message_id: str
    ) -> DeliveredMessage:
        """Write the message and its envelope, then remember it."""
        with self._lock:
            number = self._next_number
            self._next_number += 1
        stem = f"{number:06d}-{uuid.uuid4().hex[:12]}"
        delivered = DeliveredMessage(
            path=self.directory / f"{stem}.eml",
            auth_user=auth_user,
            mail_from=mail_from,
            rcpt_tos=list(rcpt_tos),
            data=data,
            message_id=message_id,
        )
        _write_atomically(delivered.path, data)
        envelope = json.dumps(delivered.envelope, indent=2, ensure_ascii=False) + "\n"
        _write_atomically(delivered.path.with_suffix(".json"), envelope.encode("utf-8"))
        with self._lock:
            self._delivered.append(delivered)
        return delivered

    def delivered(self) -> list[DeliveredMessage]:
        """The messages delivered since start (or the last ``clear``), oldest first."""
        with self._lock:
            return sorted(self._delivered, key=lambda message: message.path.name)

    def clear(self) -> None:
        """Forget the delivered messages and delete their files."""
        with self._lock:
            delivered, self._delivered = self._delivered, []
        for message in delivered:
            message.path.unlink(missing_ok=True)
            message.path.with_suffix(".json").unlink(missing_ok=True)
