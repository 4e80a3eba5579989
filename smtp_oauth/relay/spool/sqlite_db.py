"""One SQLite connection on its own thread, with short write transactions and group commit.

Nothing here knows about the queue: ``spool_sqlite.py`` gives the SQL. The connection lives on a
single worker thread (sqlite3 objects must not be shared between threads unguarded, and the event
loop must never wait on a disk), in WAL mode with ``synchronous=FULL``.

Group commit: ``insert`` calls that arrive while the thread is busy are committed together in the
next transaction, one fsync for all of them; this is what lets a relay that promises durability
keep up with a sink that fsyncs each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["SqliteDatabase"]

T = TypeVar("T")
Rows = list[sqlite3.Row]
BUSY_TIMEOUT_MS = 10_000  # another process (`smtp-oauth queue`) may hold the write lock briefly


@dataclass
class _PendingInsert:
    sql: str
    values: tuple[Any, ...] = field(repr=False)  # a message body among them: never in a repr
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class SqliteDatabase:
    """Open with ``await SqliteDatabase.open(path, schema=...)``; every call runs on its thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_PendingInsert] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, schema: str, user_version: int) -> SqliteDatabase:
        """Connect (creating the file), switch to WAL + synchronous=FULL, apply ``schema``."""
        database = cls(path)
        try:
            await database.call(lambda _: database._connect(schema, user_version))
        except BaseException:
            database._executor.shutdown(wait=False)
            raise
        return database

    def _connect(self, schema: str, user_version: int) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the 250 after DATA is a durability promise
        conn.executescript(schema)
        conn.execute(f"PRAGMA user_version = {int(user_version)}")
        self._conn = conn

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            # Before _connect has run, the callable passed to call() does not touch the connection.
            raise RuntimeError("the database is closed")
        return self._conn

    async def call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` on the database thread."""

        def run() -> T:
            return function(self._conn)  # type: ignore[arg-type]  # None only during open()

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """The rows of one read-only statement."""
        return await self.call(lambda db: db.execute(sql, params).fetchall())

    def write_now(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> tuple[Rows, int]:
        """On the database thread: one statement in its own IMMEDIATE transaction.

        Returns (RETURNING rows, rowcount); rows are fetched before COMMIT, since SQLite refuses to
        commit under an unfinished statement. ``durable=False`` skips the fsync: the next durable
        commit covers it, since WAL frames reach the disk in order.
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

    async def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> tuple[Rows, int]:
        """``write_now`` from the event loop."""
        return await self.call(lambda _: self.write_now(sql, params, durable=durable))

    async def insert(self, sql: str, values: tuple[Any, ...]) -> None:
        """Insert one row durably, committed together with the inserts that arrive meanwhile.

        Shielded: once handed over, the row commits even if the caller is cancelled.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._pending_lock:
            self._pending.append(_PendingInsert(sql, values, future, loop))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._executor.submit(self._flush_pending)
        await asyncio.shield(future)

    def _flush_pending(self) -> None:
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
                for item in batch:
                    db.execute(item.sql, item.values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = exc
        for item in batch:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                item.loop.call_soon_threadsafe(_settle, item.future, error)

    async def close(self) -> None:
        """Close the connection and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        def run(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self.call(run)
        self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)
