"""The spool contract: what every backend (SQLite, PostgreSQL) does, run against each of them."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smtp_oauth.relay.delivery.bounce import BOUNCE_USER
from smtp_oauth.relay.spool.base import Message, MessageGone, Spool, SpoolError
from smtp_oauth.relay.spool.postgres import PostgresSpool, Row
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from tests.relay.conftest import FAST_LEASES, SPOOL_BACKENDS, open_backend
from tests.relay.spool_helpers import BODY, MAILBOX, body_of, message

LOST = "the relay's queue database failed while claiming messages: server closed the connection unexpectedly"


class SqliteLosingClaimReplies(SqliteSpool):
    """The next ``lose`` claims commit, and their caller hears only an error."""

    lose = 0
    lost: list[str]

    async def _claim_rows(self, mailbox: str, limit: int, stamp: float) -> list[sqlite3.Row]:
        rows = await super()._claim_rows(mailbox, limit, stamp)
        if self.lose:
            self.lose -= 1
            self.lost.extend(row["id"] for row in rows)
            raise SpoolError(LOST)
        return rows


class PostgresLosingClaimReplies(PostgresSpool):
    """The next ``lose`` claims commit, and their caller hears only an error (the database
    restarted, or the connection broke, between COMMIT and the reply)."""

    lose = 0
    lost: list[str]

    async def _claim_rows(self, mailbox: str, limit: int, stamp: float) -> list[Row]:
        rows = await super()._claim_rows(mailbox, limit, stamp)
        if self.lose:
            self.lose -= 1
            self.lost.extend(row["id"] for row in rows)
            raise SpoolError(LOST)
        return rows


CRASH = "the relay's queue database failed while recording a failure: the relay was killed"


class SqliteCrashingBeforeReports(SqliteSpool):
    """With ``crash``, the transaction recording a failure dies right before queueing its report
    (where a crash came between the two when they were separate commits)."""

    crash = False

    def _queue_report_now(self, db: sqlite3.Connection, report_id: str, report: Message) -> None:
        if self.crash:
            raise SpoolError(CRASH)
        super()._queue_report_now(db, report_id, report)


class PostgresCrashingBeforeReports(PostgresSpool):
    """As ``SqliteCrashingBeforeReports``, in PostgreSQL."""

    crash = False

    async def _queue_report(
        self, conn: psycopg.AsyncConnection[Any], report_id: str, report: Message
    ) -> None:
        if self.crash:
            raise SpoolError(CRASH)
        await super()._queue_report(conn, report_id, report)


@pytest.fixture(params=SPOOL_BACKENDS)
async def crashing_spool(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteCrashingBeforeReports | PostgresCrashingBeforeReports]:
    """A spool of each backend that can crash between recording a failure and its report."""
    opened = await open_backend(request, tmp_path, SqliteCrashingBeforeReports, PostgresCrashingBeforeReports)
    yield opened
    await opened.close()


@pytest.fixture(params=SPOOL_BACKENDS)
async def losing_spool(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteLosingClaimReplies | PostgresLosingClaimReplies]:
    """A spool of each backend whose claims' replies can be lost (``lose``)."""
    opened = await open_backend(request, tmp_path, SqliteLosingClaimReplies, PostgresLosingClaimReplies)
    opened.lost = []  # ids whose claim committed unheard
    yield opened
    await opened.close()


async def test_enqueue_stores_envelope_and_body(any_spool: Spool) -> None:
    """An enqueued message comes back with its envelope, state queued, and the same bytes."""
    queue_id = await any_spool.enqueue(message())
    entry = await any_spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.mail_from, entry.rcpt_tos) == (
        "queued",
        "fern@example.com",
        ["a@example.net", "b@example.net"],
    )
    assert (entry.local_user, entry.mailbox, entry.message_id, entry.size, entry.peer) == (
        "fern",
        MAILBOX,
        "<m1@example.com>",
        len(BODY),
        "127.0.0.1",
    )
    assert await body_of(any_spool, queue_id) == BODY


async def test_a_staged_body_file_is_taken_over(any_spool: Spool) -> None:
    """A body the listener wrote into staging_dir is stored whole and its staging file is gone."""
    any_spool.staging_dir.mkdir(parents=True, exist_ok=True)
    staged = any_spool.staging_dir / "incoming-1.tmp"
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 200_000  # 3.2 MB: several chunks
    staged.write_bytes(big)
    queue_id = await any_spool.enqueue(
        Message("fern", MAILBOX, "fern@example.com", ["a@example.net"], staged, size=len(big))
    )
    assert not staged.exists()
    assert await body_of(any_spool, queue_id) == big
    entry = await any_spool.get(queue_id)
    assert entry is not None
    assert entry.size == len(big)


async def test_claim_moves_to_sending_once(any_spool: Spool) -> None:
    """A due message is claimed by one caller only, and only for its own mailbox."""
    queue_id = await any_spool.enqueue(message())
    assert await any_spool.claim_due("other@example.com") == []
    [claimed] = await any_spool.claim_due(MAILBOX, 5)
    assert (claimed.id, claimed.state) == (queue_id, "sending")
    assert await any_spool.claim_due(MAILBOX) == []


