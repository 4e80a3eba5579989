"""What one hostile client gets from `smtp-oauth relay`, each figure beside its limit or the old figure.

A real relay (``python -m smtp_oauth relay``, a child process with the product's defaults, except
``messages_per_minute = 0`` as in the attack report the old figures come from) on the sandbox's
fake Entra ID and Exchange Online, everything on loopback. The clients are this process, from
several 127.0.0.x source addresses (Linux routes all of 127.0.0.0/8 to lo), one address per role:

1. connections: one address opens ``--flood`` connections; how many the relay holds
   (``max_connections_per_client``), and what a legitimate client from another address gets
   meanwhile; then ``--flood`` from each of enough addresses to pass ``max_connections``.
2. pinned bytes: one logged-in address starts ``max_connections_per_client`` DATA transfers that
   never end, pushing twice its allowance in all; the most its unfinished bodies held on disk
   (allowance: twice ``max_message_size``) and the relay's memory meanwhile.
3. upstream recovery: Exchange stopped, ``--queued`` messages accepted and deferred, ``--down``
   seconds more, Exchange started: seconds from "up" to the whole queue delivered (before: 42-72 s;
   the interface: a suspended mailbox is probed at least every 30 s).
4. guesses: wrong AUTH PLAIN passwords for ``--guess-seconds`` from one address over
   ``--guess-connections`` connections (before: 15.06/s over 300), then for one user from
   ``--guess-addresses`` addresses; a guess counts when its password was checked (535), not when it
   was refused unchecked (454). The legitimate user logs in from its usual address meanwhile.

    .venv/bin/python bench/bench_relay_abuse.py [--workers 2] [--guess-seconds 45] [--down 40]
"""

# A script run by hand: it polls on purpose around what it measures (the relay is another process).
# ruff: noqa: ASYNC110
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import RelayChild, bench_message, status_kib
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings

USER, PASSWORD = "fern", "fern-correct-horse-17"
LEGIT = "127.0.0.1"  # the legitimate user's usual address
FLOODER, PINNER, GUESSER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
SPRAY_BASE = 20  # the per-user test's addresses: 127.0.0.20, .21, ...
FIGURES: list[tuple[str, str, str]] = []


def figure(name: str, measured: str, judged_against: str) -> None:
    FIGURES.append((name, measured, judged_against))
    print(f"  {name}: {measured}  [{judged_against}]", flush=True)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Client:
    """A raw SMTP client from a chosen source address: what an attacker writes, line by line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: str) -> None:
        self.reader, self.writer, self.greeting = reader, writer, greeting

    @classmethod
    async def connect(cls, port: int, source: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        client = cls(reader, writer, "")
        client.greeting = await client.reply()
        return client

    async def reply(self) -> str:
        """The last line of the next reply; "" when the relay closed the connection."""
        while True:
            line = await self.reader.readline()
            if not line:
                return ""
            if line[3:4] != b"-":
                return line.decode(errors="replace").rstrip()

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def login(self, user: str, password: str) -> str:
        await self.command("EHLO bench.example")
        return await self.command(f"AUTH PLAIN {plain(user, password)}")

    def close(self) -> None:
        self.writer.close()


async def legit_send(port: int, sender: str) -> tuple[str, float]:
    """The legitimate user's transaction from its usual address: (final reply, seconds)."""
    started = time.monotonic()
    try:
        client = await asyncio.wait_for(Client.connect(port, LEGIT), 30)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}", time.monotonic() - started
    try:
        if not client.greeting.startswith("220"):
            return client.greeting, time.monotonic() - started
        steps = [f"MAIL FROM:<{sender}>", "RCPT TO:<someone@example.net>", "DATA"]
        reply = await client.login(USER, PASSWORD)
        for line in steps if reply.startswith("235") else []:
            reply = await client.command(line)
        if reply.startswith("354"):
            data = bench_message(sender, 0, 1000, tag="abuse").as_bytes().replace(b"\n", b"\r\n")
            client.writer.write(data + b".\r\n")
            reply = await client.reply()
        return reply, time.monotonic() - started
    finally:
        client.close()


