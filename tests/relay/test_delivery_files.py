"""Delivery of bodies the spool keeps in files: the session streams the file, reports quote the header."""

from __future__ import annotations

from smtp_oauth.relay.spool.base import Message
from smtp_oauth.relay.spool.sqlite import INLINE_LIMIT, SqliteSpool
from tests.relay.test_delivery import MAILBOX, FakeUpstream, running, wait_for_state, wait_until_sent

HEADER = b"From: app@example.com\r\nSubject: big scan\r\nMessage-ID: <big@example.com>\r\n\r\n"


def big_incoming(rcpts: list[str]) -> Message:
    body = HEADER + b"scan data line\r\n" * (2 * INLINE_LIMIT // 16)
    return Message("fern", MAILBOX, "app@example.com", rcpts, body, "127.0.0.1", "<big@example.com>")


async def test_a_body_in_a_file_reaches_the_session_as_that_file(spool: SqliteSpool) -> None:
    """The worker hands the session the spool's open file (streamed by the Mailer), not its bytes."""
    upstream = FakeUpstream()
    message = big_incoming(["to@example.net"])
    queue_id = await spool.enqueue(message)
    async with running(spool, upstream):
        await wait_for_state(spool, queue_id, "delivered")
    [(_, _, _, sent)] = upstream.sent
    assert sent == message.data
    assert upstream.files[0].endswith(f"{queue_id}.eml")


async def test_report_for_a_body_in_a_file_quotes_its_header(spool: SqliteSpool) -> None:
    """A partly refused big message: the report quotes its header, read before the body is dropped."""
    upstream = FakeUpstream(refuse={"gone@example.net": (550, "5.1.1 unknown")})
    queue_id = await spool.enqueue(big_incoming(["ok@example.net", "gone@example.net"]))
    async with running(spool, upstream, bounce=True):
        await wait_for_state(spool, queue_id, "delivered")
        await wait_until_sent(upstream, 2)  # the report is queued just after the original is marked
    [_, (_, _, recipients, report)] = upstream.sent
    assert recipients == ["app@example.com"]
    assert isinstance(report, bytes)
    assert b"Subject: big scan" in report
    assert b"scan data line" not in report
