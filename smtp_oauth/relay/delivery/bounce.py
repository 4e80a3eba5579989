"""Non-delivery reports (RFC 3464 ``multipart/report; report-type=delivery-status``).

Sent (with ``relay.bounce = true``) to the envelope sender of a message that died, or to whom
some recipients were refused. The report goes out through the same upstream mailbox, so its
envelope sender is that mailbox and not the null sender ``<>`` RFC 5321 asks for: Exchange Online
only accepts submissions from the authenticated mailbox (or a SendAs address). To keep automatic
replies away it carries ``Auto-Submitted: auto-replied`` (RFC 3834), and a report that itself
fails is never reported (``should_bounce``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

from smtp_oauth.mail.addresses import make_message_id, message_date
from smtp_oauth.relay.spool.base import SpooledMessage

__all__ = ["BOUNCE_USER", "build_report", "should_bounce"]

BOUNCE_USER = "MAILER-DAEMON"  # local_user of the reports we enqueue ourselves
MAX_ORIGINAL_HEADERS = 64 * 1024
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def should_bounce(entry: SpooledMessage) -> bool:
    """False for our own reports (no loops) and for messages with a null sender."""
    return entry.local_user != BOUNCE_USER and entry.mail_from.strip("<> ") != ""


def _original_headers(data: bytes) -> bytes:
    """The header block of the original message (at most 64 KiB), CRLF line ends."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data[: end if end >= 0 else len(data)][:MAX_ORIGINAL_HEADERS]
    return b"\r\n".join(head.splitlines())


def _status_of(reply: str, default: str) -> str:
    match = _STATUS.search(reply)
    return match.group(1) if match else default


def build_report(
    entry: SpooledMessage,
    original: bytes,
    *,
    failed: Mapping[str, str],
    reason: str,
    hint: str | None = None,
    reporting_host: str | None = None,
    upstream_host: str | None = None,
) -> bytes:
    """The raw report for ``entry``: ``failed`` maps each failed recipient to the reply it got.

    Layout (RFC 3464 section 2)::

        multipart/report; report-type=delivery-status
          text/plain                human-readable explanation (reason, hint)
          message/delivery-status   Reporting-MTA, Arrival-Date; per recipient Final-Recipient,
                                    Action: failed, Status, Diagnostic-Code
          text/rfc822-headers       the original message's headers (not its body)
    """
    host = reporting_host or socket.getfqdn()
    domain = entry.mailbox.rpartition("@")[2] or host
    boundary = f"=_smtp-oauth-report-{entry.id}"
    lines = [
        "This is the smtp-oauth relay on " + host + ".",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
        *(f"  <{address}>: {reply}" for address, reply in failed.items()),
        "",
        "Reason: " + reason,
    ]
    if hint:
        lines += ["", "What to do: " + hint]
    lines += ["", f"Queue id {entry.id}, message {entry.message_id or '(no Message-ID)'}."]
    status = [
        f"Reporting-MTA: dns; {host}",
        f"X-Smtp-Oauth-Queue-ID: {entry.id}",
        f"Arrival-Date: {format_datetime(datetime.fromtimestamp(entry.created_at, UTC))}",
    ]
    for address, reply in failed.items():
        status += [
            "",
            f"Final-Recipient: rfc822; {address}",
            "Action: failed",
            f"Status: {_status_of(reply, '5.0.0')}",
        ]
        if upstream_host:
            status.append(f"Remote-MTA: dns; {upstream_host}")
        if reply:
            status.append(f"Diagnostic-Code: smtp; {reply}")
    headers = [
        f"From: Mail Delivery System <{entry.mailbox}>",
        f"To: <{entry.mail_from}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {message_date()}",
        f"Message-ID: {make_message_id(f'MAILER-DAEMON@{domain}', prefix='ndr')}",  # the relay's domain
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        "\r\n".join(headers),
        "",
        "This is a MIME-encapsulated delivery status notification.",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "\r\n".join(lines),
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        "\r\n".join(status),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    text = "\r\n".join(parts).encode("utf-8")
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    return text + b"\r\n" + _original_headers(original) + closing
