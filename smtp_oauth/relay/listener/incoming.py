"""DATA received as a stream: each line goes to memory, then to a file in the spool, as it arrives.

aiosmtpd 1.4.6 collects the DATA lines in a list, joins them, and keeps the message twice
(``original_content`` and ``content``): about five copies of a 35 MiB message at the peak. The
relay's session (``session.RelaySession.smtp_DATA``) runs ``receive_data`` instead, the same loop
with the same rules, writing dot-unstuffed lines to a ``BodyWriter``:

- only CRLF "." CRLF ends DATA; a bare LF never ends a line, so "<LF>.<LF>" or "<LF>.<CR><LF>" is
  data (no smuggled second message, CVE-2023-51764 and kin);
- a line over the limit (1001 octets with its CRLF) turns the reply into 500, more octets than
  ``data_size_limit`` into 552; either way the rest is drained up to the final dot first
  (RFC 5321 4.2.5), and nothing is stored.

A ``BodyWriter`` keeps up to ``SPILL_AT`` bytes in memory (the spool stores such bodies in its
rows); past that, and when given a directory (the spool's ``incoming/``), it writes them to a new
file there and goes on appending in ``SPILL_AT`` pieces, off the event loop. The spool then takes
the file over by a rename (``SqliteSpool.enqueue``); whatever is not taken is removed.

``read_file_headers`` is ``policy.read_headers`` for a message in a file: it reads the header
section 64 KiB at a time, one field in memory, so a huge header costs no more than a small one.
"""

from __future__ import annotations

import asyncio
import enum
import io
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from smtp_oauth.relay.policy import LINE_END, MessageHeaders, read_headers

__all__ = ["SPILL_AT", "BodyWriter", "DataState", "read_file_headers", "receive_data"]

SPILL_AT = 256 * 1024  # the spool's inline limit: smaller bodies never touch a file here
HEADER_CHUNK = 64 * 1024
PROGRESS_EVERY = 8 * 1024  # DATA octets between two restarts of the idle timer
_END_OF_DATA = b".\r\n"


class DataState(enum.Enum):
    """How DATA ended: complete, or what the reply after the final dot must refuse."""

    COMPLETE = "complete"
    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
    TOO_MUCH = "552 Error: Too much mail data"


class BodyWriter:
    """The body being received: in memory up to ``spill_at`` bytes, then in a file in ``directory``.

    ``directory=None`` keeps everything in memory (a listener without a spool, in tests).
    """

    def __init__(self, directory: Path | None, *, spill_at: int = SPILL_AT) -> None:
        self.size = 0
        self.path: Path | None = None
        self._directory = directory
        self._spill_at = spill_at
        self._buffer = io.BytesIO()
        self._file: BinaryIO | None = None

    def add(self, line: bytes) -> bool:
        """Append ``line``; True when ``flush`` is due (the memory part is full and may spill)."""
        self._buffer.write(line)
        self.size += len(line)
        return self._directory is not None and self._buffer.tell() >= self._spill_at

    async def flush(self) -> None:
        """Move what is in memory to the file (created on the first flush), in a thread."""
        if self.path is None:
            assert self._directory is not None  # add() asks for a flush only with a directory
            # Named here, before the thread runs, so that discard() can always remove it.
            self.path = self._directory / f"{secrets.token_hex(8)}.tmp"
        data = self._buffer.getvalue()  # the BytesIO's own bytes: no copy
        self._buffer = io.BytesIO()
        await asyncio.to_thread(self._write, self.path, data)

    def _write(self, path: Path, data: bytes) -> None:
        if self._file is None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")
        self._file.write(data)

    async def finish(self) -> bytes | Path:
        """The whole body: its bytes, or the path of the (closed, not yet fsynced) file holding it."""
        if self._file is None:
            return self._buffer.getvalue()
        await self.flush()
        await asyncio.to_thread(self._file.close)
        assert self.path is not None  # named by the first flush
        return self.path

    def discard(self) -> None:
        """Drop the body; a file that is still there (not taken by the spool) is removed in a thread.

        Not awaited, so that it also runs while the session's task is being cancelled.
        """
        self._buffer = io.BytesIO()
        if self.path is not None:
            asyncio.get_running_loop().run_in_executor(None, self._remove, self.path)

    def _remove(self, path: Path) -> None:
        if self._file is not None:
            self._file.close()
        path.unlink(missing_ok=True)


