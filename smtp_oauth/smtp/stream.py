"""The message after DATA as a stream: bounded chunks, each encoded and drained before the next.

aiosmtplib's ``SMTP.data`` takes the whole message as one bytes object, copies it twice (line
ends, then dot-stuffing) and writes it in one go, so the TLS transport ends up holding all of its
ciphertext too: about four copies of a 35 MiB message. Here the message is read from a binary file
(the relay's spool file, or a ``BytesIO`` over bytes, which shares them) ``CHUNK_SIZE`` bytes at a
time, encoded exactly as aiosmtplib would encode the whole (lone CR or LF -> CRLF, a CRLF at the
end, RFC 5321 4.5.2 dot-stuffing), written, and drained before the next chunk is read.

The encoding itself and ``measure`` (RFC 1870's SIZE) are pure and live in ``wire.py``, shared with
the stdlib client. ``open_message_file`` and ``read_header_block`` are how ``Mailer.send`` takes a
message given as a path or a file. ``file_io`` runs a step on such a file off the event loop,
unless the file is a small in-memory one (what the relay's spool gives for most messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, TypeVar

from aiosmtplib import SMTPDataError, SMTPResponse, SMTPServerDisconnected, SMTPStatus, SMTPTimeoutError
from aiosmtplib.protocol import SMTPProtocol

from smtp_oauth.smtp.wire import CHUNK_SIZE, DataEncoder, measure

__all__ = [
    "CHUNK_SIZE",
    "DataEncoder",
    "MessageFile",
    "StreamingProtocol",
    "encoded_chunks",
    "file_io",
    "measure",
    "open_message_file",
    "read_header_block",
]

MessageFile = BinaryIO | os.PathLike[str]
"""A raw RFC 5322 message in a file: its path, or a seekable binary file (sent from its position)."""

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_READ_LIMIT = 1024 * 1024  # the Message-ID is looked for this far; a header is rarely 1 KiB
T = TypeVar("T")


def _small_in_memory(file: BinaryIO) -> bool:
    """An ``io.BytesIO`` with at most ``CHUNK_SIZE`` bytes in all: reading or scanning it cannot block."""
    if not isinstance(file, io.BytesIO):
        return False
    with file.getbuffer() as view:
        return view.nbytes <= CHUNK_SIZE


async def file_io(file: BinaryIO, step: Callable[[], T]) -> T:
    """``step()``, which reads, seeks or scans ``file``: in a thread (a disk may stall it), but at
    once for a small in-memory file, where it takes microseconds and a thread hop costs more (each
    hop is two wake-ups of the event loop; a relayed message from the spool took six of them).
    """
    if _small_in_memory(file):
        return step()
    return await asyncio.to_thread(step)


async def encoded_chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    """The rest of ``file`` as DATA content, the final dot included; reads and encodes in a thread."""
    encoder = DataEncoder()

    def next_piece() -> bytes | None:
        chunk = file.read(CHUNK_SIZE)
        return encoder.encode(chunk) if chunk else None

    while (piece := await file_io(file, next_piece)) is not None:
        if piece:
            yield piece
    yield encoder.finish()


@contextlib.asynccontextmanager
async def open_message_file(message: MessageFile) -> AsyncIterator[BinaryIO]:
    """The message file: a path is opened (and closed again), a file object is used as it is."""
    if not isinstance(message, os.PathLike):
        seekable = getattr(message, "seekable", None)
        if not (hasattr(message, "read") and callable(seekable) and seekable()):
            raise TypeError(
                "message must be an EmailMessage, bytes, a path or a seekable binary file, "
                f"not {type(message).__name__}"
            )
        yield message
        return
    file = await asyncio.to_thread(open, message, "rb")
    try:
        yield file
    finally:
        await asyncio.to_thread(file.close)


def read_header_block(file: BinaryIO) -> bytes:
    """The start of the message, up to its first empty line (at most 1 MiB); the file is left as it was.

    Only the envelope's checks and the Message-ID need it; the message itself is streamed later.
    """
    start = file.tell()
    head = b""
    while len(head) < _HEADER_READ_LIMIT and not _HEADER_END.search(head):
        chunk = file.read(64 * 1024)
        if not chunk:
            break
        head += chunk
    file.seek(start)
    return head


class StreamingProtocol(SMTPProtocol):
    """aiosmtplib's protocol plus a DATA command whose content is written chunk by chunk.

    ``SmtpSession`` sets this class on the protocol object ``aiosmtplib.SMTP`` creates (aiosmtplib
    has no factory hook). The method mirrors ``SMTPProtocol.execute_data_command``, with a drain
    after each chunk so that no more than a chunk and the transport's high-water mark are buffered.
    """

    async def execute_data_stream(
        self,
        chunks: AsyncIterator[bytes],
        timeout: float | None = None,  # noqa: ASYNC109  # per reply and per drain, as aiosmtplib's
    ) -> SMTPResponse:
        """DATA, the chunks (already encoded, final dot included), and the server's final reply.

        Raises SMTPDataError for a reply other than 354 / 250, SMTPTimeoutError when the server
        stops reading for ``timeout`` seconds, SMTPServerDisconnected or OSError when it goes away.
        """
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._response_pending = True
            self.write(b"DATA\r\n")
            start = await self.read_response(timeout=timeout)
            if start.code != SMTPStatus.start_input:
                raise SMTPDataError(start.code, start.message)
            # Armed while writing, so a reply the server sends early (a 5xx mid-message) is kept.
            self._response_pending = True
            async for chunk in chunks:
                self.write(chunk)
                await self._drain(timeout)
            response = await self.read_response(timeout=timeout)
            if response.code != SMTPStatus.completed:
                raise SMTPDataError(response.code, response.message)
        return response

    async def _drain(self, timeout: float | None) -> None:  # noqa: ASYNC109  # raises aiosmtplib's error
        """Wait until the transport's buffer is below its low-water mark (asyncio flow control)."""
        try:
            async with asyncio.timeout(timeout):
                await self._drain_helper()  # what StreamWriter.drain() awaits; see FlowControlMixin
        except TimeoutError as exc:
            raise SMTPTimeoutError("Timed out writing the message to the server") from exc
