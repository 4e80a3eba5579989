"""Delivery workers against a scripted upstream session: outcomes, backoff, pacing, concurrency."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from io import BufferedIOBase
from pathlib import Path
from typing import BinaryIO, Self

import pytest

from smtp_oauth.errors import (
    PermanentDeliveryError,
    SmtpOAuthError,
    TemporaryDeliveryError,
)
from smtp_oauth.relay.delivery.manager import DeliveryConfig, DeliveryManager
from smtp_oauth.relay.spool.base import Message, QueueState, SpooledMessage, SpoolError
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.smtp.replies import Stage, from_reply
from smtp_oauth.transport import MessageSource, SendResult, TransportFactory
from tests.relay.spool_helpers import body_of

MAILBOX = "box@example.com"
FAST: dict[str, object] = {
    "backoff_base": 0.05,
    "backoff_cap": 0.2,
    "poll_interval": 0.5,
    "idle_timeout": 5.0,
    "probe_first": 0.1,
    "probe_max": 0.3,
}


def fast_config(**config: object) -> DeliveryConfig:
    """Unpaced, with retries after a fraction of a second."""
    return DeliveryConfig(**{"messages_per_minute": 0, **FAST, **config})  # type: ignore[arg-type]


@dataclass
class FakeUpstream:
    """Transports that record what they send; ``failures`` are raised by the next sends, in order."""

    failures: list[SmtpOAuthError] = field(default_factory=list)
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    delay: float = 0.0
    hang_for: set[str] = field(default_factory=set)  # mailboxes whose sends never finish
    hang_on_close: bool = False  # closing a session (QUIT) never finishes: a dead server
    sent: list[tuple[str, str, list[str], bytes]] = field(default_factory=list)
    sessions_opened: int = 0
    open_now: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    send_times: list[float] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the name of each file sent (bodies in files)
    held: dict[str, asyncio.Event] = field(default_factory=dict)  # a mailbox's sends wait for its event
    in_flight: dict[str, int] = field(default_factory=dict)  # sends started and not finished, by mailbox
    peak_in_flight: int = 0  # the most sends in flight at once, all mailboxes together

    def factory(self) -> TransportFactory:
        return lambda mailbox: FakeTransport(self, mailbox)


class FakeTransport:
    """A Transport for one mailbox that reports to its FakeUpstream (a session per ``async with``)."""

    def __init__(self, upstream: FakeUpstream, mailbox: str) -> None:
        self.upstream = upstream
        self.mailbox = mailbox

    @property
    def server(self) -> str:
        return "upstream.example:587"

    async def __aenter__(self) -> Self:
        upstream, mailbox = self.upstream, self.mailbox
        upstream.sessions_opened += 1
        upstream.open_now[mailbox] = upstream.open_now.get(mailbox, 0) + 1
        upstream.peak[mailbox] = max(upstream.peak.get(mailbox, 0), upstream.open_now[mailbox])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.upstream.open_now[self.mailbox] -= 1
        if self.upstream.hang_on_close:
            await asyncio.sleep(3600)

    async def close(self) -> None:
        """Nothing to release: the session count follows ``async with``."""

    async def send(
        self,
        message: MessageSource,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the Transport protocol's signature
    ) -> SendResult:
        upstream = self.upstream
        assert sender is not None  # delivery always gives the envelope
        assert recipients is not None
        assert isinstance(message, BufferedIOBase)  # delivery sends the spool's body file
        upstream.send_times.append(time.monotonic())
        upstream.files.append(str(getattr(message, "name", "")))
        upstream.in_flight[self.mailbox] = upstream.in_flight.get(self.mailbox, 0) + 1
        upstream.peak_in_flight = max(upstream.peak_in_flight, sum(upstream.in_flight.values()))
        try:
            if self.mailbox in upstream.hang_for:
                await asyncio.sleep(3600)
            if self.mailbox in upstream.held:
                await upstream.held[self.mailbox].wait()
            await asyncio.sleep(upstream.delay)
        finally:
            upstream.in_flight[self.mailbox] -= 1
        if upstream.failures:
            raise upstream.failures.pop(0)
        upstream.sent.append((self.mailbox, sender, list(recipients), message.read()))
        accepted = [r for r in recipients if r not in upstream.refuse]
        refused = {r: upstream.refuse[r] for r in recipients if r in upstream.refuse}
        return SendResult(None, sender, accepted, refused, "250 2.0.0 queued")


def incoming(
    n: int = 0, *, mailbox: str = MAILBOX, sender: str = "app@example.com", rcpts: list[str] | None = None
) -> Message:
    data = f"From: {sender}\r\nSubject: message {n}\r\nMessage-ID: <{n}@example.com>\r\n\r\nbody {n}\r\n"
    return Message(
        "fern", mailbox, sender, rcpts or ["to@example.net"], data.encode(), "127.0.0.1", f"<{n}@example.com>"
    )


@asynccontextmanager
async def running(
    spool: SqliteSpool, upstream: FakeUpstream, **config: object
) -> AsyncIterator[DeliveryManager]:
    manager = DeliveryManager(spool, upstream.factory(), fast_config(**config))
    task = asyncio.create_task(manager.run())
    try:
        yield manager
    finally:
        await manager.stop(grace=1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_for_state(
    spool: SqliteSpool, queue_id: str, *states: QueueState, within: float = 5.0
) -> SpooledMessage:
    deadline = time.monotonic() + within
    while True:
        entry = await spool.get(queue_id)
        if entry is not None and entry.state in states:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue_id} is {entry and entry.state}, not {states}")
        await asyncio.sleep(0.02)


async def wait_for_report(spool: SqliteSpool, queue_id: str, *, within: float = 5.0) -> list[SpooledMessage]:
    """The other entries once there are some: a report is queued just after its original is marked."""
    deadline = time.monotonic() + within
    while not (others := [e for e in await spool.list() if e.id != queue_id]):
        if time.monotonic() > deadline:
            raise AssertionError(f"no report for {queue_id}")
        await asyncio.sleep(0.02)
    return others


async def test_queued_message_is_delivered(spool: SqliteSpool) -> None:
    """A queued message is sent with its envelope and bytes, then marked delivered."""
    upstream = FakeUpstream()
    async with running(spool, upstream) as manager:
        queue_id = await spool.enqueue(incoming(1, rcpts=["x@example.net", "y@example.net"]))
        manager.wake()
        entry = await wait_for_state(spool, queue_id, "delivered")
    assert upstream.sent == [
        (MAILBOX, "app@example.com", ["x@example.net", "y@example.net"], incoming(1).data)
    ]
    assert (entry.attempts, entry.last_reply) == (1, "250 2.0.0 queued")
    assert manager.results["delivered"] == 1


async def test_one_session_carries_many_messages(spool: SqliteSpool) -> None:
    """With one connection allowed, ten messages go through a single upstream session."""
    upstream = FakeUpstream()
    ids = [await spool.enqueue(incoming(n)) for n in range(10)]
    async with running(spool, upstream, upstream_connections=1):
        for queue_id in ids:
            await wait_for_state(spool, queue_id, "delivered")
    assert upstream.sessions_opened == 1
    assert len(upstream.sent) == 10


async def test_concurrent_sessions_are_capped_per_mailbox(spool: SqliteSpool) -> None:
    """A burst of 60 messages never opens more than upstream_connections sessions for a mailbox."""
    upstream = FakeUpstream(delay=0.01)
    ids = await asyncio.gather(*(spool.enqueue(incoming(n)) for n in range(60)))
    async with running(spool, upstream, upstream_connections=3):
        for queue_id in ids:
            await wait_for_state(spool, queue_id, "delivered")
    assert upstream.peak[MAILBOX] == 3


async def wait_until(condition: Callable[[], bool], what: str, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_mailboxes_are_sent_to_at_the_same_time(spool: SqliteSpool) -> None:
    """Sends through four mailboxes are in flight together: delivery never goes one send at a time."""
    mailboxes = [f"box{n}@example.com" for n in range(4)]
    release = asyncio.Event()  # no send finishes before all four have started
    upstream = FakeUpstream(held=dict.fromkeys(mailboxes, release))
    ids = [await spool.enqueue(incoming(n, mailbox=mailbox)) for n, mailbox in enumerate(mailboxes)]
    async with running(spool, upstream):
        await wait_until(lambda: upstream.peak_in_flight == len(mailboxes), "four sends in flight at once")
        release.set()
        for queue_id in ids:
            await wait_for_state(spool, queue_id, "delivered")
    assert sorted(mailbox for mailbox, *_ in upstream.sent) == mailboxes


async def test_one_mailbox_sends_on_all_its_sessions_at_once(spool: SqliteSpool) -> None:
    """A mailbox with upstream_connections=3 has three sends in flight together, not one after another."""
    release = asyncio.Event()
    upstream = FakeUpstream(held={MAILBOX: release})
    ids = [await spool.enqueue(incoming(n)) for n in range(6)]
    async with running(spool, upstream, upstream_connections=3):
        await wait_until(lambda: upstream.peak_in_flight == 3, "three sends in flight at once")
        release.set()
        for queue_id in ids:
            await wait_for_state(spool, queue_id, "delivered")
    assert upstream.peak_in_flight == 3


@pytest.mark.parametrize("stuck_first", [True, False], ids=["stuck-enqueued-first", "free-enqueued-first"])
async def test_a_hung_mailbox_stays_sending_while_another_is_delivered(
    spool: SqliteSpool, stuck_first: bool
) -> None:
    """While one mailbox's send hangs (its message stays ``sending``), another mailbox's message is
    sent and delivered, whichever was queued first."""
    free_may_finish = asyncio.Event()  # only once the stuck send is under way
    upstream = FakeUpstream(hang_for={"stuck@example.com"}, held={"free@example.com": free_may_finish})
    order = [("stuck@example.com", 1), ("free@example.com", 2)]
    queued = {
        mailbox: await spool.enqueue(incoming(n, mailbox=mailbox))
        for mailbox, n in order[:: 1 if stuck_first else -1]
    }
    async with running(spool, upstream):
        await wait_until(lambda: upstream.in_flight.get("stuck@example.com") == 1, "the stuck send to start")
        free_may_finish.set()
        await wait_for_state(spool, queued["free@example.com"], "delivered")
        stuck = await spool.get(queued["stuck@example.com"])
        assert stuck is not None
        assert stuck.state == "sending"
    assert [mailbox for mailbox, *_ in upstream.sent] == ["free@example.com"]


async def test_temporary_failure_is_deferred_then_retried(spool: SqliteSpool) -> None:
    """A 432 defers the message with backoff; the retry delivers it."""
    upstream = FakeUpstream(failures=[TemporaryDeliveryError("busy", code=432, text="4.3.2 limit exceeded")])
    queue_id = await spool.enqueue(incoming(1))
    async with running(spool, upstream) as manager:
        entry = await wait_for_state(spool, queue_id, "delivered")
    assert entry.attempts == 2
    assert manager.results["deferred"] == 1


async def test_permanent_failure_is_dead_at_once(spool: SqliteSpool) -> None:
    """A 5xx makes the message dead after one attempt, keeping its body and the reply."""
    upstream = FakeUpstream(failures=[PermanentDeliveryError("no", code=550, text="5.7.60 SendAs denied")])
    queue_id = await spool.enqueue(incoming(1))
    async with running(spool, upstream):
        entry = await wait_for_state(spool, queue_id, "dead")
    assert (entry.attempts, entry.last_reply) == (1, "550 5.7.60 SendAs denied")
    assert await body_of(spool, queue_id) == incoming(1).data


async def test_dead_message_is_bounced_to_the_sender(spool: SqliteSpool) -> None:
    """With bounce on, a dead message yields a delivery-status report to its sender via the mailbox."""
    upstream = FakeUpstream(failures=[PermanentDeliveryError("no", code=550, text="5.7.60 SendAs denied")])
    queue_id = await spool.enqueue(incoming(1))
    async with running(spool, upstream, bounce=True):
        await wait_for_state(spool, queue_id, "dead")
        [report_entry] = await wait_for_report(spool, queue_id)
        await wait_for_state(spool, report_entry.id, "delivered")
    [(mailbox, sender, recipients, data)] = upstream.sent
    assert (mailbox, sender, recipients) == (MAILBOX, MAILBOX, ["app@example.com"])
    report = message_from_bytes(data)
    assert report.get_content_type() == "multipart/report"
    assert report["Auto-Submitted"] == "auto-replied"
    status = str(report.get_payload(1))
    assert "Final-Recipient: rfc822; to@example.net" in status
    assert "Status: 5.7.60" in status


async def test_authentication_failure_is_deferred_loudly(
    spool: SqliteSpool, caplog: pytest.LogCaptureFixture
) -> None:
    """A 535 after the fresh-token retry defers (not dead); the suspension is an ERROR with the hint."""
    # Made as every SMTP transport makes it (smtp/replies.py), which attaches the reply's hint.
    failure = from_reply(
        535, "5.7.139 Authentication unsuccessful", server="upstream", stage=Stage.AUTH, context={}
    )
    upstream = FakeUpstream(failures=[failure])
    queue_id = await spool.enqueue(incoming(1))
    with caplog.at_level(logging.WARNING, logger="smtp_oauth.relay"):
        async with running(spool, upstream, backoff_base=30.0):
            entry = await wait_for_state(spool, queue_id, "deferred")
    assert entry.last_reply == "535 5.7.139 Authentication unsuccessful"
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "upstream_suspended"]
    assert record.levelno == logging.ERROR
    assert "Set-CASMailbox" in record.getMessage()


async def test_too_old_message_is_dead(spool: SqliteSpool) -> None:
    """A temporary failure past max_queue_age makes the message dead instead of deferred."""
    upstream = FakeUpstream(failures=[TemporaryDeliveryError("down", code=None)])
    queue_id = await spool.enqueue(incoming(1))
    await asyncio.sleep(0.05)
    async with running(spool, upstream, max_queue_age=0.01):
        entry = await wait_for_state(spool, queue_id, "dead")
    assert "queue age limit" in entry.last_reply


async def test_sends_are_paced_per_mailbox(spool: SqliteSpool) -> None:
    """At 600 messages a minute, one mailbox's sends take a 0.1 s slot each: never two at once,
    and no faster than the rate on average."""
    upstream = FakeUpstream()
    ids = [await spool.enqueue(incoming(n)) for n in range(6)]
    async with running(spool, upstream, messages_per_minute=600):
        for queue_id in ids:
            await wait_for_state(spool, queue_id, "delivered")
    times = upstream.send_times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The slots are 0.1 s apart; a send woken late by a busy machine can sit closer to the next
    # one's slot, but unpaced sends would come milliseconds apart.
    assert min(gaps) >= 0.05
    assert (times[-1] - times[0]) / (len(times) - 1) >= 0.095


async def test_refused_recipients_are_recorded(spool: SqliteSpool) -> None:
    """Recipients the server refused are recorded while the others get the message."""
    upstream = FakeUpstream(refuse={"gone@example.net": (550, "5.1.1 unknown")})
    queue_id = await spool.enqueue(incoming(1, rcpts=["ok@example.net", "gone@example.net"]))
    async with running(spool, upstream):
        entry = await wait_for_state(spool, queue_id, "delivered")
    assert entry.refused == {"gone@example.net": (550, "5.1.1 unknown")}


async def test_stop_requeues_a_send_in_progress(spool: SqliteSpool, caplog: pytest.LogCaptureFixture) -> None:
    """A send still running when the grace period ends is cancelled, its message queued again, and
    one line says it may arrive twice."""
    upstream = FakeUpstream(hang_for={MAILBOX})
    queue_id = await spool.enqueue(incoming(1))
    manager = DeliveryManager(spool, upstream.factory(), fast_config())
    task = asyncio.create_task(manager.run())
    await wait_for_state(spool, queue_id, "sending")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="smtp_oauth.relay"):
        await manager.stop(grace=0.2)
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1.5
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"
    cut = [r for r in caplog.records if getattr(r, "event", None) == "send_cut_off"]
    assert [getattr(r, "queue_id", None) for r in cut] == [queue_id]


async def test_stop_lets_a_send_in_progress_finish_within_the_grace_period(
    spool: SqliteSpool, caplog: pytest.LogCaptureFixture
) -> None:
    """A graceful stop waits (up to its grace period) for a send under way and records it, as
    Postfix lets a delivery finish: the message is delivered once, not queued again."""
    upstream = FakeUpstream(delay=0.5)
    queue_id = await spool.enqueue(incoming(1))
    manager = DeliveryManager(spool, upstream.factory(), fast_config())
    task = asyncio.create_task(manager.run())
    await wait_for_state(spool, queue_id, "sending")
    with caplog.at_level(logging.INFO, logger="smtp_oauth.relay"):
        await manager.stop(grace=5.0)
    await asyncio.wait_for(task, 2)
    entry = await spool.get(queue_id)
    assert entry is not None
    assert (entry.state, len(upstream.sent)) == ("delivered", 1)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "send_cut_off"]


async def test_stop_does_not_wait_long_for_a_dead_server_to_answer_quit(spool: SqliteSpool) -> None:
    """At shutdown a hung upstream gets about a second for QUIT, not the usual ten: stop stays bounded."""
    upstream = FakeUpstream(hang_for={MAILBOX}, hang_on_close=True)
    queue_id = await spool.enqueue(incoming(1))
    manager = DeliveryManager(spool, upstream.factory(), fast_config())
    task = asyncio.create_task(manager.run())
    await wait_for_state(spool, queue_id, "sending")
    started = time.monotonic()
    await manager.stop(grace=0.2)
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2.5
    entry = await spool.get(queue_id)
    assert entry is not None
    assert entry.state == "queued"


async def test_event_log_has_fields_but_no_body(spool: SqliteSpool, caplog: pytest.LogCaptureFixture) -> None:
    """The delivered event carries queue id, Message-ID, sender, counts and reply; never the body."""
    upstream = FakeUpstream()
    with caplog.at_level(logging.INFO, logger="smtp_oauth.relay"):
        async with running(spool, upstream):
            queue_id = await spool.enqueue(incoming(7))
            await wait_for_state(spool, queue_id, "delivered")
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "delivered"]
    fields = vars(record)
    assert (fields["queue_id"], fields["message_id"], fields["sender"]) == (
        queue_id,
        "<7@example.com>",
        "app@example.com",
    )
    body = incoming(7).data
    assert isinstance(body, bytes)
    assert (fields["recipients"], fields["size"], fields["upstream_reply"]) == (
        1,
        len(body),
        "250 2.0.0 queued",
    )
    assert fields["latency_ms"] >= 0
    assert "body 7" not in caplog.text


async def test_refused_recipients_are_reported_to_the_sender(spool: SqliteSpool) -> None:
    """With bounce on, a partly refused message yields a report naming only the refused recipient."""
    upstream = FakeUpstream(refuse={"gone@example.net": (550, "5.1.1 unknown")})
    queue_id = await spool.enqueue(incoming(1, rcpts=["ok@example.net", "gone@example.net"]))
    async with running(spool, upstream, bounce=True):
        await wait_for_state(spool, queue_id, "delivered")
        await wait_until_sent(upstream, 2)  # the report is queued just after the original is marked
    [_, (_, _, recipients, report)] = upstream.sent
    assert recipients == ["app@example.com"]
    assert b"Final-Recipient: rfc822; gone@example.net" in report
    assert b"Final-Recipient: rfc822; ok@example.net" not in report


async def test_recipients_refused_for_now_are_retried_alone(spool: SqliteSpool) -> None:
    """A 4xx for one recipient defers the message for that recipient only; the others get it once."""
    upstream = FakeUpstream(refuse={"busy@example.net": (452, "4.2.2 mailbox busy")})
    queue_id = await spool.enqueue(incoming(1, rcpts=["ok@example.net", "busy@example.net"]))
    async with running(spool, upstream):
        entry = await wait_for_state(spool, queue_id, "deferred")
        assert (entry.rcpt_tos, entry.last_reply) == (["busy@example.net"], "452 4.2.2 mailbox busy")
        upstream.refuse.clear()
        await wait_for_state(spool, queue_id, "delivered")
    assert [recipients for _, _, recipients, _ in upstream.sent] == [
        ["ok@example.net", "busy@example.net"],
        ["busy@example.net"],
    ]


async def test_a_slow_host_name_lookup_for_a_report_does_not_freeze_the_relay(
    spool: SqliteSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's host name look-up (DNS, possibly slow) runs off the event loop."""
    real_getfqdn = socket.getfqdn

    def slow_getfqdn(name: str = "") -> str:
        time.sleep(0.5)  # a resolver waiting for an unreachable DNS server
        return real_getfqdn(name)

    monkeypatch.setattr(socket, "getfqdn", slow_getfqdn)
    upstream = FakeUpstream(refuse={"gone@example.net": (550, "5.1.1 unknown")})
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    ticking = asyncio.create_task(ticker())
    queue_id = await spool.enqueue(incoming(1, rcpts=["ok@example.net", "gone@example.net"]))
    async with running(spool, upstream, bounce=True):
        await wait_for_state(spool, queue_id, "delivered")
        await wait_until_sent(upstream, 2)
    ticking.cancel()
    assert max(gaps) < 0.3