async def receive_data(
    reader: asyncio.StreamReader,
    body: BodyWriter,
    *,
    size_limit: int | None,
    line_length_limit: int,
    progress: Callable[[], None] | None = None,
) -> DataState:
    """Read DATA up to the lone dot, dot-unstuffed lines into ``body`` (aiosmtpd 1.4.6's loop).

    ``reader``'s limit is the line limit: a longer line raises LimitOverrunError, and is drained.
    After a 500 or 552 condition ``body`` gets nothing more; the caller discards it. A client that
    goes away raises (IncompleteReadError, or the task is cancelled): nothing is stored then either.
    ``progress`` is called each ``PROGRESS_EVERY`` octets: the session's idle timer restarts, so a
    big message on a slow link is not cut off while it is still arriving (RFC 5321 4.5.3.2.6).
    """
    received = 0
    progress_at = PROGRESS_EVERY
    state = DataState.COMPLETE
    fragments: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\r\n")  # RFC 5321 2.3.8: CRLF and nothing else ends a line
        except asyncio.LimitOverrunError as exc:
            if state is DataState.COMPLETE:
                state = DataState.TOO_LONG
            line = await reader.read(exc.consumed)  # drain the overlong line in pieces
        if not fragments and line == _END_OF_DATA:
            return state
        received += len(line)
        if progress is not None and received >= progress_at:
            progress()
            progress_at = received + PROGRESS_EVERY
        if state is DataState.COMPLETE and size_limit and received > size_limit:
            state = DataState.TOO_MUCH
        fragments.append(line)
        if not line.endswith(b"\r\n"):
            continue
        if state is DataState.COMPLETE:
            whole = line if len(fragments) == 1 else b"".join(fragments)
            if len(whole) > line_length_limit:
                state = DataState.TOO_LONG
            # RFC 5321 4.5.2: a client doubled each line's leading dot; take one away.
            elif body.add(whole[1:] if whole.startswith(b".") else whole):
                await body.flush()
        fragments.clear()


def read_file_headers(path: Path, *, chunk_size: int = HEADER_CHUNK) -> MessageHeaders:
    """``read_headers`` of the message in ``path``, reading only its header section, in chunks.

    Blocking: call it in a thread. Lines are split and grouped exactly as ``read_headers`` does
    (split at CRLF, LF or a lone CR, an empty line ends the header, a line starting
    with white space folds into the last field, a line without a colon is no field), and each field
    is handed to ``read_headers`` on its own: memory is a chunk plus one field, time linear.
    """
    addresses: list[str] = []
    message_id: str | None = None
    message_id_seen = False
    field: list[bytes] = []  # the lines of the field being read, as they are in the file

    def field_done() -> None:
        nonlocal message_id, message_id_seen
        if not field:
            return
        found = read_headers(b"\n".join(field))
        addresses.extend(found.from_addresses)
        if not message_id_seen and field[0].partition(b":")[0].strip().lower() == b"message-id":
            message_id, message_id_seen = found.message_id, True  # the first one counts, as there
        field.clear()

    for line in _lines(path, chunk_size):
        if not line:
            break
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
        elif b":" in line:
            field_done()
            field.append(line)
        # else: no field (no colon); it does not end the one being folded either
    field_done()
    return MessageHeaders(from_addresses=tuple(addresses), message_id=message_id)


def _lines(path: Path, chunk_size: int) -> Iterator[bytes]:
    """The lines of the file split at CRLF, LF or a lone CR (``policy.LINE_END``, dropped), read
    ``chunk_size`` bytes at a time. A CR that ends a chunk waits for the next: it may start a CRLF.
    """
    with path.open("rb") as file:
        partial = b""
        while chunk := file.read(chunk_size):
            text = partial + chunk
            held = b"\r" if text.endswith(b"\r") else b""
            lines = LINE_END.split(text[: len(text) - len(held)])
            partial = lines.pop() + held
            yield from lines
        if partial:
            yield from LINE_END.split(partial)
