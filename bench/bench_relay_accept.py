"""Accept throughput: 500 messages of 10 KB over 10 connections, durably stored.

The relay (listener + SQLite spool, AUTH PLAIN on loopback) against a minimal aiosmtpd sink that
writes each message to its own file and fsyncs it before answering 250. Each server runs in its own
process; the clients are threads of this one (stdlib smtplib, like the legacy senders).

    .venv/bin/python bench/bench_relay_accept.py [--messages 500] [--connections 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

USER, PASSWORD = "bench", "bench-password-123"


def message(n: int, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "box@example.com"
    msg["To"] = "someone@example.net"
    msg["Subject"] = f"bench {n}"
    msg["Message-ID"] = f"<bench-{n}@example.com>"
    msg.set_content(("0123456789abcdef" * 4 + "\n") * (size // 65))
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF line ends, as on the wire


def client(port: int, count: int, size: int, *, login: bool, offset: int, start: threading.Barrier) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        if login:
            smtp.login(USER, PASSWORD)
        payloads = [message(offset + n, size) for n in range(count)]
        start.wait()  # connecting and logging in are not part of the measurement
        for data in payloads:
            smtp.sendmail("box@example.com", ["someone@example.net"], data)


def serve_sink(directory: Path) -> None:
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Sink:
        def __init__(self) -> None:
            self.count = 0

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            self.count += 1
            path = directory / f"{self.count}.eml"
            data = envelope.original_content or b""

            def write() -> None:
                with path.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())

            await asyncio.to_thread(write)
            return "250 2.0.0 Ok: stored"

    async def main() -> None:
        handler = Sink()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(handler, loop=loop), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_relay(directory: Path) -> None:
    from smtp_oauth.relay.listener.server import RelayListener
    from smtp_oauth.relay.passwords import hash_password
    from smtp_oauth.relay.spool.sqlite import SqliteSpool
    from smtp_oauth.settings.models import RelaySettings

    relay = RelaySettings(
        listen="127.0.0.1:0",
        users=[
            {"name": USER, "password_hash": hash_password(PASSWORD), "allowed_senders": ["box@example.com"]}
        ],
    )

    async def main() -> None:
        spool = await SqliteSpool.open(directory / "spool", exclusive=True)
        listener = RelayListener(relay, default_mailbox="box@example.com", store=spool.enqueue)
        await listener.start()
        print(listener.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_clients(port: int, messages: int, connections: int, size: int, *, login: bool) -> float:
    """Messages per second over ``connections`` smtplib clients started together."""
    per_client = messages // connections
    start = threading.Barrier(connections + 1)
    threads = [
        threading.Thread(
            target=client,
            args=(port, per_client, size),
            kwargs={"login": login, "offset": i * per_client, "start": start},
        )
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return per_client * connections / (time.perf_counter() - started)


def measure(kind: str, messages: int, connections: int, size: int, postfix_port: int = 0) -> float:
    """Messages per second accepted by a fresh server of ``kind`` (or the Postfix on ``postfix_port``)."""
    if kind == "postfix":
        return run_clients(postfix_port, messages, connections, size, login=False)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # same disk as the project, not tmpfs
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, tmp], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            return run_clients(port, messages, connections, size, login=kind == "relay")
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["sink", "relay"])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postfix-port", type=int, default=0, help="also measure this Postfix smtpd")
    args = parser.parse_args()
    if args.serve == "sink":
        serve_sink(Path(args.directory))
        return
    if args.serve == "relay":
        serve_relay(Path(args.directory))
        return
    results: dict[str, list[float]] = {"sink": [], "relay": []}
    if args.postfix_port:
        results["postfix"] = []
    for _ in range(args.rounds):
        for kind, rates in results.items():
            rates.append(measure(kind, args.messages, args.connections, args.size, args.postfix_port))
    best = {kind: max(rates) for kind, rates in results.items()}
    median = {kind: statistics.median(rates) for kind, rates in results.items()}
    for kind, rates in results.items():
        shown = ", ".join(f"{rate:7.1f}" for rate in rates)
        print(f"{kind:7s}: {shown}  msg/s (median {median[kind]:.1f}, best {best[kind]:.1f})")
    for other in ("sink", "postfix"):
        if other in results:
            print(
                f"relay / {other}: median {median['relay'] / median[other]:.2f}, "
                f"best {best['relay'] / best[other]:.2f}"
            )


if __name__ == "__main__":
    main()