async def test_claims_come_oldest_first_up_to_the_limit(any_spool: Spool) -> None:
    """claim_due hands out due messages in arrival order, no more than asked for."""
    ids = [await any_spool.enqueue(message()) for _ in range(3)]
    claimed = await any_spool.claim_due(MAILBOX, 2)
    assert [entry.id for entry in claimed] == ids[:2]


async def test_pending_by_mailbox_names_each_mailbox_with_work(any_spool: Spool) -> None:
    """pending_by_mailbox gives each mailbox with queued messages its earliest due time (a shared
    queue: once this relay, the only one, has leased them, within a lease round)."""
    await any_spool.enqueue(message())
    await any_spool.enqueue(message(mailbox="other@example.com"))
    deadline = time.monotonic() + 5
    while len(pending := await any_spool.pending_by_mailbox()) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert set(pending) == {MAILBOX, "other@example.com"}
    assert all(due <= time.time() + 1 for due in pending.values())


async def test_release_gives_a_claim_back_untried(any_spool: Spool) -> None:
    """A released message is queued again, with no attempt counted."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.release(queue_id)
    [again] = await any_spool.claim_due(MAILBOX)
    assert (again.id, again.attempts) == (queue_id, 0)


async def test_deferred_waits_until_due_and_retry_makes_it_due(any_spool: Spool) -> None:
    """A deferred message is not claimed before its time; `retry` makes it due now."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.mark_deferred(queue_id, next_attempt_at=time.time() + 3600, reply="432 4.3.2 busy")
    assert await any_spool.claim_due(MAILBOX) == []
    assert (await any_spool.pending_by_mailbox())[MAILBOX] > time.time() + 3000
    assert await any_spool.retry() == 1
    [claimed] = await any_spool.claim_due(MAILBOX)
    assert (claimed.attempts, claimed.last_reply) == (1, "432 4.3.2 busy")


async def test_partly_delivered_keeps_only_the_remaining_recipients(any_spool: Spool) -> None:
    """After a partial delivery the entry is deferred for the recipients refused for now alone."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.mark_partly_delivered(
        queue_id,
        remaining=["b@example.net"],
        next_attempt_at=time.time(),
        reply="452 4.2.2 full",
        refused={},
    )
    [again] = await any_spool.claim_due(MAILBOX)
    assert (again.rcpt_tos, again.attempts, again.last_reply) == (["b@example.net"], 1, "452 4.2.2 full")


async def test_dead_keeps_body_and_can_be_retried_by_id(any_spool: Spool) -> None:
    """A dead message keeps its body; retry without an id leaves it, retry with its id requeues it."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.mark_dead(queue_id, reply="550 5.7.60 not allowed")
    assert await any_spool.retry() == 0
    assert await any_spool.retry(queue_id) == 1
    entry = await any_spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"
    assert await body_of(any_spool, queue_id) == BODY


