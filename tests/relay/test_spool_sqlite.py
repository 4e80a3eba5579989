"""The SQLite spool's own behaviour: body files, locking, file modes, the WAL (the rest is the
contract every backend meets, ``test_spool_contract.py``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.spool.base import SpoolError
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from tests.relay.spool_helpers import body_of, message


async def test_large_body_lives_in_a_file_until_delivered(spool: SqliteSpool) -> None:
    """A body above the inline limit is a file in data/, removed once delivered."""
    big = b"X" * (spool.inline_limit + 1)
    queue_id = await spool.enqueue(message(big))
    path = spool.data_dir / f"{queue_id}.eml"
    assert path.read_bytes() == big
    assert await body_of(spool, queue_id) == big
    [claimed] = await spool.claim_due("box@example.com")
    await spool.mark_delivered(claimed.id, reply="250 ok")
    assert not path.exists()
    entry = await spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.last_reply) == ("delivered", 1, "250 ok")


async def test_recover_requeues_sending(spool: SqliteSpool) -> None:
    """Messages left in sending (a killed relay) are queued again at start-up."""
    queue_id = await spool.enqueue(message())
    await spool.claim_due("box@example.com")
    assert await spool.recover() == 1
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"


async def test_delete_removes_row_and_file(spool: SqliteSpool) -> None:
    """delete forgets the row and its body file; deleting again reports False."""
    queue_id = await spool.enqueue(message(b"Y" * (spool.inline_limit + 10)))
    assert await spool.delete(queue_id)
    assert not (spool.data_dir / f"{queue_id}.eml").exists()
    assert not await spool.delete(queue_id)


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


async def test_prune_truncates_the_wal(spool: SqliteSpool) -> None:
    """After a prune the WAL is checkpointed and truncated, so its space is not kept."""
    ids = [await spool.enqueue(message(b"W" * 100_000)) for _ in range(20)]
    wal = spool.directory / "queue.sqlite3-wal"
    assert wal.stat().st_size > 1_000_000
    for queue_id in ids:
        await spool.claim_due("box@example.com")
        await spool.mark_delivered(queue_id, reply="250 ok")
    await spool.prune(older_than=time.time() + 1)
    assert wal.stat().st_size == 0


async def test_a_database_failure_is_a_spool_error(tmp_path: Path) -> None:
    """sqlite3's errors leave the spool as SpoolError, marked temporary when retrying may help."""
    spool = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    other = await SqliteSpool.open(tmp_path / "spool")
    try:
        blocker = other._db  # holds the write lock the way a long `queue` command would
        await blocker.call(lambda db: db.execute("BEGIN IMMEDIATE"))
        await spool._db.call(lambda db: db.execute("PRAGMA busy_timeout = 50"))
        with pytest.raises(SpoolError) as caught:
            await spool.enqueue(message())
        assert caught.value.temporary
        assert "locked" in str(caught.value)
        await blocker.call(lambda db: db.execute("ROLLBACK"))
    finally:
        await other.close()
        await spool.close()


async def test_enqueues_waiting_together_are_all_answered_when_one_fails(spool: SqliteSpool) -> None:
    """Group commit settles every waiter whatever the error (an OverflowError once hung them all)."""
    from smtp_oauth.relay.spool.base import Message

    bad = Message("fern", "box@example.com", "a@example.com", ["b@example.net"], b"x", size=2**64)
    results = await asyncio.wait_for(
        asyncio.gather(*(spool.enqueue(m) for m in [message()] * 5 + [bad]), return_exceptions=True), 10
    )
    assert [type(r).__name__ for r in results] == ["str"] * 5 + ["SpoolError"]


async def test_a_claim_cut_off_after_it_ran_goes_back_to_the_queue(spool: SqliteSpool) -> None:
    """A claim cancelled after its UPDATE ran on the database thread leaves a row 'sending' that no
    worker holds; the next look at the queue puts it back, and leaves a held claim alone."""
    queue_id = await spool.enqueue(message())
    held_id = await spool.enqueue(message(mailbox="other@example.com"))
    [held] = await spool.claim_due("other@example.com")
    claim = asyncio.create_task(spool.claim_due("box@example.com"))
    await asyncio.sleep(0)  # the claim is on the database thread now
    with sqlite3.connect(spool.directory / "queue.sqlite3") as db:
        deadline = time.monotonic() + 5
        # Blocking the loop on purpose: the claim's reply must not reach it before the cancel.
        while db.execute("SELECT state FROM messages WHERE id = ?", (queue_id,)).fetchone()[0] != "sending":
            assert time.monotonic() < deadline
            time.sleep(0.01)  # noqa: ASYNC251  # blocking is the point (see above)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    assert await spool.pending_by_mailbox() == {"box@example.com": pytest.approx(time.time(), abs=60)}
    entry, other = await spool.get(queue_id), await spool.get(held.id)
    assert entry is not None
    assert other is not None
    assert (entry.state, other.state, held.id) == ("queued", "sending", held_id)
