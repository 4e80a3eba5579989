"""Relay throughput through Microsoft Graph, and a 429 storm, against the sandbox's fake Graph.

The relay (in this process: listener, SQLite spool, delivery with transport = "graph") takes
``--messages`` messages of ``--size`` bytes from ``--connections`` smtplib clients (threads) and
delivers them through the fake Graph over HTTPS (real MSAL token, real TLS, the 4-requests-per-app
limit). ``--latency`` makes each sendMail take that long at Graph, as a real one takes 0.3-1 s.
Then the storm: Graph answers the next ``--storm`` sendMail requests with 429 and Retry-After 2 s;
the report says how many requests the relay made during it and when the queue was empty again.

    .venv/bin/python bench/bench_relay_graph.py [--messages 300] [--connections 6] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_message
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox.runner import Sandbox

USER, PASSWORD = "bench", "bench-password-123"


def _client(port: int, messages: list[EmailMessage], start: threading.Barrier) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        smtp.login(USER, PASSWORD)
        start.wait()
        for message in messages:
            smtp.send_message(message)


async def _until(predicate: object, within: float) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > within:
            raise TimeoutError("the relay did not deliver everything in time")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def _send(port: int, sender: str, count: int, *, offset: int, size: int, connections: int) -> None:
    batches = [
        [bench_message(sender, offset + n, size, tag="graph") for n in range(c, count, connections)]
        for c in range(connections)
    ]
    start = threading.Barrier(connections)
    await asyncio.gather(*(asyncio.to_thread(_client, port, batch, start) for batch in batches))


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="graph-bench-"))
    async with Sandbox(directory) as sandbox:
        sandbox.graph.api.latency = args.latency
        sandbox.write_config(
            transport="graph",
            relay={
                "listen": "127.0.0.1:0",
                "messages_per_minute": 0,
                "upstream_connections": args.workers,
                "users": [
                    {"name": USER, "password_hash": hash_password(PASSWORD)}
                ],  # full cost: weaker is refused
            },
        )
        service = RelayService(sandbox.settings(), delivery_tuning={"poll_interval": 0.2})
        ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(service.run(ready=ready.set_result))
        port = (await ready)[0][1]
        sender = sandbox.tenant.mailbox
        try:
            began = time.monotonic()
            await _send(port, sender, args.messages, offset=0, size=args.size, connections=args.connections)
            accepted = time.monotonic()
            done = await _until(lambda: len(sandbox.graph_delivered()) >= args.messages, 600)
            total = done - began
            print(
                f"throughput: {args.messages} messages of {args.size} B over {args.connections} connections, "
                f"{args.workers} workers, Graph latency {args.latency * 1000:.0f} ms: accepted in "
                f"{accepted - began:.2f} s, all delivered through Graph after {total:.2f} s = "
                f"{args.messages / total:.1f} msg/s; peak {sandbox.graph.max_in_flight} requests at once"
            )

            # The storm: every sendMail is refused with 429 for a while.
            sandbox.inject_graph(
                "sendMail", 429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                retry_after=2, times=args.storm,
            )  # fmt: skip
            before = len(sandbox.graph.requests("sendMail"))
            began = time.monotonic()
            await _send(
                port,
                sender,
                args.storm_messages,
                offset=args.messages,
                size=args.size,
                connections=args.connections,
            )
            done = await _until(
                lambda: len(sandbox.graph_delivered()) >= args.messages + args.storm_messages, 600
            )
            requests = sandbox.graph.requests("sendMail")[before:]
            refused = [r for r in requests if r.status == 429]
            first_ok = next((r.at for r in requests if r.status == 202), done)
            print(
                f"429 storm: {args.storm} answers of 429 (Retry-After 2 s) queued; {args.storm_messages} "
                f"messages sent meanwhile: {len(refused)} requests got 429 "
                f"in {first_ok - requests[0].at:.2f} s, "
                f"{len(requests) - len(refused)} succeeded, {len(requests)} requests in all "
                f"({len(requests) / args.storm_messages:.2f} per message); all delivered "
                f"{done - began:.2f} s after the storm began; nothing lost"
            )
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4, help="relay.upstream_connections")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each sendMail takes at Graph")
    parser.add_argument("--storm", type=int, default=12, help="sendMail requests answered 429")
    parser.add_argument("--storm-messages", type=int, default=40)
    asyncio.run(main(parser.parse_args()))
