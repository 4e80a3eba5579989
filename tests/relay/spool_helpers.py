"""What the spool tests share: a message to queue, and reading a body back."""

from __future__ import annotations

from smtp_oauth.relay.spool.base import Message, SpoolAdmin

MAILBOX = "box@example.com"
BODY = b"Subject: hi\r\n\r\nbody\r\n"


def message(data: bytes = BODY, *, mailbox: str = MAILBOX) -> Message:
    return Message(
        local_user="fern",
        mailbox=mailbox,
        mail_from="fern@example.com",
        rcpt_tos=["a@example.net", "b@example.net"],
        data=data,
        peer="127.0.0.1",
        message_id="<m1@example.com>",
    )


async def body_of(spool: SpoolAdmin, queue_id: str) -> bytes:
    """The stored body, read through ``open_body`` as delivery reads it."""
    async with spool.open_body(queue_id) as file:
        return file.read()
