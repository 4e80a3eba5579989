"""DATA received as a stream: each line goes to memory, then to a file in the spool, as it arrives.

aiosmtpd 1.4.6 collects the DATA lines in a list, joins them, and keeps the message twice
(``original_content`` and ``content``): about five copies of a 35 MiB message at the peak. The
relay's session (``session.RelaySession.smtp_DATA``) runs ``receive_data`` instead, the same loop
with the same rules, writing dot-unstuffed lines to a ``BodyWriter``:

- only CRLF "." CRLF ends DATA; a bare LF never ends a line, so "<LF>.<LF>" or "<LF>.<CR><LF>" is
  data (no smuggled second message, CVE-2023-51764 and kin);
- a line over the limit (1001 octets with its CRLF) turns the reply into 500, more octets than
  ``data_size_limit`` into 552; either way the rest is drained up to the final dot first
  (RFC 5321 4.2.5), and nothing is stored;
- a body that cannot be written (disk full, I/O error, the client's share of the disk used up)
  is drained the same way, then answered 452 or 451: what follows the failure is still message
  text, never SMTP commands (the smuggling Postfix avoids by reading on to the final dot);
- "<LF>.<LF>" (a lone dot between bare LFs) is what a bare-LF client sends to end DATA: it gets
  ``521 Error: bare <LF> received`` and the connection is closed, as Postfix's
  ``smtpd_forbid_bare_newline`` does, instead of silence until the idle timeout. Other bare-LF
  lines are accepted (and sent upstream as CRLF).

A ``BodyWriter`` keeps up to ``SPILL_AT`` bytes in memory (the spool stores such bodies in its
rows); past that, and when given a directory (the spool's ``incoming/``), it writes them to a new
file there and goes on appending in ``SPILL_AT`` pieces, off the event loop. The spool then takes
the file over (``enqueue``: SQLite renames it, PostgreSQL streams it in); whatever is not taken
is removed.

The header of a spilled body is read by ``mail/headers.read_file_headers``, 64 KiB at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = [
    "NO_SPACE_ERRNOS",
    "SPILL_AT",
    "BodyWriter",
    "DataState",
    "SpillGuard",
    "receive_data",
]

SPILL_AT = 256 * 1024  # the spool's inline limit: smaller bodies never touch a file here
PROGRESS_EVERY = 8 * 1024  # DATA octets between two restarts of the idle timer
_END_OF_DATA = b".\r\n"


class DataState(enum.Enum):
    """How DATA ended: complete, or what the reply after the final dot must refuse."""

    COMPLETE = "complete"
    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
    TOO_MUCH = "552 Error: Too much mail data"
    NO_SPACE = "452 4.3.1 Insufficient system storage"
    WRITE_FAILED = "451 4.3.0 Requested action aborted: local error in processing"
    BARE_LF = "521 5.5.2 Error: bare <LF> received"  # then the connection is closed

    @property
    def closes(self) -> bool:
        """Whether the connection is closed after this reply."""
        return self is DataState.BARE_LF


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class SpillGuard(Protocol):
    """Who may write how much of a body to disk (``limits.ClientBytes`` and ``limits.FreeSpace``)."""

    async def take(self, size: int) -> None:
        """Charge ``size`` bytes about to be written; OSError (ENOSPC, EDQUOT, ...) to refuse them."""
        ...

    def give_back(self, size: int) -> None:
        """The transfer ended: what it was charged no longer counts."""
        ...

    def check_space(self) -> None:
        """OSError(ENOSPC) if the disk is too full to write more. Blocking: runs in the writer's thread."""
        ...


