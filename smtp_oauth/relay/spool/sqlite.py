"""``SqliteSpool``: the relay's queue in one SQLite file (a ``Spool``, see ``base.py``).

SQLite runs on its own thread with group commit (``sqlite_db.py``). Bodies up to
``inline_limit`` live in the row; larger ones in ``data/<id>.eml``, written and fsynced before the
row commits, so a 35 MiB message is never copied through SQLite's page cache and never held twice
in memory by the spool. Delivered messages lose their body at once and keep their row (for
``smtp-oauth queue``) until ``prune``.

The listener streams big bodies into ``incoming/`` (the ``staging_dir``) as they arrive;
``enqueue`` fsyncs such a file and renames it to ``data/<id>.eml`` before the row commits (no
copy: same file system). Files left in ``incoming/`` by a relay killed mid-receive are removed by
``recover``. sqlite3 and OS errors leave as ``SpoolError``; the WAL is checkpointed after a prune
and every ``CHECKPOINT_INTERVAL`` seconds of writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import io
import json
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Self

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.files import write_private
from smtp_oauth.relay.spool.base import (
    STATES,
    ClaimBook,
    Message,
    MessageGone,
    QueueState,
    SpooledMessage,
    SpoolError,
    new_queue_id,
)
from smtp_oauth.relay.spool.sqlite_db import SqliteDatabase, spool_error

__all__ = ["SqliteSpool", "incoming_directory"]

CHECKPOINT_INTERVAL = 300.0  # seconds between WAL checkpoints while the relay writes

INLINE_LIMIT = 256 * 1024  # bodies above this go to data/<id>.eml
INCOMING = "incoming"  # bodies being received, not yet enqueued
SCHEMA_VERSION = 1
WRITE_LOCK = "write.lock"  # flocked by every writer around its transactions (sqlite_db.py)
_INSERT = (
    "INSERT INTO messages (id, state, local_user, mailbox, mail_from, rcpt_tos, message_id, peer, "
    "size, body, body_in_file, next_attempt_at, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    local_user TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_tos TEXT NOT NULL,             -- JSON list of addresses
    message_id TEXT,
    peer TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    body BLOB,                          -- inline body; NULL when in a file or dropped
    body_in_file INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_reply TEXT NOT NULL DEFAULT '',
    refused TEXT NOT NULL DEFAULT '{}', -- JSON {address: [code, text]}
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, mailbox, next_attempt_at);
"""

_COLUMNS = (
    "id, state, local_user, mailbox, mail_from, rcpt_tos, message_id, peer, size, attempts, "
    "next_attempt_at, last_reply, refused, created_at, updated_at"
)


