"""Accept throughput: 500 messages of 10 KB over 10 connections, durably stored; and the RSS it leaves.

The relay (listener + SQLite spool, AUTH PLAIN on loopback, scrypt hashes at the product's cost)
in one process (``relay.workers = 1``) and with ``--workers`` accept processes in front of a main
process (``relay/workers/``), each on uvloop and on asyncio's own loop (uvloop hidden from the
server's processes), against a minimal aiosmtpd sink that writes each message to its own file and
fsyncs it before answering 250, and against Postfix (``--postfix-port``, bench_relay_postfix.sh).
Every server but Postfix is started fresh each round, in processes of its own; the kinds are
interleaved; the clients are threads of this one (stdlib smtplib, like the legacy senders).
Delivery does not run: this is what a client waits for. ``--base DIR`` measures the relay kinds
again from another source tree (``git archive`` of an older commit): a before/after in one run.

CPU: each server's process tree's user + system time from the start of the messages to the last
reply, per message (Postfix: its master process and the smtpd, cleanup, ... under it).
RSS: the relay's processes' VmRSS once listening (idle) and 1 s after the load (10 concurrent
logins, then the messages): the main process's and the largest worker's (the target is per process).

    .venv/bin/python bench/bench_relay_accept.py [--messages 500] [--connections 10] [--rounds 3]
        [--workers 2] [--postfix-port 2526] [--kinds postfix,w2-uvloop] [--base /tmp/base]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import re
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

USER, PASSWORD = "bench", "bench-password-123"
POSTFIX_MASTER_PID = Path("/var/spool/postfix-bench/pid/master.pid")  # bench_relay_postfix.sh's queue
HASH_VARIABLE = "BENCH_PASSWORD_HASH"  # PASSWORD's hash, made once by the bench for its relays


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


def serve_relay(directory: Path, workers: int) -> None:
    from smtp_oauth.relay import eventloop
    from smtp_oauth.relay.listener.server import RelayListener
    from smtp_oauth.relay.listener.session import ListenerTuning
    from smtp_oauth.relay.spool.sqlite import SqliteSpool
    from smtp_oauth.relay.workers.authority import LimitsAuthority
    from smtp_oauth.relay.workers.frames import Setup
    from smtp_oauth.relay.workers.pool import WorkerPool
    from smtp_oauth.relay.workers.sockets import reuse_port_available
    from smtp_oauth.settings.models import Settings

    # Hashed by the bench (HASH_VARIABLE), as a relay reads its hashes from its configuration: a
    # hash made here would leave scrypt's 16 MiB in this process's idle RSS.
    user = {"name": USER, "password_hash": os.environ[HASH_VARIABLE], "allowed_senders": ["box@example.com"]}
    settings = Settings.model_validate(
        {  # only [relay] is read: nothing is delivered
            "log_level": "WARNING",  # not a "queued" line per message
            "identity": {"tenant_id": "bench", "client_id": "bench", "client_secret": "unused"},
            "smtp": {"username": "box@example.com"},
            "relay": {"listen": "127.0.0.1:0", "workers": workers, "users": [user]},
        }
    )
    spool_dir = directory / "spool"
    reuse_port = reuse_port_available()  # as RelayService: a listening socket per worker

    def setup(index: int) -> Setup:
        return Setup(
            settings=settings,
            default_mailbox="box@example.com",
            profile_mailboxes={},
            spool_dir=spool_dir,
            incoming_dir=spool_dir / "incoming",
            tuning=ListenerTuning(),
            index=index,
            reuse_port=reuse_port,
        )

    async def main() -> None:
        spool = await SqliteSpool.open(spool_dir, exclusive=True)
        listener = RelayListener(settings.relay, default_mailbox="box@example.com", store=spool.enqueue)
        pool = None
        if workers == 1:
            await listener.start()
        else:  # as RelayService does: the main process binds, the workers accept and commit
            sockets = await listener.bind_sockets(reuse_port=reuse_port)
            authority = LimitsAuthority(
                listener.connection_limits, listener.login_guard, listener.client_bytes
            )
            pool = WorkerPool(
                workers, setup=setup, sockets=sockets, queued=lambda _: None, authority=authority
            )
            await pool.start()
        print(listener.addresses[0][1], flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        if pool is not None:
            await pool.stop(grace=1.0)
        await listener.stop()
        await spool.close()

    eventloop.run(main())


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and all its descendants alive now."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        each = pending.pop()
        try:
            # Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            pending += map(int, Path(f"/proc/{each}/task/{each}/children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
    return total


def run_clients(
    port: int, messages: int, connections: int, size: int, *, login: bool, server: int
) -> tuple[float, float]:
    """(messages per second, ``server``'s CPU ms per message) over ``connections`` smtplib clients
    started together; the server's CPU is its process tree's, from the start to the last reply."""
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
    started, cpu = time.perf_counter(), tree_cpu(server)
    for thread in threads:
        thread.join()
    sent = per_client * connections
    return sent / (time.perf_counter() - started), (tree_cpu(server) - cpu) * 1000 / sent


@dataclass(frozen=True)
class Kind:
    name: str
    workers: int = 0  # 0: not the relay
    uvloop: bool = True
    source: Path | None = None  # the relay of another source tree (an older build), not ours


@dataclass(frozen=True)
class Sample:
    rate: float  # msg/s
    cpu: float  # the server's CPU ms per message
    idle: tuple[float, float] = (0.0, 0.0)  # MiB: the main process, the largest accept worker
    after: tuple[float, float] = (0.0, 0.0)


def rss_mib(pid: int) -> tuple[float, float]:
    """VmRSS of ``pid`` and the largest of its children (the accept workers; 0 without), MiB."""

    def rss(each: int) -> float:
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{each}/status").read_text(), re.MULTILINE)
        return int(found.group(1)) / 1024 if found else 0.0

    children = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    return rss(pid), max(map(rss, children), default=0.0)


def measure(kind: Kind, messages: int, connections: int, size: int, postfix_port: int) -> Sample:
    """Messages per second accepted by a fresh server of ``kind`` (or the Postfix on ``postfix_port``)."""
    if kind.name == "postfix":  # its master process: smtpd, cleanup and the rest are its children
        master = int(POSTFIX_MASTER_PID.read_text())
        return Sample(*run_clients(postfix_port, messages, connections, size, login=False, server=master))
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # same disk as the project, not tmpfs
        env = dict(os.environ)
        paths = [str(kind.source)] if kind.source else []  # its smtp_oauth before ours
        if not kind.uvloop:  # an importable "uvloop" that fails: relay/eventloop.py falls back
            (Path(tmp) / "uvloop.py").write_text("raise ImportError('hidden by the bench')\n")
            paths.insert(0, tmp)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
        serve = ["--serve", "relay", "--workers", str(kind.workers)] if kind.workers else ["--serve", "sink"]
        server = subprocess.Popen(
            [sys.executable, __file__, *serve, tmp], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            idle = rss_mib(server.pid)
            rate, cpu = run_clients(
                port, messages, connections, size, login=bool(kind.workers), server=server.pid
            )
            time.sleep(1.0)  # the login pool's malloc_trim after its burst
            return Sample(rate, cpu, idle, rss_mib(server.pid))
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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="relay.workers, besides 1")
    parser.add_argument("--postfix-port", type=int, default=0, help="also measure this Postfix smtpd")
    parser.add_argument("--kinds", default="", help="only these, comma-separated (e.g. postfix,w2-uvloop)")
    parser.add_argument(
        "--base", type=Path, help="also the relay kinds of this source tree (e.g. `git archive` of a commit)"
    )
    args = parser.parse_args()
    if args.serve == "sink":
        serve_sink(Path(args.directory))
        return
    if args.serve == "relay":
        serve_relay(Path(args.directory), args.workers)
        return
    from smtp_oauth.relay.passwords import hash_password

    os.environ[HASH_VARIABLE] = hash_password(PASSWORD)  # inherited by every relay the bench starts
    n = args.workers
    kinds = [
        Kind("sink"),
        *([Kind("postfix")] if args.postfix_port else []),
        Kind("relay w1 uvloop", 1),
        Kind("relay w1 asyncio", 1, uvloop=False),
        Kind(f"relay w{n} uvloop", n),
        Kind(f"relay w{n} asyncio", n, uvloop=False),
    ]
    if args.kinds:
        wanted = {name.replace("-", " ") for name in args.kinds.split(",")}
        kinds = [kind for kind in kinds if kind.name.removeprefix("relay ") in wanted or kind.name in wanted]
    if args.base:
        base = args.base.resolve()
        kinds += [replace(k, name=f"{k.name} @base", source=base) for k in kinds if k.workers]
    results: dict[str, list[Sample]] = {kind.name: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind.name].append(
                measure(kind, args.messages, args.connections, args.size, args.postfix_port)
            )
    median = {name: statistics.median(s.rate for s in samples) for name, samples in results.items()}
    cpu = {name: statistics.median(s.cpu for s in samples) for name, samples in results.items()}
    for name, samples in results.items():
        line = f"{name:18s}: {', '.join(f'{s.rate:6.0f}' for s in samples)} msg/s (median {median[name]:.0f})"
        line += f", CPU per message {cpu[name]:.2f} ms"
        if name.startswith("relay"):
            line += "".join(
                f"; {median[name] / median[o]:.2f}x {o} (CPU {cpu[name] / cpu[o]:.2f}x)"
                for o in ("sink", "postfix")
                if o in median
            )
            for where, index in (("main process", 0), ("largest worker", 1)):
                idle = statistics.median(s.idle[index] for s in samples)
                after = statistics.median(s.after[index] for s in samples)
                if idle:
                    line += f"; {where} RSS idle {idle:.1f} MiB, 1 s after the load {after:.1f} MiB"
        print(line)


if __name__ == "__main__":
    main()
