"""The SQLite spool: states, bodies, administration, locking."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.spool.base import NewMessage
from smtp_oauth.relay.spool.sqlite import SqliteSpool


def message(data: bytes = b"Subject: hi\r\n\r\nbody\r\n", *, mailbox: str = "box@example.com") -> NewMessage:
    return NewMessage(
        local_user="fern",
        mailbox=mailbox,
        mail_from="fern@example.com",
        rcpt_tos=["a@example.net", "b@example.net"],
        data=data,
        peer="127.0.0.1",
        message_id="<m1@example.com>",
    )


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[SqliteSpool]:
    opened = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    yield opened
    await opened.close()


async def test_enqueue_stores_envelope_and_body(spool: SqliteSpool) -> None:
    """An enqueued message comes back with its envelope, state queued, and the same bytes."""
    queue_id = await spool.enqueue(message())
    entry = await spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.mail_from, entry.rcpt_tos) == (
        "queued",
        "fern@example.com",
        ["a@example.net", "b@example.net"],
    )
    assert (entry.local_user, entry.mailbox, entry.message_id, entry.size) == (
        "fern",
        "box@example.com",
        "<m1@example.com>",
        len(message().data),
    )
    assert await spool.read_data(queue_id) == message().data


async def test_large_body_lives_in_a_file_until_delivered(spool: SqliteSpool) -> None:
    """A body above the inline limit is a file in data/, removed once delivered."""
    big = b"X" * (spool.inline_limit + 1)
    queue_id = await spool.enqueue(message(big))
    path = spool.data_dir / f"{queue_id}.eml"
    assert path.read_bytes() == big
    assert await spool.read_data(queue_id) == big
    [claimed] = await spool.claim_due("box@example.com")
    await spool.mark_delivered(claimed.id, reply="250 ok")
    assert not path.exists()
    entry = await spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.last_reply) == ("delivered", 1, "250 ok")


async def test_claim_moves_to_sending_once(spool: SqliteSpool) -> None:
    """A due message is claimed by one caller only, and only for its own mailbox."""
    queue_id = await spool.enqueue(message())
    assert await spool.claim_due("other@example.com") == []
    [claimed] = await spool.claim_due("box@example.com", 5)
    assert (claimed.id, claimed.state) == (queue_id, "sending")
    assert await spool.claim_due("box@example.com") == []


async def test_recover_requeues_sending(spool: SqliteSpool) -> None:
    """Messages left in sending (a killed relay) are queued again at start-up."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    assert await spool.recover() == 1
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"


async def test_deferred_waits_until_due_and_retry_makes_it_due(spool: SqliteSpool) -> None:
    """A deferred message is not claimed before its time; `retry` makes it due now."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    await spool.mark_deferred(queue_id, next_attempt_at=time.time() + 3600, reply="432 4.3.2 busy")
    assert await spool.claim_due("box@example.com") == []
    assert (await spool.pending_by_mailbox())["box@example.com"] > time.time() + 3000
    assert await spool.retry() == 1
    [claimed] = await spool.claim_due("box@example.com")
    assert (claimed.attempts, claimed.last_reply) == (1, "432 4.3.2 busy")


async def test_dead_keeps_body_and_can_be_retried_by_id(spool: SqliteSpool) -> None:
    """A dead message keeps its body; retry without an id leaves it, retry with its id requeues it."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    await spool.mark_dead(queue_id, reply="550 5.7.60 not allowed")
    assert await spool.retry() == 0
    assert await spool.retry(queue_id) == 1
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"
    assert await spool.read_data(queue_id) == message().data


