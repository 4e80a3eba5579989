"""Peak memory of `smtp-oauth relay` while it relays one 35 MiB message (target: below 3x its size).

Starts the sandbox (fake Entra ID + fake Exchange Online) here and the relay as a child process,
sends one message just under relay.max_message_size with smtplib, waits until the fake Exchange has
it, and reads the relay's VmHWM (peak resident set) from /proc. The relay's resident size after
start-up (Python, aiosmtpd, MSAL, pydantic loaded) is reported too, since the target is about what
the message costs.

The relay streams DATA into its spool (``relay/incoming.py``) and from it to Exchange
(``smtp_stream.py``), so the message costs a few MiB of buffers, not copies of itself: measured
0.8x the message above start-up (1.9x including start-up), where collecting DATA in memory and
sending it with ``aiosmtplib.SMTP.data`` cost 7x.

    .venv/bin/python bench/bench_relay_memory.py [--size-mib 35]
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import RelayChild, status_kib
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.sandbox import Sandbox

USER, PASSWORD = "bench", "bench-password-123"
MIB = 1024 * 1024


def big_message(sender: str, size: int) -> bytes:
    head = (
        f"From: {sender}\r\nTo: someone@example.net\r\nSubject: big\r\n"
        "Message-ID: <big@bench>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    line = b"0123456789" * 7 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body


def send(port: int, sender: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as smtp:
        smtp.login(USER, PASSWORD)
        smtp.sendmail(sender, ["someone@example.net"], data)


async def main(size: int) -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        directory = Path(tmp)
        async with Sandbox(directory / "sandbox") as sandbox:
            users = [{"name": USER, "password_hash": hash_password(PASSWORD)}]
            sandbox.write_config(relay={"listen": "127.0.0.1:0", "users": users, "messages_per_minute": 0})
            async with RelayChild(sandbox.config_path, directory / "relay.log") as relay:
                baseline = status_kib(relay.pid, "VmRSS")
                data = big_message(sandbox.tenant.mailbox, size)
                started = time.perf_counter()
                await asyncio.to_thread(send, relay.port, sandbox.tenant.mailbox, data)
                accepted = time.perf_counter()
                while not sandbox.delivered():  # noqa: ASYNC110  # the fake Exchange has no event to wait on
                    await asyncio.sleep(0.05)
                delivered = time.perf_counter()
                peak = status_kib(relay.pid, "VmHWM")
            assert sandbox.delivered()[0].data == data, "the delivered message differs"
    size_mib = len(data) / MIB
    print(
        f"message {size_mib:.1f} MiB: accepted in {accepted - started:.2f}s, "
        f"delivered {delivered - accepted:.2f}s later"
    )
    print(f"relay RSS after start {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
    print(
        f"peak / size = {peak / 1024 / size_mib:.2f}x; "
        f"(peak - start) / size = {(peak - baseline) / 1024 / size_mib:.2f}x  (target < 3x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=float, default=35.0)
    args = parser.parse_args()
    asyncio.run(main(int(args.size_mib * MIB) - 64 * 1024))
