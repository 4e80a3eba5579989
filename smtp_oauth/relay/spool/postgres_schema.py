"""The PostgreSQL queue's schema and its migrations: a versioned table, applied under a lock.

Every relay migrates at start-up and ``smtp-oauth queue migrate`` does it on demand; both are
idempotent. Several relays starting at once are serialised by a transaction-level advisory lock
(``pg_advisory_xact_lock``, released at COMMIT, so it also works through a transaction-pooling
PgBouncer; https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS): the
first applies what is missing, the others then find nothing left to do.

Tables (all prefixed ``smtp_oauth_`` so the queue can live in a database shared with others):

- ``messages``: one row per queue entry, as in the SQLite spool, plus ``claimed_by`` (the relay
  sending it).
- ``body_chunks``: the message bodies, in ``CHUNK_SIZE`` pieces of ``bytea``. Chosen over large
  objects: a chunk goes with its row (``ON DELETE CASCADE``, no ``lo_unlink`` to forget and no
  orphans for ``vacuumlo``), it is streamed in with ``COPY`` and read back piece by piece (a
  35 MiB message is never held whole), and it is backed up and replicated like any other row.
- ``relays``: the relays sharing the queue and when each was last heard of (for the fair share
  of mailboxes and /metrics).
- ``leases``: which relay delivers for which mailbox, until when.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["CHUNK_SIZE", "MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migrate"]

CHUNK_SIZE = 256 * 1024
MIGRATION_LOCK = 0x736D_7470_6F61  # "smtpoa": the advisory lock key of schema changes

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE smtp_oauth_messages (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    local_user TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_tos JSONB NOT NULL,
    message_id TEXT,
    peer TEXT NOT NULL DEFAULT '',
    size BIGINT NOT NULL,
    has_body BOOLEAN NOT NULL DEFAULT TRUE,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_reply TEXT NOT NULL DEFAULT '',
    refused JSONB NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    claimed_by TEXT
);
CREATE INDEX smtp_oauth_messages_due ON smtp_oauth_messages (mailbox, state, next_attempt_at);
CREATE INDEX smtp_oauth_messages_state ON smtp_oauth_messages (state);
CREATE TABLE smtp_oauth_body_chunks (
    queue_id TEXT NOT NULL REFERENCES smtp_oauth_messages (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (queue_id, seq)
);
CREATE TABLE smtp_oauth_relays (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE smtp_oauth_leases (
    mailbox TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS smtp_oauth_schema (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class SchemaTooNew(Exception):  # turned into a SpoolError by the caller
    """The database was migrated by a newer smtp-oauth than this one."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


async def migrate(conn: AsyncConnection[Any]) -> list[int]:
    """Bring the schema to ``SCHEMA_VERSION``; the versions applied now (empty: none was missing).

    ``conn`` must be in autocommit mode: the whole migration is one transaction of its own.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(_VERSION_TABLE)
        cursor = conn.cursor(row_factory=tuple_row)  # whatever the connection's row factory
        await cursor.execute("SELECT coalesce(max(version), 0) FROM smtp_oauth_schema")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(current)
        applied = []
        for version in sorted(v for v in MIGRATIONS if v > current):
            await conn.execute(MIGRATIONS[version])
            await conn.execute("INSERT INTO smtp_oauth_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