async def test_delivered_drops_the_body_and_cannot_be_retried(any_spool: Spool) -> None:
    """A delivered message keeps its record, not its body, so retrying it changes nothing."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.mark_delivered(
        queue_id, reply="250 ok", refused={"b@example.net": (550, "5.1.1 unknown")}
    )
    assert await any_spool.retry(queue_id) == 0
    entry = await any_spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.last_reply) == ("delivered", 1, "250 ok")
    assert entry.refused == {"b@example.net": (550, "5.1.1 unknown")}
    with pytest.raises(MessageGone):
        await body_of(any_spool, queue_id)


async def test_prune_forgets_old_delivered_only(any_spool: Spool) -> None:
    """prune removes delivered rows older than the cut-off and keeps queued and dead ones."""
    delivered = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.mark_delivered(delivered, reply="250 ok")
    queued = await any_spool.enqueue(message())
    assert await any_spool.prune(older_than=time.time() - 60) == 0
    assert await any_spool.prune(older_than=time.time() + 1) == 1
    assert await any_spool.get(delivered) is None
    assert await any_spool.get(queued) is not None


async def test_delete_forgets_an_entry_and_its_body(any_spool: Spool) -> None:
    """delete removes the entry and its body; deleting again reports False."""
    queue_id = await any_spool.enqueue(message(b"Y" * 300_000))
    assert await any_spool.delete(queue_id)
    assert await any_spool.get(queue_id) is None
    with pytest.raises(MessageGone):
        await body_of(any_spool, queue_id)
    assert not await any_spool.delete(queue_id)


async def test_marking_a_deleted_message_is_harmless(any_spool: Spool) -> None:
    """A message deleted by the operator while being sent stays deleted."""
    queue_id = await any_spool.enqueue(message())
    await any_spool.claim_due(MAILBOX)
    await any_spool.delete(queue_id)
    await any_spool.mark_deferred(queue_id, next_attempt_at=time.time(), reply="451")
    assert await any_spool.get(queue_id) is None


async def test_concurrent_enqueues_all_commit(any_spool: Spool) -> None:
    """200 concurrent enqueues (group commit) all get distinct ids and are all stored."""
    ids = await asyncio.gather(*(any_spool.enqueue(message()) for _ in range(200)))
    assert len(set(ids)) == 200
    assert (await any_spool.counts_by_state())["queued"] == 200
    assert len(await any_spool.list(["queued"])) == 200


async def test_a_bad_message_fails_alone_and_never_hangs(any_spool: Spool) -> None:
    """A message the database cannot store raises SpoolError; those committed with it are stored."""
    bad = Message("fern", MAILBOX, "fern@example.com", ["a@example.net"], b"x", size=2**70)
    results = await asyncio.wait_for(
        asyncio.gather(*(any_spool.enqueue(m) for m in (message(), bad, message())), return_exceptions=True),
        timeout=10,
    )
    assert isinstance(results[1], SpoolError)
    assert not results[1].temporary
    assert all(isinstance(r, str) for r in (results[0], results[2]))
    assert (await any_spool.counts_by_state())["queued"] == 2


async def test_open_body_of_an_unknown_id_is_message_gone(any_spool: Spool) -> None:
    """Reading a body that does not exist raises MessageGone (a SpoolError), nothing of the backend."""
    with pytest.raises(MessageGone):
        await body_of(any_spool, "0000000000000000")


async def test_staging_dir_is_local(any_spool: Spool) -> None:
    """Every backend names a local directory for bodies being received."""
    assert isinstance(any_spool.staging_dir, Path)


async def test_a_claim_whose_reply_was_lost_is_claimed_again(
    losing_spool: SqliteLosingClaimReplies | PostgresLosingClaimReplies,
) -> None:
    """A claim that committed while its caller got only an error leaves no row 'sending' for good
    (nobody holds it, and a live relay's claims are never taken): the spool queues it again by
    itself, and leaves alone the claims delivery holds."""
    spool = losing_spool
    held_id = await spool.enqueue(message(mailbox="other@example.com"))
    lost_id = await spool.enqueue(message())
    deadline = time.monotonic() + 5
    while len(await spool.pending_by_mailbox()) < 2:  # a shared queue: both leased, within a round
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    [held] = await spool.claim_due("other@example.com")
    spool.lose = 1
    with pytest.raises(SpoolError):
        await spool.claim_due(MAILBOX)
    assert spool.lost == [lost_id]  # committed: 'sending', and its caller does not know
    deadline = time.monotonic() + 10
    while not (claimed := await spool.claim_due(MAILBOX)):
        assert time.monotonic() < deadline, "the lost claim stayed 'sending'"
        await spool.pending_by_mailbox()  # delivery's dispatcher looks at the queue this often
        await asyncio.sleep(0.05)
    assert [entry.id for entry in claimed] == [lost_id]
    await asyncio.sleep(5 * FAST_LEASES.lease_renew)  # a few more rounds: the held claim stays ours
    await spool.pending_by_mailbox()
    entry = await spool.get(held.id)
    assert entry is not None
    assert (entry.id, entry.state) == (held_id, "sending")
    if isinstance(spool, PostgresSpool):
        assert (await spool.figures())["spool_adopted_total"] == 1


async def test_a_failure_and_its_report_are_recorded_together_or_not_at_all(
    crashing_spool: SqliteCrashingBeforeReports | PostgresCrashingBeforeReports,
) -> None:
    """Marking a message dead and queueing its non-delivery report are one transaction: a crash
    between the two leaves the message claimed, to be tried again (never dead without its
    report); recorded again, both are stored."""
    spool = crashing_spool
    queue_id = await spool.enqueue(message())
    deadline = time.monotonic() + 5
    while not await spool.claim_due(MAILBOX):  # a shared queue: once leased, within a round
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    report = Message(
        BOUNCE_USER, MAILBOX, MAILBOX, ["fern@example.com"], b"Subject: failed\r\n\r\nreport\r\n"
    )
    spool.crash = True
    with pytest.raises(SpoolError):
        await spool.mark_dead(queue_id, reply="550 5.7.60 not allowed", report=report)
    entry = await spool.get(queue_id)
    assert entry is not None
    assert (entry.state, entry.attempts) == ("sending", 0)
    assert len(await spool.list()) == 1  # no report without its failure
    spool.crash = False
    report_id = await spool.mark_dead(queue_id, reply="550 5.7.60 not allowed", report=report)
    assert report_id is not None
    entry, queued = await spool.get(queue_id), await spool.get(report_id)
    assert entry is not None
    assert queued is not None
    assert (entry.state, queued.state, queued.local_user, queued.rcpt_tos) == (
        "dead",
        "queued",
        BOUNCE_USER,
        ["fern@example.com"],
    )
    assert await body_of(spool, report_id) == report.data