async def legit_login(port: int) -> float | str:
    """Seconds to 235 from the legitimate user's address, or the reply it got instead."""
    started = time.monotonic()
    client = await Client.connect(port, LEGIT)
    try:
        reply = await client.login(USER, PASSWORD)
    finally:
        client.close()
    return time.monotonic() - started if reply.startswith("235") else reply


async def open_many(port: int, source: str, count: int) -> list[Client]:
    """``count`` connections from ``source``, each kept once it has its reply to the connect."""
    opened = await asyncio.gather(
        *(Client.connect(port, source) for _ in range(count)), return_exceptions=True
    )
    return [c for c in opened if isinstance(c, Client)]


def greetings(clients: list[Client]) -> dict[str, int]:
    """How many got each reply code to the connect ("closed": none, a bare close)."""
    return dict(Counter(c.greeting[:3] or "closed" for c in clients))


async def held_while(
    port: int, sender: str, sources: list[str], count: int
) -> tuple[dict[str, int], str, float]:
    """``count`` connections from each of ``sources``, held while the legitimate client sends.

    The replies to those connects by code, and the legitimate client's final reply and seconds.
    """
    floods = await asyncio.gather(*(open_many(port, source, count) for source in sources))
    everyone = [client for clients in floods for client in clients]
    await asyncio.sleep(1)  # the refused ones are closed by now; the held ones stay
    reply, seconds = await legit_send(port, sender)
    for client in everyone:
        client.close()
    await asyncio.sleep(1)
    return greetings(everyone), reply, seconds