def _row_to_message(row: sqlite3.Row) -> SpooledMessage:
    refused = {addr: (int(code), str(text)) for addr, (code, text) in json.loads(row["refused"]).items()}
    return SpooledMessage(
        id=row["id"],
        state=row["state"],
        local_user=row["local_user"],
        mailbox=row["mailbox"],
        mail_from=row["mail_from"],
        rcpt_tos=list(json.loads(row["rcpt_tos"])),
        message_id=row["message_id"],
        peer=row["peer"],
        size=row["size"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_reply=row["last_reply"],
        refused=refused,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _fsync(path: Path) -> None:
    """fsync a file, or a directory to make a new entry in it durable (POSIX: the file's is not enough)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def incoming_directory(spool_dir: Path) -> Path:
    """Where the listener writes big bodies while they arrive (``RelayListener(incoming_dir=...)``)."""
    return spool_dir / INCOMING


def _take_over(source: Path, path: Path) -> None:
    """Make the received file ``source`` durable and move it to ``path``: a rename when it is on
    the spool's file system (``staging_dir`` is), a copy otherwise."""
    _fsync(source)
    try:
        source.replace(path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        _fsync(tmp)
        tmp.replace(path)
        source.unlink(missing_ok=True)
    _fsync(path.parent)


def _row_values(queue_id: str, message: Message, inline: bytes | None) -> tuple[Any, ...]:
    """The ``_INSERT`` values of a new queued message; ``inline``: its body in the row (None: in
    ``data/<id>.eml``)."""
    now = time.time()
    return (
        queue_id,
        "queued",
        message.local_user,
        message.mailbox,
        message.mail_from,
        json.dumps(list(message.rcpt_tos)),
        message.message_id,
        message.peer,
        message.size,
        inline,
        int(inline is None),
        now,
        now,
        now,
    )


class SqliteSpool:
    """``Spool`` on one SQLite file (``spool_dir/queue.sqlite3``) plus ``spool_dir/data/``.

    Open with ``await SqliteSpool.open(directory)``. ``exclusive=True`` (the relay) also takes
    ``spool_dir/relay.lock`` so that two relays never deliver from one spool; ``smtp-oauth queue``
    opens it without the lock while the relay runs.
    """

    def __init__(self, directory: Path, db: SqliteDatabase, lock_fd: int | None) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.inline_limit = INLINE_LIMIT
        self._db = db
        self._lock_fd = lock_fd
        self._last_checkpoint = time.monotonic()
        self._book = ClaimBook()

    @property
    def staging_dir(self) -> Path:
        return incoming_directory(self.directory)

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing to watch: the relay wakes its delivery itself; other processes' changes
        (`smtp-oauth queue retry`) are noticed by delivery's poll."""

    @classmethod
    async def open(cls, directory: Path, *, exclusive: bool = False, create: bool = True) -> Self:
        """Open (and create, unless ``create=False``: FileNotFoundError) the spool in ``directory``."""
        database = directory / "queue.sqlite3"
        try:
            # Path.exists() raises for EACCES: the spool is 0700, and `queue` may run as another user.
            absent = not create and not database.exists()
        except OSError as exc:
            raise _cannot_open(directory, exc) from exc
        if absent:
            raise FileNotFoundError(str(database))
        lock_fd = None
        try:
            await asyncio.to_thread(_make_private, directory, database)
            if exclusive:
                lock_fd = await asyncio.to_thread(_take_lock, directory)
            db = await SqliteDatabase.open(
                database, schema=_SCHEMA, user_version=SCHEMA_VERSION, write_lock=directory / WRITE_LOCK
            )
        except (OSError, sqlite3.Error, SpoolError) as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise _cannot_open(directory, exc) from exc
        return cls(directory, db, lock_fd)

    async def enqueue(self, message: Message) -> str:
        queue_id = new_queue_id()
        data = message.data
        path = self.data_dir / f"{queue_id}.eml"
        in_file = isinstance(data, Path) or len(data) > self.inline_limit
        try:
            if isinstance(data, Path):
                await asyncio.to_thread(_take_over, data, path)
            elif in_file:
                await asyncio.to_thread(write_private, path, data)
        except OSError as exc:
            await self._unlink_body(queue_id)
            raise spool_error(exc, f"writing the body of a message of {message.local_user!r}") from exc
        values = _row_values(queue_id, message, None if isinstance(data, Path) or in_file else data)
        try:
            await self._db.insert(_INSERT, values)
        except SpoolError:
            if in_file:
                await self._unlink_body(queue_id)
            raise
        await self._maybe_checkpoint()
        return queue_id

    async def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (``PRAGMA wal_checkpoint(TRUNCATE)``)."""
        self._last_checkpoint = time.monotonic()
        await self._db.call(lambda _: self._db.checkpoint_now())

    # -- delivery -----------------------------------------------------------------------------

    async def recover(self) -> int:
        _, count = await self._db.write(
            "UPDATE messages SET state = 'queued', updated_at = ? WHERE state = 'sending'", (time.time(),)
        )
        known = {row["id"] for row in await self._db.query("SELECT id FROM messages WHERE body_in_file = 1")}
        try:
            await asyncio.to_thread(self._remove_orphan_files, known)
        except OSError as exc:
            raise spool_error(exc, "removing bodies no queue entry refers to") from exc
        return count

    def _remove_orphan_files(self, known: set[str]) -> None:
        """Bodies whose row never committed (killed between fsync and COMMIT) or was deleted, and
        bodies a killed relay was still receiving (never acknowledged)."""
        for path in self.data_dir.iterdir():
            if path.suffix == ".tmp" or (path.suffix == ".eml" and path.stem not in known):
                path.unlink(missing_ok=True)
        incoming = incoming_directory(self.directory)
        if incoming.is_dir():
            for path in incoming.iterdir():
                path.unlink(missing_ok=True)

    async def pending_by_mailbox(self) -> dict[str, float]:
        if self._book.suspect:
            await self._adopt_strays()
        rows = await self._db.query(
            "SELECT mailbox, MIN(next_attempt_at) AS due FROM messages "
            "WHERE state IN ('queued', 'deferred') GROUP BY mailbox"
        )
        return {row["mailbox"]: row["due"] for row in rows}

    async def _adopt_strays(self) -> None:
        """``sending`` rows that delivery does not hold (a claim cancelled or failed after its
        UPDATE ran on the database thread): back to queued (``ClaimBook``)."""
        self._book.suspect = False
        stamped_before, held = self._book.adoptable()
        try:
            rows, _ = await self._db.write(
                "UPDATE messages SET state = 'queued', updated_at = ? WHERE state = 'sending' "
                "AND updated_at < ? AND id NOT IN (SELECT value FROM json_each(?)) RETURNING id",
                (time.time(), stamped_before, json.dumps(held)),
                durable=False,
            )
        except BaseException:
            self._book.suspect = True
            raise
        for row in rows:
            self._book.settled(row["id"])

    async def claim_due(self, mailbox: str, limit: int = 1) -> list[SpooledMessage]:
        with self._book.claiming() as stamp:
            rows = await self._claim_rows(mailbox, limit, stamp)
            self._book.took(row["id"] for row in rows)
        return sorted((_row_to_message(row) for row in rows), key=lambda m: m.next_attempt_at)

    async def _claim_rows(self, mailbox: str, limit: int, stamp: float) -> list[sqlite3.Row]:
        """The claim's one UPDATE; ``stamp`` (``ClaimBook``) is its time and its mark."""
        rows, _ = await self._db.write(
            "UPDATE messages SET state = 'sending', updated_at = ? WHERE id IN ("  # noqa: S608  # fixed SQL
            " SELECT id FROM messages WHERE state IN ('queued', 'deferred') AND mailbox = ?"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?)"
            f" RETURNING {_COLUMNS}",
            (stamp, mailbox, stamp, limit),
            durable=False,  # a claim lost in a crash is what recover() does anyway
        )
        return rows

    @contextlib.asynccontextmanager
    async def open_body(self, queue_id: str) -> AsyncIterator[BinaryIO]:
        rows = await self._db.query("SELECT body, body_in_file FROM messages WHERE id = ?", (queue_id,))
        if not rows:
            raise MessageGone(f"queue entry {queue_id} does not exist")
        if not rows[0]["body_in_file"]:
            if rows[0]["body"] is None:
                raise MessageGone(f"queue entry {queue_id} has no body any more")
            yield io.BytesIO(rows[0]["body"])
            return
        path = self.data_dir / f"{queue_id}.eml"
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise MessageGone(f"queue entry {queue_id} has lost its body file {path.name}") from None
        except OSError as exc:
            raise spool_error(exc, f"opening the body of {queue_id}") from exc
        try:
            yield file
        finally:
            await asyncio.to_thread(file.close)

    async def mark_delivered(
        self,
        queue_id: str,
        *,
        reply: str,
        refused: dict[str, tuple[int, str]] | None = None,
        report: Message | None = None,
    ) -> str | None:
        # The body is dropped at once: a delivered message is kept only as a record.
        in_file, report_id = await self._finish(
            queue_id,
            "state = 'delivered', attempts = attempts + 1, last_reply = ?, refused = ?, body = NULL",
            (reply, json.dumps(refused or {})),
            report=report,
        )
        if in_file:
            await self._unlink_body(queue_id)
        return report_id

    async def mark_deferred(self, queue_id: str, *, next_attempt_at: float, reply: str) -> None:
        await self._finish(
            queue_id,
            "state = 'deferred', attempts = attempts + 1, last_reply = ?, next_attempt_at = ?",
            (reply, next_attempt_at),
        )

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
        # One UPDATE: the recipients that took the message never get it twice, whenever a crash comes.
        _, report_id = await self._finish(
            queue_id,
            "state = 'deferred', attempts = attempts + 1, rcpt_tos = ?, last_reply = ?, refused = ?, "
            "next_attempt_at = ?",
            (json.dumps(remaining), reply, json.dumps(refused), next_attempt_at),
            report=report,
        )
        return report_id

    async def mark_dead(self, queue_id: str, *, reply: str, report: Message | None = None) -> str | None:
        _, report_id = await self._finish(
            queue_id, "state = 'dead', attempts = attempts + 1, last_reply = ?", (reply,), report=report
        )
        return report_id

    async def release(self, queue_id: str) -> None:
        await self._finish(queue_id, "state = 'queued'", (), durable=False)

    async def _finish(
        self,
        queue_id: str,
        assignments: str,
        params: tuple[Any, ...],
        *,
        durable: bool = True,
        report: Message | None = None,
    ) -> tuple[bool, str | None]:
        """Update a message we claimed and queue its ``report`` in the same transaction (a crash
        loses neither or both); (its body lives in a file, the report's queue id). A row deleted
        meanwhile (``smtp-oauth queue delete``) is left deleted, and gets no report."""
        report_id = new_queue_id() if report is not None else None

        def run(db: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = db.execute(
                f"UPDATE messages SET {assignments}, updated_at = ? "  # noqa: S608  # fixed SQL of ours
                "WHERE id = ? AND state = 'sending' RETURNING body_in_file",
                (*params, time.time(), queue_id),
            ).fetchall()
            if rows and report is not None and report_id is not None:
                self._queue_report_now(db, report_id, report)
            return rows

        # durable=False: a release lost in a crash is what recover() does anyway.
        rows = await self._db.transaction(run, durable=durable)
        self._book.settled(queue_id)
        return bool(rows and rows[0]["body_in_file"]), report_id if rows else None

    def _queue_report_now(self, db: sqlite3.Connection, report_id: str, report: Message) -> None:
        """On the database thread, inside the transaction recording the failure: queue the report.
        Its body goes in the row: a report is small (the original's header, 64 KiB at most)."""
        if not isinstance(report.data, bytes):
            raise SpoolError("a non-delivery report must be given as bytes", temporary=False)
        db.execute(_INSERT, _row_values(report_id, report, report.data))

    async def _unlink_body(self, queue_id: str) -> None:
        """Remove a body file; one that cannot be removed is left for recover() (an orphan)."""
        path = self.data_dir / f"{queue_id}.eml"
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    # -- administration (`smtp-oauth queue`) ----------------------------------------------------

    async def list(self, states: Iterable[QueueState] | None = None) -> list[SpooledMessage]:
        wanted = list(states) if states is not None else list(STATES)
        marks = ", ".join("?" for _ in wanted)
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM messages WHERE state IN ({marks}) ORDER BY id",  # noqa: S608
            wanted,
        )
        return [_row_to_message(row) for row in rows]

    async def get(self, queue_id: str) -> SpooledMessage | None:
        rows = await self._db.query(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (queue_id,))  # noqa: S608
        return _row_to_message(rows[0]) if rows else None

    async def retry(self, queue_id: str | None = None) -> int:
        now = time.time()
        if queue_id is None:
            _, count = await self._db.write(
                "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ? "
                "WHERE state = 'deferred'",
                (now, now),
            )
            return count
        _, count = await self._db.write(
            "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'deferred', 'dead') "
            "AND (body IS NOT NULL OR body_in_file = 1)",
            (now, now, queue_id),
        )
        return count

    async def delete(self, queue_id: str) -> bool:
        rows, _ = await self._db.write(
            "DELETE FROM messages WHERE id = ? RETURNING body_in_file", (queue_id,)
        )
        if not rows:
            return False
        if rows[0]["body_in_file"]:
            await self._unlink_body(queue_id)
        return True

    async def counts_by_state(self) -> dict[QueueState, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in await self._db.query("SELECT state, COUNT(*) AS n FROM messages GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    async def prune(self, *, older_than: float) -> int:
        # Delivered bodies are already gone (mark_delivered), so only rows are left to forget.
        _, count = await self._db.write(
            "DELETE FROM messages WHERE state = 'delivered' AND updated_at < ?", (older_than,)
        )
        await self.checkpoint()  # else the WAL keeps the pages the deleted rows took
        return count

    async def figures(self) -> dict[str, float]:
        """The WAL's size: it should stay small (checkpoints), a growing one means a stuck reader."""
        wal = self.directory / "queue.sqlite3-wal"
        try:
            size = (await asyncio.to_thread(wal.stat)).st_size
        except OSError:
            size = 0
        return {"spool_wal_bytes": float(size)}

    async def close(self) -> None:
        await self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _cannot_open(directory: Path, exc: OSError | sqlite3.Error | SpoolError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot open the relay spool in {directory}: {getattr(exc, 'strerror', None) or exc}",
        key="relay.spool_dir",
        hint="Check that relay.spool_dir exists and that this user may read and write it: the spool is "
        "private to the relay's user, so run `smtp-oauth queue` as that user (e.g. sudo -u smtp-oauth).",
    )


def _make_private(directory: Path, database: Path) -> None:
    """Create the spool directories 0700 and the database file 0600 before SQLite opens it.

    The ``-wal`` and ``-shm`` files hold message bodies too, and SQLite creates them with the mode of
    the database file at that moment: a database made under the usual umask (0644) and tightened
    afterwards would leave a world-readable WAL in a world-readable directory.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "data").mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for path in (
        database,
        database.with_name(f"{database.name}-wal"),
        database.with_name(f"{database.name}-shm"),
    ):
        with contextlib.suppress(OSError):  # absent, or owned by another user (`sudo smtp-oauth queue`)
            path.chmod(0o600)


def _take_lock(directory: Path) -> int:
    """An exclusive flock on ``relay.lock``, held (by the open fd) while the relay runs."""
    fd = os.open(directory / "relay.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigurationError(
            f"another relay is already using the spool in {directory}",
            key="relay.spool_dir",
            hint="Stop the other relay, or give this one its own relay.spool_dir.",
        ) from None
    return fd
