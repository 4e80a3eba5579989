"""Several relays on one PostgreSQL queue: accept throughput, and the failover time.

Accept: 600 messages of 10 KB over 12 connections, spread evenly over 1, 2 or 3 relay processes
(listener + PostgreSQL spool, AUTH PLAIN on loopback), against one relay on the SQLite spool; each
message is committed before its 250 (PostgreSQL with fsync on, synchronous_commit on: the
server's defaults). PostgreSQL is a throwaway server started here (initdb, a Unix socket).

Failover: two relays (product timings: leases renewed every 5 s, expiring after 20 s) deliver a
steady stream for two mailboxes to the sandbox's fake Exchange, each mailbox's client sending to
its own relay and to the other one when that is gone; the relay delivering for one of them is
SIGKILLed, and the time until that mailbox is delivering again is measured.

    .venv/bin/python bench/bench_shared_queue.py [--messages 600] [--rounds 3] [--no-failover]
"""

# A script run by hand: it polls and blocks on purpose around what it measures.
# ruff: noqa: ASYNC110, ASYNC220, PLR0915
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_relay_accept import PASSWORD, USER, client
from tests.relay.postgres_server import PostgresServer, find_bin


def serve(directory: Path, url: str) -> None:
    """One relay's intake: listener + spool (PostgreSQL at ``url``, or SQLite when it is empty)."""
    from smtp_oauth.relay.listener.server import RelayListener
    from smtp_oauth.relay.passwords import hash_password
    from smtp_oauth.relay.spool import open_spool
    from smtp_oauth.settings.models import RelaySettings

    relay = RelaySettings(
        listen="127.0.0.1:0",
        spool_url=url or None,
        users=[
            {"name": USER, "password_hash": hash_password(PASSWORD), "allowed_senders": ["box@example.com"]}
        ],
    )

    async def main() -> None:
        spool = await open_spool(relay, spool_dir=directory / "spool", deliver=not url)
        listener = RelayListener(
            relay, default_mailbox="box@example.com", store=spool.enqueue, incoming_dir=spool.staging_dir
        )
        await listener.start()
        print(listener.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def accept_rate(url: str, relays: int, messages: int, connections: int, size: int) -> float:
    """Messages per second accepted by ``relays`` fresh relay processes sharing ``url``."""
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        servers = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve", str(Path(tmp) / str(n)), url],
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(relays)
        ]
        try:
            ports = [int(server.stdout.readline()) for server in servers if server.stdout is not None]
            per_client = messages // connections
            start = threading.Barrier(connections + 1)
            threads = [
                threading.Thread(
                    target=client,
                    args=(ports[i % len(ports)], per_client, size),
                    kwargs={"login": True, "offset": i * per_client, "start": start},
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
        finally:
            for server in servers:
                server.terminate()
                server.wait()


def fresh_database(server: PostgresServer, n: int) -> str:
    return server.create_database(f"bench_{os.getpid()}_{n}")


FAILOVER_GIVE_UP = 120.0  # seconds: six lease lifetimes; past this, failover is broken, not slow


async def failover_time(server: PostgresServer) -> float:
    """Seconds from SIGKILL of a mailbox's relay to that mailbox's next delivery (product timings)."""
    import psycopg

    from smtp_oauth.relay.passwords import hash_password
    from smtp_oauth.sandbox import Sandbox
    from tests.cli.admin_cli import clean_env
    from tests.relay.relay_harness import PASSWORD as RELAY_PASSWORD

    # At the product's cost: a relay refuses the test suite's cheap hashes outside the suite.
    password_hash = hash_password(RELAY_PASSWORD)

    url = fresh_database(server, 999)
    with tempfile.TemporaryDirectory() as tmp:
        async with Sandbox(Path(tmp) / "sandbox") as sandbox:
            tenant = sandbox.tenant
            sandbox.exchange.grant(tenant.app.client_id, tenant.second_user.upn, model="fullaccess")
            sandbox.write_config(
                relay={
                    "listen": "127.0.0.1:0",
                    "spool_url": url,
                    "messages_per_minute": 120,
                    "users": [
                        {"name": "a", "password_hash": password_hash, "mailbox": tenant.mailbox},
                        {"name": "b", "password_hash": password_hash, "mailbox": tenant.second_user.upn},
                    ],
                }
            )
            relays = []
            for n in range(2):
                directory = Path(tmp) / f"relay{n}"
                directory.mkdir()
                log = (directory / "log").open("wb")
                relays.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "smtp_oauth", "--config", str(sandbox.config_path), "relay"],
                        stdout=log,
                        stderr=log,
                        env=clean_env(
                            directory,
                            XDG_RUNTIME_DIR=str(directory / "run"),
                            SMTP_OAUTH_RELAY__SPOOL_DIR=str(directory / "spool"),
                        ),
                    )
                )
            ports = []
            for n in range(2):
                log_path = Path(tmp) / f"relay{n}" / "log"
                while "relay listening on" not in log_path.read_text(errors="replace"):
                    if relays[n].poll() is not None:
                        raise SystemExit(f"relay {n} exited:\n{log_path.read_text(errors='replace')}")
                    await asyncio.sleep(0.1)
                text = log_path.read_text()
                ports.append(int(text.split("relay listening on 127.0.0.1:")[1].split()[0].strip(",")))
            stop = threading.Event()

            def feed(user: str, sender: str, first: int) -> None:
                """Send for ``user``, to the relay at ``first``; when it is gone, to the other one, as
                clients behind a load balancer or a DNS name with both relays would."""
                import smtplib

                from tests.relay.relay_harness import make_message

                n = 0
                order = [first, *(port for port in ports if port != first)]
                while not stop.is_set():
                    for port in order:
                        try:
                            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                                smtp.login(user, RELAY_PASSWORD)
                                smtp.send_message(make_message(sender, n))
                            break
                        except (OSError, smtplib.SMTPException):
                            continue
                    n += 1
                    time.sleep(0.25)

            feeders = [
                threading.Thread(target=feed, args=("a", tenant.mailbox, ports[0]), daemon=True),
                threading.Thread(target=feed, args=("b", tenant.second_user.upn, ports[1]), daemon=True),
            ]
            for thread in feeders:
                thread.start()
            while len({m.auth_user for m in sandbox.delivered()}) < 2:
                await asyncio.sleep(0.2)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                cursor = await conn.execute(
                    "SELECT owner FROM smtp_oauth_leases WHERE mailbox = %s", (tenant.mailbox,)
                )
                row = await cursor.fetchone()
            assert row is not None
            victim = next(p for p in relays if f":{p.pid}:" in row[0])
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            victim.wait()
            while not [
                m
                for m in sandbox.delivered()
                if m.auth_user == tenant.mailbox and m.received_at.timestamp() > killed_at
            ]:
                if time.time() - killed_at > FAILOVER_GIVE_UP:
                    raise SystemExit(
                        f"{tenant.mailbox} was not delivering {FAILOVER_GIVE_UP:.0f} s after the kill"
                    )
                await asyncio.sleep(0.1)
            took = time.time() - killed_at
            stop.set()
            for process in relays:
                if process.poll() is None:
                    process.terminate()
                    process.wait()
            return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve")
    parser.add_argument("url", nargs="?", default="")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-failover", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.url)
        return
    bin_dir = find_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (initdb not found)")
    server = PostgresServer.start(bin_dir, durable=True)
    try:
        results: dict[str, list[float]] = {"sqlite x1": [], "postgresql x1": [], "x2": [], "x3": []}
        for round_ in range(args.rounds):
            for kind, relays in (("sqlite x1", 1), ("postgresql x1", 1), ("x2", 2), ("x3", 3)):
                url = "" if kind.startswith("sqlite") else fresh_database(server, round_ * 10 + relays)
                results[kind].append(accept_rate(url, relays, args.messages, args.connections, args.size))
        for kind, rates in results.items():
            label = kind if kind.startswith(("sqlite", "postgresql")) else f"postgresql {kind}"
            shown = ", ".join(f"{rate:7.1f}" for rate in rates)
            print(f"{label:16s}: {shown}  msg/s (median {statistics.median(rates):.1f})")
        if not args.no_failover:
            print(f"failover: {asyncio.run(failover_time(server)):.1f} s from SIGKILL to delivering again")
    finally:
        server.close()


if __name__ == "__main__":
    main()
