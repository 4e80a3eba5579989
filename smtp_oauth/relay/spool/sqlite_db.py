"""One SQLite connection on its own thread, with short write transactions and group commit.

Nothing here knows about the queue: ``spool_sqlite.py`` gives the SQL. The connection lives on a
single worker thread (sqlite3 objects must not be shared between threads unguarded, and the event
loop must never wait on a disk), in WAL mode with ``synchronous=FULL``.

Group commit: ``insert`` calls that arrive while the thread is busy are committed together in the
next transaction, one fsync for all of them; this is what lets a relay that promises durability
keep up with a sink that fsyncs each message. If that transaction fails, each insert is tried
again alone, so one bad row does not fail its neighbours; every waiter is settled whatever is
raised (a waiter left unsettled would hold an SMTP client without a reply forever).

Several processes (the relay's accept workers, ``relay.workers``) write one file: each write
transaction is taken under an exclusive ``flock`` of ``write_lock`` as well as SQLite's own lock.
SQLite alone makes a writer that finds the database locked sleep and poll (its busy handler
sleeps 1, 2, 5 ... 100 ms between tries), so two busy processes spend their time asleep; the kernel
wakes a flock waiter the moment the lock is free, and meanwhile its inserts gather into one batch.

Errors: sqlite3's (and anything else raised on the database thread) come out as ``SpoolError``.
``checkpoint`` copies the WAL back into the database and truncates it: without it, the WAL keeps
the size of its largest burst, eating disk that pruning freed (https://sqlite.org/wal.html,
"Avoiding Excessively Large WAL Files").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from smtp_oauth.relay.spool.base import SpoolError

__all__ = ["SqliteDatabase"]

T = TypeVar("T")
Rows = list[sqlite3.Row]
BUSY_TIMEOUT_MS = 10_000  # another process (`smtp-oauth queue`) may hold the write lock briefly
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # what a checkpoint leaves of the WAL file at most


def spool_error(exc: BaseException, doing: str) -> SpoolError:
    """``exc`` (raised while ``doing``) as a ``SpoolError``: temporary unless retrying cannot help."""
    permanent = isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | ValueError | ArithmeticError
    )
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        permanent = True
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SpoolError(f"the relay's queue failed while {doing}: {detail}", temporary=not permanent)


@dataclass
class _PendingInsert:
    sql: str
    values: tuple[Any, ...] = field(repr=False)  # a message body among them: never in a repr
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class SqliteDatabase:
    """Open with ``await SqliteDatabase.open(path, schema=...)``; every call runs on its thread."""

    def __init__(self, path: Path, *, write_lock: Path | None = None) -> None:
        self.path = path
        self._write_lock_path = write_lock
        self._write_lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_PendingInsert] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, *, schema: str, user_version: int, write_lock: Path | None = None
    ) -> SqliteDatabase:
        """Connect (creating the file), switch to WAL + synchronous=FULL, apply ``schema``.

        ``write_lock``: a file every process writing this database flocks around its transactions.
        """
        database = cls(path, write_lock=write_lock)
        try:
            await database.call(lambda _: database._connect(schema, user_version))
        except BaseException:
            database._executor.shutdown(wait=False)
            raise
        return database

    def _connect(self, schema: str, user_version: int) -> None:
        if self._write_lock_path is not None:
            # Another user's file (one `sudo smtp-oauth queue` made): SQLite's own lock still guards
            # every write; only the waiting is by polling then.
            with contextlib.suppress(OSError):
                self._write_lock_fd = os.open(self._write_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the 250 after DATA is a durability promise
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        with self._writing():
            conn.executescript(schema)
            conn.execute(f"PRAGMA user_version = {int(user_version)}")
        self._conn = conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """On the database thread: hold the processes' write lock (if any) for one transaction."""
        fd = self._write_lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

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

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except SpoolError:
            raise
        except (sqlite3.Error, OSError, ValueError, OverflowError) as exc:
            raise spool_error(exc, "reading or writing its database") from exc
        except RuntimeError as exc:  # the executor was shut down: the spool is closed
            raise SpoolError(f"the relay's queue is closed ({exc})") from exc

    async def query(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """The rows of one read-only statement."""
        return await self.call(lambda db: db.execute(sql, params).fetchall())

    def transaction_now(self, function: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """On the database thread: ``function(connection)`` in one IMMEDIATE transaction, under
        the processes' write lock; rolled back if it raises.

        ``durable=False`` skips the fsync: the next durable commit covers it, since WAL frames
        reach the disk in order.
        """
        db = self._db
        if not durable:
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._writing():
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = function(db)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
        finally:
            if not durable:
                db.execute("PRAGMA synchronous = FULL")
        return result

    async def transaction(self, function: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """``transaction_now`` from the event loop."""
        return await self.call(lambda _: self.transaction_now(function, durable=durable))

    def write_now(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> tuple[Rows, int]:
        """On the database thread: one statement in its own transaction (``transaction_now``).

        Returns (RETURNING rows, rowcount); rows are fetched before COMMIT, since SQLite refuses to
        commit under an unfinished statement.
        """

        def run(db: sqlite3.Connection) -> tuple[Rows, int]:
            cursor = db.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

        return self.transaction_now(run, durable=durable)

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
        outcomes: list[BaseException | None] = [None] * len(batch)
        fatal: BaseException | None = None
        try:
            try:
                self._commit(batch)
            except Exception:
                if len(batch) == 1:
                    raise
                for n, item in enumerate(batch):  # alone, so that one bad row fails only itself
                    try:
                        self._commit([item])
                    except Exception as exc:
                        outcomes[n] = spool_error(exc, "storing a message")
        except Exception as exc:
            outcomes = [spool_error(exc, "storing a message")] * len(batch)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: settle the waiters, then go on up
            fatal = exc
            outcomes = [SpoolError("the relay's queue was interrupted while storing a message")] * len(batch)
        finally:
            for item, outcome in zip(batch, outcomes, strict=True):
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                    item.loop.call_soon_threadsafe(_settle, item.future, outcome)
        if fatal is not None:
            raise fatal

    def _commit(self, batch: list[_PendingInsert]) -> None:
        db = self._db
        with self._writing():
            db.execute("BEGIN IMMEDIATE")
            try:
                for item in batch:
                    db.execute(item.sql, item.values)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
                    db.execute("ROLLBACK")
                raise

    def checkpoint_now(self) -> None:
        """On the database thread: copy the WAL into the database and truncate the WAL file."""
        with self._writing():
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    async def close(self) -> None:
        """Close the connection and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        def run(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._write_lock_fd is not None:
                os.close(self._write_lock_fd)
                self._write_lock_fd = None

        await self.call(run)
        self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)