async def connections(port: int, sender: str, flood: int, *, per_client: int, total: int) -> None:
    print("1. connections", flush=True)
    replies, reply, seconds = await held_while(port, sender, [FLOODER], flood)
    figure(
        f"held by one address ({flood} opened)",
        f"{replies.get('220', 0)} (replies {replies})",
        f"max_connections_per_client = {per_client}; before: no limit, ~1,000 idle connections "
        "locked every client out",
    )
    figure("legitimate client meanwhile", f"{reply[:40]!r} in {seconds * 1000:.0f} ms", "served")
    addresses = -(-(total + per_client) // per_client)  # enough to pass max_connections
    sources = [f"127.0.1.{n}" for n in range(1, addresses + 1)]
    replies, reply, seconds = await held_while(port, sender, sources, per_client)
    figure(
        f"held by {addresses} addresses x {per_client}",
        f"{replies.get('220', 0)}",
        f"max_connections = {total}",
    )
    figure(
        "legitimate client meanwhile",
        f"{reply[:48]!r} in {seconds * 1000:.0f} ms",
        "refused like every client past max_connections (Postfix: the same past its process limit)",
    )


def largest_rss_kib(pid: int) -> int:
    """VmRSS of the relay's largest process: the main one (delivery) or an accept worker."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    sizes = [status_kib(pid, "VmRSS")]
    for child in children:
        with contextlib.suppress(FileNotFoundError):  # a worker that just exited
            sizes.append(status_kib(int(child), "VmRSS"))
    return max(sizes)


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*") if f.is_file())


async def pin(relay: RelayChild, incoming: Path, sender: str, *, per_client: int, allowance: int) -> None:
    print("2. pinned bytes", flush=True)
    rss_before = largest_rss_kib(relay.pid)
    clients = await open_many(relay.port, PINNER, per_client)
    for client in clients:
        reply = await client.login(USER, PASSWORD)
        for line in (f"MAIL FROM:<{sender}>", "RCPT TO:<someone@example.net>", "DATA"):
            reply = await client.command(line)
        assert reply.startswith("354"), reply
    chunk = (b"0123456789abcdef" * 4 + b"\r\n") * 1000  # 66 kB, no line is a lone dot
    pushed = [0] * len(clients)
    per_connection = 2 * allowance // len(clients)

    async def push(index: int, client: Client) -> None:
        while pushed[index] < per_connection:
            client.writer.write(chunk)
            await asyncio.wait_for(client.writer.drain(), 30)
            pushed[index] += len(chunk)

    most = 0
    tasks = [asyncio.create_task(push(i, c)) for i, c in enumerate(clients)]
    while not all(t.done() for t in tasks):
        most = max(most, directory_bytes(incoming))
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    most = max(most, directory_bytes(incoming))
    rss = largest_rss_kib(relay.pid)
    errors = [t.exception() for t in tasks if t.exception() is not None]
    for client in clients:
        client.close()
    hung_up = time.monotonic()
    while (left := directory_bytes(incoming)) and time.monotonic() - hung_up < 30:
        await asyncio.sleep(0.1)
    figure(
        f"on disk, {len(clients)} unfinished transfers from one address ({sum(pushed) / 2**20:.0f} MiB sent)",
        f"{most / 2**20:.1f} MiB at most; {left / 2**20:.1f} MiB "
        f"{time.monotonic() - hung_up:.1f} s after they hung up"
        + (f"; {len(errors)} pushes failed: {errors[0]!r}" if errors else ""),
        f"allowance 2 x max_message_size = {allowance / 2**20:.0f} MiB; before: no limit "
        "(12 transfers filled an 8 MiB disk)",
    )
    figure(
        "relay memory meanwhile",
        f"RSS {rss_before / 1024:.0f} -> {rss / 1024:.0f} MiB (its largest process)",
        "in memory at most incoming.SPILL_AT (256 KiB) per connection",
    )


def queue_states(metrics_port: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    states: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith('smtp_oauth_relay_queue_messages{state="'):
            name, value = line.split('"')[1], line.rsplit(" ", 1)[1]
            states[name] = int(float(value))
    return states


async def until(predicate: Callable[[], Awaitable[bool]], *, within: float, what: str) -> float:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def recovery(
    relay: RelayChild, metrics_port: int, sandbox: Sandbox, sender: str, *, queued: int, down: float
) -> None:
    print("3. upstream recovery", flush=True)
    sandbox.exchange.clear()
    await sandbox.exchange.stop()
    for _ in range(queued):
        reply, _ = await legit_send(relay.port, sender)
        assert reply.startswith("250"), reply

    seen: list[Counter[str]] = [Counter()]

    async def suspended() -> bool:  # the first failure suspends the mailbox: the rest wait queued
        seen[0] = states = await asyncio.to_thread(queue_states, metrics_port)
        return states["deferred"] >= 1 and states["deferred"] + states["queued"] == queued

    try:
        await until(suspended, within=120, what="the queue to be deferred")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {dict(seen[0])}") from None
    await asyncio.sleep(down)
    up = time.monotonic()
    await sandbox.exchange.start()

    async def all_delivered() -> bool:
        return len(sandbox.exchange.delivered()) >= queued

    done = await until(all_delivered, within=600, what="the queue to be delivered")
    figure(
        f"from Exchange up to {queued} deferred messages delivered (down {down:.0f} s more)",
        f"{done - up:.1f} s",
        "probe at least every 30 s, then all at once; before: 42-72 s (median 56-59 s)",
    )


async def guesses(
    port: int, sources: list[str], users: Iterator[str], *, connections: int, seconds: float
) -> tuple[Counter[str], float, list[float | str]]:
    """Wrong passwords from ``sources`` over ``connections`` each; replies by code, elapsed, logins."""
    replies: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def attacker(source: str) -> None:
        while time.monotonic() < stop_at:
            try:
                client = await Client.connect(port, source)
            except OSError:
                await asyncio.sleep(1)
                continue
            try:
                if not client.greeting.startswith("220"):
                    replies[f"connect {client.greeting[:3]}"] += 1
                    await asyncio.sleep(1)  # refused: over the connection limit
                    continue
                await client.command("EHLO bench.example")
                while time.monotonic() < stop_at:
                    reply = await client.command(f"AUTH PLAIN {plain(next(users), 'wrong-guess')}")
                    if time.monotonic() < stop_at:
                        replies[reply[:3] or "closed"] += 1
                    if not reply.startswith(("535", "454")):
                        break  # 421 after a session's failures: hang up and come back
            finally:
                client.close()

    async def legitimate() -> list[float | str]:
        logins: list[float | str] = []
        while time.monotonic() < stop_at:
            logins.append(await legit_login(port))
            await asyncio.sleep(5)
        return logins

    tasks = [asyncio.create_task(attacker(s)) for s in sources for _ in range(connections)]
    logins = await legitimate()
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return replies, seconds, logins


def login_summary(logins: list[float | str]) -> str:
    times = [t for t in logins if isinstance(t, float)]
    refused = [t for t in logins if isinstance(t, str)]
    shown = f"{len(times)}/{len(logins)} logged in"
    if times:
        shown += f", median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    return shown + (f"; refused: {refused[0]!r}" if refused else "")


async def brute_force(port: int, *, seconds: float, connections: int, addresses: int) -> None:
    print("4. password guesses", flush=True)
    names = (f"guess{n}" for n in range(10**9))  # a new name each time: no user's limit applies
    replies, elapsed, logins = await guesses(port, [GUESSER], names, connections=connections, seconds=seconds)
    figure(
        f"checked guesses from one address over {connections} connections",
        f"{replies['535'] / elapsed:.2f}/s ({replies['535']} in {elapsed:.0f} s; {dict(replies)})",
        "before: 15.06/s over 300 connections, 1.59/s over 20",
    )
    figure("legitimate user meanwhile", login_summary(logins), "not locked out")
    sources = [f"127.0.0.{SPRAY_BASE + n}" for n in range(addresses)]
    replies, elapsed, logins = await guesses(
        port, sources, iter(lambda: USER, None), connections=max(1, connections // addresses), seconds=seconds
    )
    figure(
        f"checked guesses for one user from {addresses} addresses",
        f"{replies['535'] / elapsed:.2f}/s ({replies['535']} in {elapsed:.0f} s; {dict(replies)})",
        "before: the per-connection delay only, so as many per second as connections allow",
    )
    figure("legitimate user meanwhile (its usual address)", login_summary(logins), "not locked out")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the project's disk, not a tmpfs
        directory = Path(tmp)
        async with Sandbox(directory / "sandbox") as sandbox:
            sender = sandbox.tenant.mailbox
            metrics_port = free_port()
            section = {
                "listen": "127.0.0.1:0",
                "messages_per_minute": 0,
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "spool_dir": str(directory / "spool"),
                "users": [{"name": USER, "password_hash": hash_password(PASSWORD)}],
            }
            if args.workers is not None:
                section["workers"] = args.workers
            config = sandbox.write_config(directory / "relay.toml", relay=section)
            limits = load_settings(config).relay  # the product's defaults for every key not set above
            async with RelayChild(config, directory / "relay.log") as relay:
                print(
                    f"relay pid {relay.pid} on 127.0.0.1:{relay.port}, {limits.worker_count} accept "
                    f"process(es); log {directory / 'relay.log'}"
                )
                reply, _ = await legit_send(relay.port, sender)  # the user's usual address, known
                assert reply.startswith("250"), reply
                per_client = limits.max_connections_per_client
                await connections(
                    relay.port, sender, args.flood, per_client=per_client, total=limits.max_connections
                )
                await pin(
                    relay,
                    directory / "spool" / "incoming",
                    sender,
                    per_client=per_client,
                    allowance=2 * limits.max_message_size,
                )
                await recovery(relay, metrics_port, sandbox, sender, queued=args.queued, down=args.down)
                await brute_force(
                    relay.port,
                    seconds=args.guess_seconds,
                    connections=args.guess_connections,
                    addresses=args.guess_addresses,
                )
    print("\n| figure | measured | judged against |\n| --- | --- | --- |")
    for row in FIGURES:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flood", type=int, default=100, help="connections one address opens")
    parser.add_argument("--queued", type=int, default=20, help="messages deferred while Exchange is down")
    parser.add_argument("--down", type=float, default=40.0, help="seconds Exchange stays down once they are")
    parser.add_argument(
        "--workers", type=int, help="relay.workers: accept processes (default: the product's, the CPU count)"
    )
    parser.add_argument("--guess-seconds", type=float, default=45.0)
    parser.add_argument("--guess-connections", type=int, default=60, help="per guessing address")
    parser.add_argument("--guess-addresses", type=int, default=10, help="addresses guessing one user")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
