"""``PostgresSpool``: one queue in PostgreSQL shared by several relays, with mailbox leases.

Every relay accepts mail (intake) and stores it here, bodies included, so no file system is
shared. Delivery is split by mailbox: a relay delivers only for the mailboxes it holds a *lease*
on (``smtp_oauth_leases``: mailbox -> owner, until). It renews its leases every
``lease_renew`` seconds; a lease not renewed for ``lease_ttl`` seconds (a dead or cut-off
relay) is free for another relay to take. Because one relay at a time delivers for a mailbox,
that relay's own per-mailbox limits (``upstream_connections`` sessions, ``messages_per_minute``
pacing) hold exactly across all relays, with no shared counters.

- Claims (``claim_due``) use ``FOR UPDATE SKIP LOCKED`` and succeed only under a live lease of
  this relay; they carry its id (``claimed_by``), and ``mark_*``/``release`` touch only our own.
- A live relay's claims are never taken from it. What a dead relay left in ``sending`` is put
  back in the queue once its lease has expired (``recover`` and every lease round), and sent
  again by the new owner: at-least-once, as with the SQLite spool. A relay's own ``sending``
  rows that its delivery does not hold (a claim that committed but whose reply a database
  restart cut off: ``ClaimBook``) are put back by itself, in every lease round.
- A relay takes at most its fair share of the mailboxes with work (ceil(mailboxes / live relays));
  one stopping gracefully gives its leases up after closing its upstream sessions, keeping each
  for one pacing interval more (``handover_delay``) so that the next owner's first send is paced
  after its last.
- Intake: the 250 after DATA is sent only after COMMIT. Enqueues that arrive while a commit is
  running are committed together in the next one (group commit); each commit sends a NOTIFY
  that wakes the owner of the mailbox at once (LISTEN/NOTIFY; delivery still polls as a fallback).

Errors of psycopg and of its pool leave as ``SpoolError`` (temporary when the database is
unreachable). The URL is never logged or put in an error: it may hold a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from smtp_oauth.relay.eventloop import cancel_and_wait, wait_event
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
from smtp_oauth.relay.spool.postgres_schema import CHUNK_SIZE, SCHEMA_VERSION, SchemaTooNew, migrate

__all__ = ["PostgresSpool", "PostgresTuning", "migrate_database"]

log = logging.getLogger("smtp_oauth.relay.spool")
CHANNEL = "smtp_oauth_queue"  # NOTIFY payload: the mailbox that has new work
_COLUMNS = (
    "id, state, local_user, mailbox, mail_from, rcpt_tos, message_id, peer, size, attempts, "
    "next_attempt_at, last_reply, refused, created_at, updated_at, claimed_by"
)
Row = dict[str, Any]


@dataclass(frozen=True)
class PostgresTuning:
    """Internal timings (tests shrink them); the defaults are the product's."""

    lease_ttl: float = 20.0  # a lease not renewed for this long is free for another relay
    lease_renew: float = 5.0  # how often a relay renews its leases and looks for free mailboxes
    handover_delay: float = 2.0  # a released lease stays ours this long (>= 60 / messages_per_minute)
    pool_size: int = 10  # connections per relay
    connect_timeout: float = 5.0  # a database that does not answer: fail (4xx) instead of hanging
    batch_bytes: int = 16 * 1024 * 1024  # group commit: at most this much body per transaction
    relay_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    )


def _database_error(exc: BaseException, doing: str) -> SpoolError:
    """``exc`` as a ``SpoolError``: temporary unless it is a bug or bad data (never the URL)."""
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, PoolTimeout):
        return SpoolError(f"the relay's queue database did not answer while {doing}")
    permanent = isinstance(exc, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError)
    permanent = permanent or isinstance(exc, ValueError | ArithmeticError)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SpoolError(f"the relay's queue database failed while {doing}: {detail}", temporary=not permanent)