async def wait_until_sent(upstream: FakeUpstream, count: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while len(upstream.sent) < count:
        assert time.monotonic() < deadline, f"only {len(upstream.sent)} sent"
        await asyncio.sleep(0.02)


class FlakySpool(SqliteSpool):
    """A real spool whose first look at the queue fails, as a locked or full database does."""

    failures = 1

    async def pending_by_mailbox(self) -> dict[str, float]:
        if self.failures:
            self.failures -= 1
            raise SpoolError("the relay's queue failed: database is locked")
        return await super().pending_by_mailbox()


async def test_a_failing_queue_read_does_not_stop_delivery(tmp_path: Path) -> None:
    """The dispatcher logs a spool error and tries again; it does not end (which stopped the relay)."""
    spool = await FlakySpool.open(tmp_path / "spool", exclusive=True)
    try:
        upstream = FakeUpstream()
        queue_id = await spool.enqueue(incoming(1))
        async with running(spool, upstream, poll_interval=0.1):
            await wait_for_state(spool, queue_id, "delivered")
        assert spool.failures == 0  # the failing read did happen, and delivery went on after it
    finally:
        await spool.close()


class BookkeepingFailsSpool(SqliteSpool):
    """A real spool whose first outcome records fail, as a full or unreachable database does."""

    failures = 2  # mark_delivered, then the release after it

    async def mark_delivered(
        self,
        queue_id: str,
        *,
        reply: str,
        refused: dict[str, tuple[int, str]] | None = None,
        report: Message | None = None,
    ) -> str | None:
        if self.failures:
            self.failures -= 1
            raise SpoolError("the relay's queue failed: disk I/O error")
        return await super().mark_delivered(queue_id, reply=reply, refused=refused, report=report)

    async def release(self, queue_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise SpoolError("the relay's queue failed: disk I/O error")
        await super().release(queue_id)


async def test_a_failed_outcome_record_never_leaves_a_message_sending(tmp_path: Path) -> None:
    """When recording a delivery and then the release fail, the message is released later and sent
    again (at-least-once), not left in sending until a restart."""
    spool = await BookkeepingFailsSpool.open(tmp_path / "spool", exclusive=True)
    try:
        upstream = FakeUpstream()
        queue_id = await spool.enqueue(incoming(1))
        async with running(spool, upstream, poll_interval=0.1):
            await wait_for_state(spool, queue_id, "delivered")
        assert spool.failures == 0
        assert len(upstream.sent) == 2  # once unrecorded, once more after the release
    finally:
        await spool.close()


class BodyReadFailsSpool(SqliteSpool):
    """A real spool whose first body read fails, as when the queue's database goes away between
    the claim and the read."""

    failures = 1

    @asynccontextmanager
    async def open_body(self, queue_id: str) -> AsyncIterator[BinaryIO]:
        if self.failures:
            self.failures -= 1
            raise SpoolError("the relay's queue database failed while reading a message: connection lost")
        async with super().open_body(queue_id) as body:
            yield body


async def test_a_failed_body_read_never_leaves_a_message_sending(tmp_path: Path) -> None:
    """A claimed message whose body cannot be read is given back and delivered later, not left in
    'sending' (where nobody would take it again until a restart)."""
    spool = await BodyReadFailsSpool.open(tmp_path / "spool", exclusive=True)
    try:
        upstream = FakeUpstream()
        queue_id = await spool.enqueue(incoming(1))
        async with running(spool, upstream, poll_interval=0.1):
            await wait_for_state(spool, queue_id, "delivered")
        assert spool.failures == 0
        assert len(upstream.sent) == 1
    finally:
        await spool.close()