class BodyWriter:
    """The body being received: in memory up to ``spill_at`` bytes, then in a file in ``directory``.

    ``directory=None`` keeps everything in memory (a listener without a spool, in tests).
    """

    def __init__(
        self, directory: Path | None, *, spill_at: int = SPILL_AT, guard: SpillGuard | None = None
    ) -> None:
        self.size = 0
        self.path: Path | None = None
        self.error: OSError | None = None  # why writing failed, once it has
        self._guard = guard
        self._charged = 0
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
        if self._guard is not None:
            await self._guard.take(len(data))
            self._charged += len(data)
        self._buffer = io.BytesIO()
        await asyncio.to_thread(self._write, self.path, data)

    def _write(self, path: Path, data: bytes) -> None:
        if self._guard is not None:
            self._guard.check_space()
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
        self.release()
        if self.path is not None:
            asyncio.get_running_loop().run_in_executor(None, self._remove, self.path)

    def release(self) -> None:
        """The transfer is over (stored or dropped): give back what it was charged."""
        if self._guard is not None and self._charged:
            self._guard.give_back(self._charged)
        self._charged = 0

    def _remove(self, path: Path) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(OSError):  # never created (the failure this cleans up after)
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

    The lines already in ``reader``'s buffer are taken together (``_DataLines.take_buffered``):
    one await for them instead of one each, about 160 for 10 KB. They are the lines
    ``readuntil(b"\\n")`` would have returned one by one, and nothing after the final dot is taken.
    """
    lines = _DataLines(body, size_limit=size_limit, line_length_limit=line_length_limit, progress=progress)
    while True:
        taken, outcome = lines.take_buffered(reader)
        if taken:
            await reader.readexactly(taken)  # what take_buffered read, already buffered: no wait
        if outcome is None:  # nothing whole in the buffer: the next line, waiting for it
            try:
                # RFC 5321 2.3.8: CRLF and nothing else ends a line. Reading up to each LF still
                # finds CRLF, and also sees the lines a bare-LF client ends with LF alone.
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                lines.overrun()
                line = await reader.read(exc.consumed)  # drain the overlong line in pieces
            outcome = lines.step(line)
        if outcome is _FLUSH:
            lines.state = await _flush(body)
        elif isinstance(outcome, DataState):
            return outcome


_FLUSH = object()  # _DataLines.step: the body's memory part is full, write it before the next line


class _DataLines:
    """The DATA loop's state, fed one line at a time (the bytes up to and including an LF)."""

    def __init__(
        self,
        body: BodyWriter,
        *,
        size_limit: int | None,
        line_length_limit: int,
        progress: Callable[[], None] | None,
    ) -> None:
        self.body = body
        self.state = DataState.COMPLETE
        self._size_limit = size_limit
        self._line_length_limit = line_length_limit
        self._progress = progress
        self._received = 0
        self._progress_at = PROGRESS_EVERY
        self._fragments: list[bytes] = []
        self._after_bare_lf = True  # the DATA command's line has ended; ".<LF>" may come now

    def overrun(self) -> None:
        """The next line is longer than the reader's limit: it comes in pieces, and is refused."""
        if self.state is DataState.COMPLETE:
            self.state = DataState.TOO_LONG

    def _count(self, size: int) -> None:
        """``size`` more octets received: the idle timer restarted each PROGRESS_EVERY, 552 past the limit."""
        self._received += size
        if self._progress is not None and self._received >= self._progress_at:
            self._progress()
            self._progress_at = self._received + PROGRESS_EVERY
        if self.state is DataState.COMPLETE and self._size_limit and self._received > self._size_limit:
            self.state = DataState.TOO_MUCH

    def step(self, line: bytes) -> DataState | object | None:
        """Take ``line``: how DATA ended (a DataState), _FLUSH, or None to go on."""
        fragments = self._fragments
        if not fragments and line == _END_OF_DATA:
            return self.state
        if self._after_bare_lf and line == b".\n":
            return DataState.BARE_LF  # nothing is stored: the client meant "<LF>.<LF>" as the end
        # A drained overlong line may have been cut between its CR and its LF.
        ends_crlf = line.endswith(b"\r\n") or (
            line == b"\n" and bool(fragments) and fragments[-1][-1:] == b"\r"
        )
        self._after_bare_lf = line.endswith(b"\n") and not ends_crlf
        self._count(len(line))
        if self.state is DataState.COMPLETE and len(line) > self._line_length_limit:
            self.state = DataState.TOO_LONG  # a bare-LF line counts as a line of its own
        if not ends_crlf:
            fragments.append(line)
            return None
        whole = b"".join((*fragments, line)) if fragments else line
        fragments.clear()
        if self.state is not DataState.COMPLETE:
            return None
        # RFC 5321 4.5.2: a client doubled each line's leading dot; take one away.
        return _FLUSH if self.body.add(whole[1:] if whole[:1] == b"." else whole) else None

    def take_buffered(self, reader: asyncio.StreamReader) -> tuple[int, DataState | object | None]:
        """Step through the whole lines in ``reader``'s buffer without reading them: (octets to
        read now, the last step's outcome); (0, None) when there is no whole line to take.

        Stops after a line whose outcome is not None (the end, a flush), and before a line longer
        than the reader's limit (``readuntil`` refuses it in pieces, and so the slow path does).
        """
        # asyncio's own buffer and limit (tests/test_dependency_internals pins both); without
        # them every line takes the slow path.
        buffer = getattr(reader, "_buffer", None)
        if not isinstance(buffer, bytearray) or self._fragments:
            return 0, None
        limit = getattr(reader, "_limit", None)  # readuntil's: a separator further than this overruns
        if not isinstance(limit, int):
            return 0, None
        start, flush = self._take_block(buffer)
        if flush:
            return start, _FLUSH
        while (end := buffer.find(b"\n", start)) >= 0 and end - start <= limit:
            outcome = self.step(bytes(buffer[start : end + 1]))
            start = end + 1
            if outcome is not None:
                return start, outcome
        return start, (None if start == 0 else _NOTHING)

    def _take_block(self, buffer: bytearray) -> tuple[int, bool]:
        """Take the whole lines at the front of ``buffer`` in one piece, as ``step`` would one by
        one, when none of them needs a line's care: (octets taken, whether a flush is due).

        Such a block ends with CRLF, holds no bare LF and no line over the limit, and stops before
        the final dot (CRLF "." CRLF, or "." CRLF at its very start): ``step`` then takes each of
        its lines whole, and unstuffing a line-leading dot is one ``replace``. Anything else (0, False)
        is left to ``step``. A 10 KB message is one block instead of ~160 steps.
        """
        if self.state is not DataState.COMPLETE or buffer.startswith(_END_OF_DATA):
            return 0, False
        end = buffer.find(b"\r\n" + _END_OF_DATA)
        stop = end + 2 if end >= 0 else buffer.rfind(b"\r\n") + 2
        if stop < 2:  # no CRLF in the buffer: not one whole line
            return 0, False
        block = bytes(buffer[:stop])
        if block.count(b"\n") != block.count(b"\r\n"):
            return 0, False  # a bare LF: "<LF>.<LF>" and the fragments are step's to judge
        if len(block) > self._line_length_limit and (
            max(map(len, block.split(b"\n"))) >= self._line_length_limit  # the LF makes one more
        ):
            return 0, False  # an overlong line: refused with 500 by step
        self._after_bare_lf = False
        self._count(stop)
        if self.state is not DataState.COMPLETE:  # over the size limit: drained, not stored
            return stop, False
        # RFC 5321 4.5.2: the client doubled each line-leading dot; every line starts at the
        # block's start or after a CRLF.
        data = block[1:] if block[:1] == b"." else block
        return stop, self.body.add(data.replace(b"\r\n.", b"\r\n"))


_NOTHING = object()  # take_buffered took lines and DATA goes on


async def _flush(body: BodyWriter) -> DataState:
    """Write what ``body`` holds; on failure the state that drains the rest and answers 452/451."""
    try:
        await body.flush()
    except OSError as exc:
        body.error = exc
        return DataState.NO_SPACE if exc.errno in NO_SPACE_ERRNOS else DataState.WRITE_FAILED
    return DataState.COMPLETE