def _row_to_message(row: Row) -> SpooledMessage:
    refused = {addr: (int(code), str(text)) for addr, (code, text) in dict(row["refused"]).items()}
    return SpooledMessage(
        id=row["id"],
        state=row["state"],
        local_user=row["local_user"],
        mailbox=row["mailbox"],
        mail_from=row["mail_from"],
        rcpt_tos=list(row["rcpt_tos"]),
        message_id=row["message_id"],
        peer=row["peer"],
        size=int(row["size"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        last_reply=row["last_reply"],
        refused=refused,
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        claimed_by=row["claimed_by"] or "",
    )


@dataclass
class _Pending:
    message: Message
    queue_id: str
    future: asyncio.Future[None]


def _read_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            yield chunk


def _connection_options(url: str, tuning: PostgresTuning) -> str:
    return psycopg.conninfo.make_conninfo(
        url, application_name="smtp-oauth relay", connect_timeout=max(1, math.ceil(tuning.connect_timeout))
    )


async def migrate_database(url: str, *, tuning: PostgresTuning | None = None) -> list[int]:
    """Create or migrate the queue's schema (``smtp-oauth queue migrate``); the versions applied."""
    options = _connection_options(url, tuning or PostgresTuning())
    try:
        async with await psycopg.AsyncConnection.connect(options, autocommit=True) as conn:
            return await migrate(conn)
    except SchemaTooNew as exc:
        raise _too_new(exc) from exc
    except psycopg.Error as exc:
        raise _database_error(exc, "creating or migrating its schema") from exc


def _too_new(exc: SchemaTooNew) -> SpoolError:
    return SpoolError(
        f"the relay's queue database has schema version {exc.version}, newer than this smtp-oauth "
        f"knows ({SCHEMA_VERSION}): upgrade smtp-oauth on this host to the version the other relays run",
        temporary=False,
    )


class PostgresSpool:
    """A ``Spool`` in PostgreSQL. Open with ``await PostgresSpool.open(url, staging_dir=...)``."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], *, options: str, staging_dir: Path, tuning: PostgresTuning
    ) -> None:
        self._pool = pool
        self._options = options
        self._staging_dir = staging_dir
        self.tuning = tuning
        self.relay_id = tuning.relay_id
        self.owned: set[str] = set()  # mailboxes whose lease we hold (as of the last round)
        self.relays_alive = 0
        self._share = 1  # how many mailboxes this relay may lease (its fair share, at least one)
        self.recovered = 0  # claims of dead relays put back in the queue, since start
        self.adopted = 0  # claims of ours that never reached delivery, put back, since start
        self._book = ClaimBook()
        self._wake: Callable[[], None] | None = None
        self._pending: list[_Pending] = []
        self._commit_needed = asyncio.Event()
        self._round_needed = asyncio.Event()
        # A lease round recomputes ``owned`` from the database while claim_due may take a lease:
        # one at a time, or the round's older view drops the lease claim_due just took.
        self._lease_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliver = False
        self._closed = False
        self._drained = asyncio.Event()  # nothing pending or being committed
        self._drained.set()

    @classmethod
    async def open(
        cls, url: str, *, staging_dir: Path, deliver: bool = False, tuning: PostgresTuning | None = None
    ) -> Self:
        """Connect, migrate the schema, and (``deliver``: a relay) join the relays and take leases."""
        tuning = tuning or PostgresTuning()
        options = _connection_options(url, tuning)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            options,
            min_size=1,
            max_size=tuning.pool_size,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            timeout=tuning.connect_timeout,
            check=AsyncConnectionPool.check_connection,  # a connection broken by a restart: a new one
            name="smtp-oauth-spool",
        )
        try:
            await pool.open(wait=True, timeout=tuning.connect_timeout)
            async with pool.connection() as conn:
                applied = await migrate(conn)
        except SchemaTooNew as exc:
            await pool.close()
            raise _too_new(exc) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise _database_error(exc, "connecting") from exc
        if applied:
            log.info("queue database schema migrated to version %d", applied[-1])
        spool = cls(pool, options=options, staging_dir=staging_dir, tuning=tuning)
        spool._tasks.append(asyncio.create_task(spool._commit_loop(), name="spool commits"))
        if deliver:
            spool._deliver = True
            await spool._lease_round()  # before the first dispatch: know what is ours
            spool._tasks.append(asyncio.create_task(spool._lease_loop(), name="spool leases"))
            spool._tasks.append(asyncio.create_task(spool._listen_loop(), name="spool notifications"))
        return spool

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    def watch(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    # -- plumbing --------------------------------------------------------------------------------

    async def _execute(self, doing: str, query: str, params: Any = None) -> list[Row]:
        """One statement in its own transaction (autocommit); the rows it returns."""
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
        except (psycopg.Error, PoolTimeout) as exc:
            raise _database_error(exc, doing) from exc

    # -- intake: group commit ---------------------------------------------------------------------

    async def enqueue(self, message: Message) -> str:
        if self._closed:
            raise SpoolError("the relay's queue is closed")
        pending = _Pending(message, new_queue_id(), asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._drained.clear()
        self._commit_needed.set()
        await asyncio.shield(pending.future)  # once handed over, it commits even if the client leaves
        if isinstance(message.data, Path):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(message.data.unlink, missing_ok=True)  # now in the database
        return pending.queue_id

    async def _commit_loop(self) -> None:
        """Commit what is pending, batch after batch; every waiter is settled, whatever happens."""
        while True:
            await self._commit_needed.wait()
            self._commit_needed.clear()
            while self._pending:
                batch: list[_Pending] = []
                size = 0
                while self._pending and (not batch or size < self.tuning.batch_bytes):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += item.message.size
                await self._commit_batch(batch)
            self._drained.set()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        outcomes: list[BaseException | None] = [None] * len(batch)
        try:
            try:
                await self._insert(batch)
            except Exception:
                if len(batch) == 1:
                    raise
                for n, item in enumerate(batch):  # alone, so that one bad message fails only itself
                    try:
                        await self._insert([item])
                    except Exception as exc:
                        outcomes[n] = _database_error(exc, "storing a message")
        except Exception as exc:
            outcomes = [_database_error(exc, "storing a message")] * len(batch)
        except BaseException:
            outcomes = [SpoolError("the relay's queue was interrupted while storing a message")] * len(batch)
            raise
        finally:
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    if outcome is None:
                        item.future.set_result(None)
                    else:
                        item.future.set_exception(outcome)

    async def _insert(self, batch: list[_Pending]) -> None:
        """One transaction: the batch's rows and bodies, and a NOTIFY per mailbox."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._store(conn, [(item.queue_id, item.message) for item in batch])

    async def _store(self, conn: psycopg.AsyncConnection[Any], messages: list[tuple[str, Message]]) -> None:
        """In the caller's transaction: the rows, their bodies (COPY, chunk by chunk), a NOTIFY per
        mailbox (sent at COMMIT)."""
        now = time.time()
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO smtp_oauth_messages (id, state, local_user, mailbox, mail_from, rcpt_tos, "
                "message_id, peer, size, next_attempt_at, created_at, updated_at) "
                "VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        queue_id,
                        message.local_user,
                        message.mailbox,
                        message.mail_from,
                        json.dumps(list(message.rcpt_tos)),
                        message.message_id,
                        message.peer,
                        message.size,
                        now,
                        now,
                        now,
                    )
                    for queue_id, message in messages
                ],
            )
            async with cursor.copy(
                "COPY smtp_oauth_body_chunks (queue_id, seq, data) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "int4", "bytea"])
                for queue_id, message in messages:
                    await self._copy_body(copy, queue_id, message)
        for mailbox in sorted({message.mailbox for _, message in messages}):
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, mailbox))

    async def _copy_body(self, copy: psycopg.AsyncCopy, queue_id: str, message: Message) -> None:
        data = message.data
        if isinstance(data, bytes):
            for seq, start in enumerate(range(0, max(len(data), 1), CHUNK_SIZE)):
                await copy.write_row((queue_id, seq, data[start : start + CHUNK_SIZE]))
            return
        chunks = iter(await asyncio.to_thread(_read_chunks, data))
        seq = 0
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await copy.write_row((queue_id, seq, chunk))
            seq += 1
        if seq == 0:
            await copy.write_row((queue_id, 0, b""))

    # -- leases ------------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await wait_event(self._round_needed, self.tuning.lease_renew)
            self._round_needed.clear()
            try:
                await self._lease_round()
            except SpoolError as error:
                log.warning("cannot renew this relay's mailbox leases: %s", error)

    async def _lease_round(self) -> None:
        async with self._lease_lock:
            await self._renew_leases()

    async def _renew_leases(self) -> None:
        """Say we are alive, renew our leases, take our share of free mailboxes, and put back what
        dead relays left in ``sending``."""
        ttl = f"{self.tuning.lease_ttl} seconds"
        me = self.relay_id
        before = set(self.owned)
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO smtp_oauth_relays (id, host) VALUES (%s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                    (me, socket.gethostname()),
                )
                cursor = await conn.execute(
                    "UPDATE smtp_oauth_leases SET until = now() + %s::interval WHERE owner = %s "
                    "RETURNING mailbox",
                    (ttl, me),
                )
                owned = {row["mailbox"] for row in await cursor.fetchall()}
                cursor = await conn.execute(
                    "SELECT count(*) AS n FROM smtp_oauth_relays WHERE seen_at > now() - %s::interval", (ttl,)
                )
                row = await cursor.fetchone()
                self.relays_alive = max(1, int(row["n"]) if row else 1)
                cursor = await conn.execute(
                    "SELECT DISTINCT m.mailbox FROM smtp_oauth_messages m "
                    "WHERE m.state IN ('queued', 'deferred', 'sending')"
                )
                busy = {row["mailbox"] for row in await cursor.fetchall()}
                cursor = await conn.execute("SELECT mailbox FROM smtp_oauth_leases WHERE until > now()")
                leased = {row["mailbox"] for row in await cursor.fetchall()}
                share = max(1, math.ceil(len(busy | leased) / self.relays_alive))
                self._share = share
                for mailbox in sorted(busy - leased, key=lambda _: secrets.randbelow(1 << 30)):
                    if len(owned) >= share:
                        break
                    if await self._acquire(conn, mailbox):
                        owned.add(mailbox)
                recovered = await self._requeue_orphans(conn)
                recovered += await self._adopt_strays(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            self.owned = set()  # unknown: claim_due checks the lease in the database anyway
            raise _database_error(exc, "renewing mailbox leases") from exc
        self.owned = owned
        for mailbox in before - owned:
            log.warning("this relay lost its lease on %s", mailbox, extra={"event": "lease_lost"})
        if (owned - before or recovered) and self._wake is not None:
            self._wake()

    async def _acquire(self, conn: psycopg.AsyncConnection[Any], mailbox: str) -> bool:
        """Take the lease on ``mailbox`` if nobody holds it (or its holder's has expired)."""
        cursor = await conn.execute(
            "INSERT INTO smtp_oauth_leases (mailbox, owner, until) VALUES (%s, %s, now() + %s::interval) "
            "ON CONFLICT (mailbox) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until, "
            "acquired_at = now() WHERE smtp_oauth_leases.until <= now() RETURNING mailbox",
            (mailbox, self.relay_id, f"{self.tuning.lease_ttl} seconds"),
        )
        if await cursor.fetchone() is None:
            return False
        extra = {"event": "lease_taken", "mailbox": mailbox}
        log.info("this relay now delivers for %s", mailbox, extra=extra)
        return True

    async def _requeue_orphans(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """``sending`` rows whose claimant holds no live lease on their mailbox: back to queued."""
        cursor = await conn.execute(
            "UPDATE smtp_oauth_messages m SET state = 'queued', claimed_by = NULL, updated_at = %s "
            "WHERE m.state = 'sending' AND NOT EXISTS (SELECT 1 FROM smtp_oauth_leases l "
            "WHERE l.mailbox = m.mailbox AND l.owner = m.claimed_by AND l.until > now()) RETURNING m.id",
            (time.time(),),
        )
        count = len(await cursor.fetchall())
        if count:
            self.recovered += count
            log.warning(
                "%d messages a stopped relay was sending go back to the queue, to be sent again",
                count,
                extra={"event": "recovered", "count": count},
            )
        return count

    async def _adopt_strays(self, conn: psycopg.AsyncConnection[Any], *, everything: bool = False) -> int:
        """Our own ``sending`` rows that delivery does not hold: back to queued (``ClaimBook``).
        ``everything``: at close, after delivery has stopped, all of them."""
        self._book.suspect = False
        stamped_before, held = self._book.adoptable()
        bound = "" if everything else "AND updated_at < %(before)s AND NOT (id = ANY(%(held)s)) "
        try:
            cursor = await conn.execute(
                "UPDATE smtp_oauth_messages SET state = 'queued', claimed_by = NULL, updated_at = %(now)s "  # noqa: S608  # fixed SQL of ours
                f"WHERE state = 'sending' AND claimed_by = %(me)s {bound}RETURNING id",
                {"now": time.time(), "me": self.relay_id, "before": stamped_before, "held": held},
            )
            adopted = [row["id"] for row in await cursor.fetchall()]
        except BaseException:
            self._book.suspect = True
            raise
        for queue_id in adopted:
            self._book.settled(queue_id)
        if adopted and not everything:
            self.adopted += len(adopted)
            log.warning(
                "%d messages this relay had claimed were not being sent (the queue database failed "
                "while they were claimed); they go back to the queue",
                len(adopted),
                extra={"event": "adopted", "count": len(adopted)},
            )
        return len(adopted)

    async def _listen_loop(self) -> None:
        """LISTEN on a connection of its own: a NOTIFY wakes delivery (or a lease round, for a
        mailbox nobody delivers for). Reconnects after a database restart."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._options, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    delay = 0.5
                    if self._wake is not None:
                        self._wake()  # something may have been queued while we were not listening
                    async for notify in conn.notifies():
                        if notify.payload in self.owned:
                            if self._wake is not None:
                                self._wake()
                        else:
                            self._round_needed.set()
            except psycopg.Error as error:
                log.debug("queue notifications interrupted (%s); reconnecting", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.tuning.lease_renew)

    async def _give_back_all(self) -> None:
        """At close, delivery stopped: whatever is still ``sending`` of ours goes back to the queue
        now, for the next owner, rather than when our lease has run out."""
        try:
            async with self._pool.connection() as conn:
                count = await self._adopt_strays(conn, everything=True)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _database_error(exc, "giving back unfinished messages") from exc
        if count:
            log.info("%d unfinished messages go back to the queue", count, extra={"event": "requeued"})

    async def release_leases(self) -> None:
        """Give our leases up (a graceful stop, after delivery has closed its sessions).

        Each stays ours ``handover_delay`` more seconds, so the next owner's first send comes at
        least one pacing interval after our last.
        """
        await self._execute(
            "giving up mailbox leases",
            "UPDATE smtp_oauth_leases SET until = least(until, now() + %s::interval) WHERE owner = %s",
            (f"{self.tuning.handover_delay} seconds", self.relay_id),
        )
        await self._execute(
            "leaving the relays", "DELETE FROM smtp_oauth_relays WHERE id = %s", (self.relay_id,)
        )
        self.owned = set()

    # -- delivery ----------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Put back what relays without a live lease left in ``sending`` (never a live relay's)."""
        try:
            async with self._pool.connection() as conn:
                return await self._requeue_orphans(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _database_error(exc, "recovering messages of stopped relays") from exc

    async def pending_by_mailbox(self) -> dict[str, float]:
        if not self.owned:
            return {}
        rows = await self._execute(
            "looking for due messages",
            "SELECT mailbox, min(next_attempt_at) AS due FROM smtp_oauth_messages "
            "WHERE state IN ('queued', 'deferred') AND mailbox = ANY(%s) GROUP BY mailbox",
            (sorted(self.owned),),
        )
        return {row["mailbox"]: float(row["due"]) for row in rows}

    async def claim_due(self, mailbox: str, limit: int = 1) -> list[SpooledMessage]:
        """Claim under this relay's lease on ``mailbox``; a free lease is taken first if this relay
        is within its fair share (nothing is claimed while another live relay holds it)."""
        if self._deliver and mailbox not in self.owned and len(self.owned) < self._share:
            await self._take_lease(mailbox)
        with self._book.claiming() as stamp:
            rows = await self._claim_rows(mailbox, limit, stamp)
            self._book.took(row["id"] for row in rows)
        return sorted((_row_to_message(row) for row in rows), key=lambda m: (m.next_attempt_at, m.id))

    async def _claim_rows(self, mailbox: str, limit: int, stamp: float) -> list[Row]:
        """The claim's one UPDATE; ``stamp`` (``ClaimBook``) is its time and its mark."""
        return await self._execute(
            "claiming messages",
            f"UPDATE smtp_oauth_messages SET state = 'sending', claimed_by = %(me)s, "  # noqa: S608
            "updated_at = %(now)s WHERE id IN (SELECT id FROM smtp_oauth_messages "
            "WHERE mailbox = %(mailbox)s AND state IN ('queued', 'deferred') "
            "AND next_attempt_at <= %(now)s "
            "AND EXISTS (SELECT 1 FROM smtp_oauth_leases WHERE mailbox = %(mailbox)s AND owner = %(me)s "
            "AND until > now()) ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLUMNS}",
            {"me": self.relay_id, "now": stamp, "mailbox": mailbox, "limit": limit},
        )

    async def _take_lease(self, mailbox: str) -> None:
        """Lease ``mailbox`` now (it has due work and nobody holds it), between lease rounds."""
        async with self._lease_lock:
            if mailbox in self.owned or len(self.owned) >= self._share:
                return  # the round that just ran took it, or took our share
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(
                        "SELECT 1 FROM smtp_oauth_messages WHERE mailbox = %s "
                        "AND state IN ('queued', 'deferred') LIMIT 1",
                        (mailbox,),
                    )
                    if await cursor.fetchone() and await self._acquire(conn, mailbox):
                        self.owned.add(mailbox)
                        await self._requeue_orphans(conn)
            except (psycopg.Error, PoolTimeout) as exc:
                raise _database_error(exc, f"taking the lease on {mailbox}") from exc

    @contextlib.asynccontextmanager
    async def open_body(self, queue_id: str) -> AsyncIterator[BinaryIO]:
        """The body, fetched chunk by chunk into a temporary file (in memory while small)."""
        rows = await self._execute(
            "reading a message",
            "SELECT has_body, (SELECT count(*) FROM smtp_oauth_body_chunks WHERE queue_id = %s) AS chunks "
            "FROM smtp_oauth_messages WHERE id = %s",
            (queue_id, queue_id),
        )
        if not rows:
            raise MessageGone(f"queue entry {queue_id} does not exist")
        if not rows[0]["has_body"]:
            raise MessageGone(f"queue entry {queue_id} has no body any more")
        self._staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Closed in the finally below, after the caller's block (a with statement cannot span the yield
        # and the asyncio.to_thread close).
        file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=CHUNK_SIZE * 4, mode="w+b", dir=str(self._staging_dir)
        )
        try:
            for seq in range(int(rows[0]["chunks"])):
                chunk = await self._execute(
                    "reading a message",
                    "SELECT data FROM smtp_oauth_body_chunks WHERE queue_id = %s AND seq = %s",
                    (queue_id, seq),
                )
                if not chunk:
                    raise MessageGone(f"queue entry {queue_id} was deleted while being read")
                await asyncio.to_thread(file.write, bytes(chunk[0]["data"]))
            file.seek(0)
            yield file  # type: ignore[misc]
        finally:
            await asyncio.to_thread(file.close)

    async def _finish(
        self,
        queue_id: str,
        assignments: str,
        params: dict[str, Any],
        *,
        doing: str,
        report: Message | None = None,
        drop_body: bool = False,
    ) -> str | None:
        """Update a message this relay claimed, in one transaction with dropping its body
        (``drop_body``) and queueing its ``report`` (a crash loses neither or both); the report's
        queue id. One deleted meanwhile stays deleted, and gets no report."""
        update = (
            f"UPDATE smtp_oauth_messages SET {assignments}, updated_at = %(now)s "  # noqa: S608  # fixed SQL
            "WHERE id = %(id)s AND state = 'sending' AND claimed_by = %(me)s RETURNING id"
        )
        values = {**params, "now": time.time(), "id": queue_id, "me": self.relay_id}
        if report is None and not drop_body:
            await self._execute(doing, update, values)
            self._book.settled(queue_id)
            return None
        report_id = new_queue_id() if report is not None else None
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(update, values)
                if await cursor.fetchone() is None:
                    report_id = None
                else:
                    if drop_body:  # a delivered message is a record: its body goes at once
                        await conn.execute(
                            "DELETE FROM smtp_oauth_body_chunks WHERE queue_id = %s", (queue_id,)
                        )
                    if report is not None and report_id is not None:
                        await self._queue_report(conn, report_id, report)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _database_error(exc, doing) from exc
        self._book.settled(queue_id)
        return report_id

    async def _queue_report(
        self, conn: psycopg.AsyncConnection[Any], report_id: str, report: Message
    ) -> None:
        """Inside the transaction recording a failure: queue its non-delivery report."""
        await self._store(conn, [(report_id, report)])

    async def mark_delivered(
        self,
        queue_id: str,
        *,
        reply: str,
        refused: dict[str, tuple[int, str]] | None = None,
        report: Message | None = None,
    ) -> str | None:
        return await self._finish(
            queue_id,
            "state = 'delivered', attempts = attempts + 1, last_reply = %(reply)s, refused = %(refused)s, "
            "has_body = FALSE, claimed_by = NULL",
            {"reply": reply, "refused": json.dumps(refused or {})},
            doing=f"recording the delivery of {queue_id}",
            report=report,
            drop_body=True,
        )

    async def mark_deferred(self, queue_id: str, *, next_attempt_at: float, reply: str) -> None:
        await self._finish(
            queue_id,
            "state = 'deferred', attempts = attempts + 1, last_reply = %(reply)s, "
            "next_attempt_at = %(next)s, claimed_by = NULL",
            {"reply": reply, "next": next_attempt_at},
            doing=f"deferring {queue_id}",
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
        return await self._finish(
            queue_id,
            "state = 'deferred', attempts = attempts + 1, rcpt_tos = %(rcpts)s, last_reply = %(reply)s, "
            "refused = %(refused)s, next_attempt_at = %(next)s, claimed_by = NULL",
            {
                "rcpts": json.dumps(remaining),
                "reply": reply,
                "refused": json.dumps(refused),
                "next": next_attempt_at,
            },
            doing=f"recording the partial delivery of {queue_id}",
            report=report,
        )

    async def mark_dead(self, queue_id: str, *, reply: str, report: Message | None = None) -> str | None:
        return await self._finish(
            queue_id,
            "state = 'dead', attempts = attempts + 1, last_reply = %(reply)s, claimed_by = NULL",
            {"reply": reply},
            doing=f"recording the failure of {queue_id}",
            report=report,
        )

    async def release(self, queue_id: str) -> None:
        await self._finish(queue_id, "state = 'queued', claimed_by = NULL", {}, doing=f"releasing {queue_id}")

    async def prune(self, *, older_than: float) -> int:
        rows = await self._execute(
            "pruning delivered messages",
            "DELETE FROM smtp_oauth_messages WHERE state = 'delivered' AND updated_at < %s RETURNING id",
            (older_than,),
        )
        return len(rows)

    # -- administration ----------------------------------------------------------------------------

    async def list(self, states: Iterable[QueueState] | None = None) -> list[SpooledMessage]:
        wanted = list(states) if states is not None else list(STATES)
        rows = await self._execute(
            "listing the queue",
            f"SELECT {_COLUMNS} FROM smtp_oauth_messages WHERE state = ANY(%s) ORDER BY id",  # noqa: S608
            (wanted,),
        )
        return [_row_to_message(row) for row in rows]

    async def get(self, queue_id: str) -> SpooledMessage | None:
        rows = await self._execute(
            "reading the queue",
            f"SELECT {_COLUMNS} FROM smtp_oauth_messages WHERE id = %s",  # noqa: S608
            (queue_id,),
        )
        return _row_to_message(rows[0]) if rows else None

    async def retry(self, queue_id: str | None = None) -> int:
        now = time.time()
        if queue_id is None:
            rows = await self._execute(
                "retrying deferred messages",
                "UPDATE smtp_oauth_messages SET state = 'queued', next_attempt_at = %s, updated_at = %s "
                "WHERE state = 'deferred' RETURNING mailbox",
                (now, now),
            )
        else:
            rows = await self._execute(
                f"retrying {queue_id}",
                "UPDATE smtp_oauth_messages SET state = 'queued', next_attempt_at = %s, updated_at = %s "
                "WHERE id = %s AND state IN ('queued', 'deferred', 'dead') AND has_body RETURNING mailbox",
                (now, now, queue_id),
            )
        for mailbox in sorted({row["mailbox"] for row in rows}):
            await self._execute("waking the relays", "SELECT pg_notify(%s, %s)", (CHANNEL, mailbox))
        return len(rows)

    async def delete(self, queue_id: str) -> bool:
        rows = await self._execute(
            f"deleting {queue_id}", "DELETE FROM smtp_oauth_messages WHERE id = %s RETURNING id", (queue_id,)
        )
        return bool(rows)

    async def counts_by_state(self) -> dict[QueueState, int]:
        counts = dict.fromkeys(STATES, 0)
        rows = await self._execute(
            "counting the queue", "SELECT state, count(*) AS n FROM smtp_oauth_messages GROUP BY state"
        )
        for row in rows:
            counts[row["state"]] = int(row["n"])
        return counts

    async def figures(self) -> dict[str, float]:
        """This relay's share (leases held) and the whole queue's (relays alive, recovered)."""
        return {
            "spool_leases_held": float(len(self.owned)),
            "spool_relays_alive": float(self.relays_alive),
            "spool_recovered_total": float(self.recovered),
            "spool_adopted_total": float(self.adopted),
        }

    async def close(self) -> None:
        """Commit what is pending, give up the leases (a relay), and disconnect (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await wait_event(self._drained, 10)  # what was handed over is committed first
        if await cancel_and_wait(self._tasks):
            log.warning("the queue database's background tasks did not stop; closing anyway")
        if self._deliver:
            try:
                await self._give_back_all()
                await self.release_leases()
            except SpoolError as error:
                log.warning("could not give up this relay's leases (they expire by themselves): %s", error)
        await self._pool.close()
