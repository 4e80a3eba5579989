"""Retry timing, pacing and non-delivery reports: the pure parts of delivery."""

from __future__ import annotations

import asyncio
import random
import time
from email import message_from_bytes
from email.message import Message
from typing import cast

from smtp_oauth.relay.delivery.backoff import Pacer, next_attempt_at, retry_delay
from smtp_oauth.relay.delivery.bounce import BOUNCE_USER, build_report, should_bounce
from smtp_oauth.relay.spool.base import SpooledMessage


def test_retry_delay_doubles_from_a_minute_to_an_hour() -> None:
    """Without jitter the delays are 60, 120, 240 ... seconds, never above 3600."""
    delays = [retry_delay(n, jitter=0) for n in range(1, 10)]
    assert delays[:4] == [60, 120, 240, 480]
    assert max(delays) == 3600


def test_retry_delay_jitter_stays_within_a_quarter() -> None:
    """Jitter spreads each delay within +-25 % and never past the cap."""
    rng = random.Random(7)  # noqa: S311  # reproducible jitter, not cryptography
    for attempts in range(1, 12):
        nominal = min(3600.0, 60.0 * 2 ** (attempts - 1))
        delay = retry_delay(attempts, rng=rng)
        assert 0.75 * nominal <= delay <= min(3600.0, 1.25 * nominal)


def test_next_attempt_gives_up_at_max_queue_age() -> None:
    """Past max_queue_age there is no next attempt; near it the last one lands on the limit."""
    assert next_attempt_at(now=1000.0, created_at=0.0, attempts=3, max_queue_age=1000.0) is None
    assert next_attempt_at(now=990.0, created_at=0.0, attempts=9, max_queue_age=1000.0) == 1000.0


async def test_pacer_spaces_sends() -> None:
    """A pacer at 1200 per minute lets one send through every 50 ms, the first at once."""
    pacer = Pacer(1200)
    started = time.monotonic()
    await asyncio.gather(*(pacer.wait() for _ in range(5)))
    assert 0.19 <= time.monotonic() - started < 0.5


def entry(**changes: object) -> SpooledMessage:
    values: dict[str, object] = {
        "id": "0123456789abcdef",
        "state": "dead",
        "local_user": "fern",
        "mailbox": "box@example.com",
        "mail_from": "app@example.com",
        "rcpt_tos": ["to@example.net"],
        "message_id": "<1@example.com>",
        "peer": "127.0.0.1",
        "size": 10,
        "attempts": 1,
        "next_attempt_at": 0.0,
        "last_reply": "",
        "refused": {},
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_000.0,
        **changes,
    }
    return SpooledMessage(**values)  # type: ignore[arg-type]


def test_report_is_an_rfc3464_delivery_status() -> None:
    """The report is multipart/report with text, delivery-status per recipient, and the original headers."""
    original = b"From: app@example.com\r\nSubject: Invoice 42\r\n\r\nsecret body\r\n"
    raw = build_report(
        entry(),
        original,
        failed={"to@example.net": "550 5.7.60 SendAs denied"},
        reason="rejected",
        hint="grant SendAs",
        reporting_host="relay.example.com",
    )
    report = message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"] == "<app@example.com>"
    text, status, headers = cast("list[Message]", report.get_payload())
    assert "grant SendAs" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    assert "Status: 5.7.60" in str(status)
    assert "Reporting-MTA: dns; relay.example.com" in str(status)
    assert "Subject: Invoice 42" in headers.get_payload()
    assert b"secret body" not in raw


def test_reports_are_never_reported() -> None:
    """Our own reports and null-sender messages get no report."""
    assert should_bounce(entry())
    assert not should_bounce(entry(local_user=BOUNCE_USER))
    assert not should_bounce(entry(mail_from=""))