async def test_delivered_cannot_be_retried(spool: SqliteSpool) -> None:
    """A delivered message has no body left, so retrying it changes nothing."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    await spool.mark_delivered(queue_id, reply="250 ok", refused={"b@example.net": (550, "5.1.1 unknown")})
    assert await spool.retry(queue_id) == 0
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.refused == {"b@example.net": (550, "5.1.1 unknown")}


async def test_prune_forgets_old_delivered_only(spool: SqliteSpool) -> None:
    """prune removes delivered rows older than the cut-off and keeps queued and dead ones."""
    delivered = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    await spool.mark_delivered(delivered, reply="250 ok")
    queued = await spool.enqueue(message())
    assert await spool.prune(older_than=time.time() - 60) == 0
    assert await spool.prune(older_than=time.time() + 1) == 1
    assert await spool.get(delivered) is None
    assert await spool.get(queued) is not None


async def test_delete_removes_row_and_file(spool: SqliteSpool) -> None:
    """delete forgets the row and its body file; deleting again reports False."""
    queue_id = await spool.enqueue(message(b"Y" * (spool.inline_limit + 10)))
    assert await spool.delete(queue_id)
    assert not (spool.data_dir / f"{queue_id}.eml").exists()
    assert not await spool.delete(queue_id)


async def test_marking_a_deleted_message_is_harmless(spool: SqliteSpool) -> None:
    """A message deleted by the operator while being sent stays deleted."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    await spool.delete(queue_id)
    await spool.mark_deferred(queue_id, next_attempt_at=time.time(), reply="451")
    assert await spool.get(queue_id) is None


async def test_concurrent_enqueues_all_commit(spool: SqliteSpool) -> None:
    """200 concurrent enqueues (group commit) all get distinct ids and are all stored."""
    ids = await asyncio.gather(*(spool.enqueue(message()) for _ in range(200)))
    assert len(set(ids)) == 200
    assert (await spool.counts_by_state())["queued"] == 200


async def test_second_relay_on_same_spool_is_refused(spool: SqliteSpool) -> None:
    """Two relays never share one SQLite spool; the queue command may open it alongside."""
    with pytest.raises(ConfigurationError, match="another relay"):
        await SqliteSpool.open(spool.directory, exclusive=True)
    reader = await SqliteSpool.open(spool.directory)
    try:
        queue_id = await spool.enqueue(message())
        entry = await reader.get(queue_id)
        assert entry is not None
    finally:
        await reader.close()


async def test_recover_removes_orphan_body_files(spool: SqliteSpool) -> None:
    """Body files without a row (killed before COMMIT) are removed at start-up."""
    orphan = spool.data_dir / "0123456789abcdef.eml"
    orphan.write_bytes(b"x")
    kept = await spool.enqueue(message(b"Z" * (spool.inline_limit + 1)))
    await spool.recover()
    assert not orphan.exists()
    assert (spool.data_dir / f"{kept}.eml").exists()


async def test_open_without_create_fails_when_absent(tmp_path: Path) -> None:
    """The queue command does not create a spool that is not there."""
    with pytest.raises(FileNotFoundError):
        await SqliteSpool.open(tmp_path / "none", create=False)


async def test_spool_files_holding_bodies_are_private_under_a_loose_umask(tmp_path: Path) -> None:
    """A new spool is 0700 and its database, WAL and shared-memory files 0600, whatever the umask."""
    previous = os.umask(0o022)
    try:
        opened = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    finally:
        os.umask(previous)
    try:
        await opened.enqueue(message(b"Subject: private\r\n\r\nbody\r\n"))
        directory = opened.directory
        modes = {
            path.name: stat.S_IMODE(path.stat().st_mode)
            for path in (directory, directory / "queue.sqlite3", directory / "queue.sqlite3-wal")
        }
        assert modes == {"spool": 0o700, "queue.sqlite3": 0o600, "queue.sqlite3-wal": 0o600}
        assert stat.S_IMODE((directory / "queue.sqlite3-shm").stat().st_mode) == 0o600
    finally:
        await opened.close()


async def test_a_spool_that_cannot_be_looked_into_is_a_configuration_error(tmp_path: Path) -> None:
    """The queue command on a spool it may not stat (EACCES, a name too long) gets exit 78, not a crash."""
    with pytest.raises(ConfigurationError) as caught:
        await SqliteSpool.open(tmp_path / ("x" * 300), create=False)
    assert caught.value.key == "relay.spool_dir"
