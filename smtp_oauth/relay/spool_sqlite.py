"""``SqliteSpool``: the relay's queue in one SQLite file (the ``Spool`` of ``relay/spool.py``).

SQLite runs on one dedicated thread, never on the event loop. Concurrent ``enqueue`` calls are
committed together (group commit: one fsync covers every message that arrived while the previous
one was being written), which is how the relay keeps up with a sink that fsyncs each message on
its own. Bodies up to ``inline_limit`` live in the row; larger ones in ``data/<id>.eml``, written
and fsynced before the row commits, so a 35 MiB message is never copied through SQLite's page
cache and never held twice in memory by the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.spool import STATES, IncomingMessage, QueueState, SpooledMessage, new_queue_id

__all__ = ["SqliteSpool"]

T = TypeVar("T")

INLINE_LIMIT = 256 * 1024  # bodies above this go to data/<id>.eml
BUSY_TIMEOUT_MS = 10_000  # `smtp-oauth queue` and the relay share the file
SCHEMA_VERSION = 1

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


def _fsync_directory(path: Path) -> None:
    """Make a new directory entry durable (POSIX: fsync the file is not enough)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    _fsync_directory(path.parent)


@dataclass
class _PendingInsert:
    values: tuple[Any, ...]
    future: asyncio.Future[str]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class SqliteSpool:
    """``Spool`` on one SQLite file (``spool_dir/queue.sqlite3``) plus ``spool_dir/data/``.

    Open with ``await SqliteSpool.open(directory)``. ``exclusive=True`` (the relay) also takes
    ``spool_dir/relay.lock`` so that two relays never deliver from one spool; ``smtp-oauth queue``
    opens it without the lock while the relay runs.
    """

    def __init__(self, directory: Path, *, inline_limit: int = INLINE_LIMIT) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.inline_limit = inline_limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pending: list[_PendingInsert] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False

    @classmethod
    async def open(cls, directory: Path, *, exclusive: bool = False, create: bool = True) -> SqliteSpool:
        """Open (and create, unless ``create=False``) the spool in ``directory``."""
        spool = cls(directory)
        try:
            await spool._call(lambda: spool._open_sync(exclusive=exclusive, create=create))
        except BaseException:
            spool._executor.shutdown(wait=False)
            raise
        return spool

    def _open_sync(self, *, exclusive: bool, create: bool) -> None:
        database = self.directory / "queue.sqlite3"
        if not create and not database.exists():
            raise FileNotFoundError(str(database))
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if exclusive:
                self._lock_fd = self._take_lock()
            conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open the relay spool in {self.directory}: {exc.strerror or exc}",
                key="relay.spool_dir",
                hint="Check that relay.spool_dir exists and is writable by the relay's user.",
            ) from exc
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the 250 after DATA is a durability promise
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with contextlib.suppress(OSError):
            (self.directory / "queue.sqlite3").chmod(0o600)
        self._conn = conn

    def _take_lock(self) -> int:
        lock_path = self.directory / "relay.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(
                f"another relay is already using the spool in {self.directory}",
                key="relay.spool_dir",
                hint="Stop the other relay, or give this one its own relay.spool_dir.",
            ) from None
        return fd

    async def _call(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the spool is closed")
        return self._conn

    def _write(
        self, sql: str, params: Sequence[Any] = (), *, durable: bool = True
    ) -> tuple[list[sqlite3.Row], int]:
        """One statement in its own IMMEDIATE transaction; (RETURNING rows, rowcount).

        Rows are fetched before COMMIT: SQLite refuses to commit under an unfinished statement.
        ``durable=False`` skips the fsync (a claim lost in a crash is what recover() does anyway);
        the next durable commit makes it durable too, since WAL frames are synced in order.
        """
        db = self._db
        if not durable:
            db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(sql, params)
            rows = cursor.fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            if not durable:
                db.execute("PRAGMA synchronous = FULL")
        return rows, cursor.rowcount

    # -- enqueue (group commit) ---------------------------------------------------------------

    async def enqueue(self, message: IncomingMessage) -> str:
        queue_id = new_queue_id()
        data = message.data
        in_file = len(data) > self.inline_limit
        if in_file:
            await asyncio.to_thread(_write_durably, self.data_dir / f"{queue_id}.eml", data)
        now = time.time()
        values = (
            queue_id,
            "queued",
            message.local_user,
            message.mailbox,
            message.mail_from,
            json.dumps(list(message.rcpt_tos)),
            message.message_id,
            message.peer,
            len(data),
            None if in_file else data,
            int(in_file),
            now,
            now,
            now,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        with self._pending_lock:
            self._pending.append(_PendingInsert(values, future, loop))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._executor.submit(self._flush_pending)
        try:
            # Shielded: once handed to the writer the row commits even if the client goes away.
            return await asyncio.shield(future)
        except sqlite3.Error:
            if in_file:
                await asyncio.to_thread((self.data_dir / f"{queue_id}.eml").unlink, missing_ok=True)
            raise

    def _flush_pending(self) -> None:
        """Commit every enqueue that arrived since the last flush in one transaction."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        if not batch:
            return
        error: BaseException | None = None
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO messages (id, state, local_user, mailbox, mail_from, rcpt_tos, "
                    "message_id, peer, size, body, body_in_file, next_attempt_at, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [item.values for item in batch],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = exc
        for item in batch:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                item.loop.call_soon_threadsafe(_settle, item.future, str(item.values[0]), error)

    # -- delivery -----------------------------------------------------------------------------

    async def recover(self) -> int:
        def run() -> int:
            now = time.time()
            _, count = self._write(
                "UPDATE messages SET state = 'queued', updated_at = ? WHERE state = 'sending'", (now,)
            )
            self._remove_orphan_files()
            return count

        return await self._call(run)

    def _remove_orphan_files(self) -> None:
        """Bodies whose row never committed (killed between fsync and COMMIT) or was deleted."""
        known = {row["id"] for row in self._db.execute("SELECT id FROM messages WHERE body_in_file = 1")}
        for path in self.data_dir.iterdir():
            if path.suffix == ".tmp" or (path.suffix == ".eml" and path.stem not in known):
                path.unlink(missing_ok=True)

    async def pending_by_mailbox(self) -> dict[str, float]:
        def run() -> dict[str, float]:
            rows = self._db.execute(
                "SELECT mailbox, MIN(next_attempt_at) AS due FROM messages "
                "WHERE state IN ('queued', 'deferred') GROUP BY mailbox"
            )
            return {row["mailbox"]: row["due"] for row in rows}

        return await self._call(run)

    async def claim_due(self, mailbox: str, limit: int = 1) -> list[SpooledMessage]:
        def run() -> list[SpooledMessage]:
            now = time.time()
            rows, _ = self._write(
                "UPDATE messages SET state = 'sending', updated_at = ? WHERE id IN ("  # noqa: S608  # fixed SQL
                " SELECT id FROM messages WHERE state IN ('queued', 'deferred') AND mailbox = ?"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?)"
                f" RETURNING {_COLUMNS}",
                (now, mailbox, now, limit),
                durable=False,
            )
            return sorted((_row_to_message(row) for row in rows), key=lambda m: m.next_attempt_at)

        return await self._call(run)

    async def read_data(self, queue_id: str) -> bytes:
        row = await self._call(
            lambda: self._db.execute(
                "SELECT body, body_in_file FROM messages WHERE id = ?", (queue_id,)
            ).fetchone()
        )
        if row is None:
            raise FileNotFoundError(f"queue entry {queue_id} does not exist")
        if row["body_in_file"]:
            return await asyncio.to_thread((self.data_dir / f"{queue_id}.eml").read_bytes)
        if row["body"] is None:
            raise FileNotFoundError(f"queue entry {queue_id} has no body any more")
        return bytes(row["body"])

    async def mark_delivered(
        self, queue_id: str, *, reply: str, refused: dict[str, tuple[int, str]] | None = None
    ) -> None:
        # The body is dropped at once: a delivered message is kept only as a record.
        in_file = await self._finish(
            queue_id,
            "state = 'delivered', attempts = attempts + 1, last_reply = ?, refused = ?, body = NULL",
            (reply, json.dumps(refused or {})),
        )
        if in_file:
            await self._unlink_body(queue_id)

    async def mark_deferred(self, queue_id: str, *, next_attempt_at: float, reply: str) -> None:
        await self._finish(
            queue_id,
            "state = 'deferred', attempts = attempts + 1, last_reply = ?, next_attempt_at = ?",
            (reply, next_attempt_at),
        )

    async def mark_dead(self, queue_id: str, *, reply: str) -> None:
        await self._finish(queue_id, "state = 'dead', attempts = attempts + 1, last_reply = ?", (reply,))

    async def release(self, queue_id: str) -> None:
        await self._finish(queue_id, "state = 'queued'", ())

    async def _finish(self, queue_id: str, assignments: str, params: tuple[Any, ...]) -> bool:
        """Update a message we claimed; True if its body lives in a file. A row deleted meanwhile
        (``smtp-oauth queue delete``) is left deleted."""

        def run() -> bool:
            rows, _ = self._write(
                f"UPDATE messages SET {assignments}, updated_at = ? "  # noqa: S608  # fixed SQL of ours
                "WHERE id = ? AND state = 'sending' RETURNING body_in_file",
                (*params, time.time(), queue_id),
            )
            return bool(rows and rows[0]["body_in_file"])

        return await self._call(run)

    async def _unlink_body(self, queue_id: str) -> None:
        path = self.data_dir / f"{queue_id}.eml"
        await asyncio.to_thread(path.unlink, missing_ok=True)

    # -- administration (`smtp-oauth queue`) ----------------------------------------------------

    async def list(self, states: Iterable[QueueState] | None = None) -> list[SpooledMessage]:
        wanted = list(states) if states is not None else list(STATES)

        def run() -> list[SpooledMessage]:
            marks = ", ".join("?" for _ in wanted)
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE state IN ({marks}) ORDER BY id",  # noqa: S608
                wanted,
            )
            return [_row_to_message(row) for row in rows]

        return await self._call(run)

    async def get(self, queue_id: str) -> SpooledMessage | None:
        def run() -> SpooledMessage | None:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (queue_id,)).fetchone()  # noqa: S608
            return _row_to_message(row) if row else None

        return await self._call(run)

    async def retry(self, queue_id: str | None = None) -> int:
        def run() -> int:
            now = time.time()
            params: tuple[Any, ...]
            if queue_id is None:
                sql, params = (
                    "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ? "
                    "WHERE state = 'deferred'",
                    (now, now),
                )
            else:
                sql, params = (
                    "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ? "
                    "WHERE id = ? AND state IN ('queued', 'deferred', 'dead') "
                    "AND (body IS NOT NULL OR body_in_file = 1)",
                    (now, now, queue_id),
                )
            return self._write(sql, params)[1]

        return await self._call(run)

    async def delete(self, queue_id: str) -> bool:
        rows, _ = await self._call(
            lambda: self._write("DELETE FROM messages WHERE id = ? RETURNING body_in_file", (queue_id,))
        )
        if not rows:
            return False
        if rows[0]["body_in_file"]:
            await self._unlink_body(queue_id)
        return True

    async def counts_by_state(self) -> dict[QueueState, int]:
        def run() -> dict[QueueState, int]:
            counts = dict.fromkeys(STATES, 0)
            for row in self._db.execute("SELECT state, COUNT(*) AS n FROM messages GROUP BY state"):
                counts[row["state"]] = row["n"]
            return counts

        return await self._call(run)

    async def prune(self, *, older_than: float) -> int:
        # Delivered bodies are already gone (mark_delivered), so only rows are left to forget.
        _, count = await self._call(
            lambda: self._write(
                "DELETE FROM messages WHERE state = 'delivered' AND updated_at < ?", (older_than,)
            )
        )
        return count

    async def close(self) -> None:
        def run() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        if not self._closed:
            self._closed = True
            await self._call(run)
            self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future[str], queue_id: str, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(queue_id)
