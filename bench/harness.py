"""What the relay benchmarks share: the test message they send through it."""

from __future__ import annotations

from email.message import EmailMessage


def bench_message(sender: str, n: int, size: int, *, tag: str) -> EmailMessage:
    """Message ``n`` of a run, about ``size`` bytes of 65-octet lines; its Message-ID names the bench."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.net"
    message["Subject"] = f"bench {n}"
    message["Message-ID"] = f"<{tag}-bench-{n}@sandbox.test>"
    message.set_content(("0123456789abcdef" * 4 + "\n") * max(1, size // 65))
    return message
