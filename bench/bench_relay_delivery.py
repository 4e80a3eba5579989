"""Delivery throughput of `smtp-oauth relay` (uvloop, asyncio) and of Postfix + sasl-xoauth2, side by side.

Each round fills a fresh SQLite spool with ``--messages`` messages of ``--size`` bytes for one
mailbox, starts the relay (a child process, ``relay.workers = 1``, unpaced) and times its delivery
to the sandbox's fake Exchange Online in this process (STARTTLS verified, XOAUTH2 with a real MSAL
token from the fake Entra ID, at most ``relay.upstream_connections`` sessions): messages per
second between the first and the last one Exchange received, and the relay's CPU seconds per
message over the same span (user + system, from /proc; start-up and the token request excluded).
"asyncio" hides uvloop from the relay (an importable ``uvloop`` that fails), so
relay/eventloop.py falls back. ``--postfix``: also Postfix 3.7 with the sasl-xoauth2 plug-in,
delivering the same messages from its own filled queue to the same fake Exchange through as many
sessions, timed the same way (bench/postfix_delivery.py; root, bench/build_sasl_xoauth2.sh first).
The kinds are interleaved; medians and ratios are printed.

    .venv/bin/python bench/bench_relay_delivery.py [--messages 300] [--rounds 3] [--postfix]
"""

# A script run by hand: it polls and blocks on purpose around what it measures.
# ruff: noqa: ASYNC220
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_message
from bench.postfix_delivery import PostfixDelivery
from smtp_oauth.relay.spool.base import Message
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


async def fill(spool_dir: Path, mailbox: str, count: int, size: int) -> None:
    spool = await SqliteSpool.open(spool_dir, exclusive=True)
    try:
        await asyncio.gather(
            *(
                spool.enqueue(
                    Message(
                        local_user="bench",
                        mailbox=mailbox,
                        mail_from=mailbox,
                        rcpt_tos=["someone@example.net"],
                        data=bench_message(mailbox, n, size, tag="delivery").as_bytes(),
                    )
                )
                for n in range(count)
            )
        )
    finally:
        await spool.close()


async def deliver(
    sandbox: Sandbox, directory: Path, *, uvloop: bool, count: int, size: int, connections: int
) -> tuple[float, float]:
    """One round: (messages per second, relay CPU seconds per message)."""
    spool_dir = directory / "spool"
    mailbox = sandbox.tenant.mailbox
    await fill(spool_dir, mailbox, count, size)
    config = directory / "relay.toml"
    sandbox.write_config(
        config,
        relay={
            "listen": "127.0.0.1:0",
            "workers": 1,
            "messages_per_minute": 0,
            "upstream_connections": connections,
            "spool_dir": str(spool_dir),
        },
        log_level="WARNING",
    )
    env = dict(os.environ)
    if not uvloop:
        (directory / "uvloop.py").write_text("raise ImportError('hidden by the bench')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    sandbox.exchange.clear()
    relay = subprocess.Popen(
        [sys.executable, "-m", "smtp_oauth", "--config", str(config), "relay"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(directory / "relay.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 600
        first_cpu = None
        while (delivered := len(sandbox.delivered())) < count:
            if relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay exited or stalled; see {directory / 'relay.log'}")
            if first_cpu is None and delivered:
                first_cpu = cpu_seconds(relay.pid)  # start-up and the token request are behind it
            await asyncio.sleep(0.02)
        cpu = cpu_seconds(relay.pid) - (first_cpu or 0.0)
    finally:
        relay.terminate()
        relay.wait()
    received = [m.received_at for m in sandbox.delivered()]
    elapsed = (max(received) - min(received)).total_seconds()
    return (count - 1) / elapsed, cpu / (count - 1)


async def main(args: argparse.Namespace) -> None:
    kinds = ["uvloop", "asyncio", *(["postfix", "postfix-reuse"] if args.postfix else [])]
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # same disk as the project, not tmpfs
        async with Sandbox(Path(tmp) / "sandbox") as sandbox:
            postfix = PostfixDelivery(sandbox, connections=args.connections) if args.postfix else None
            if postfix is not None:
                await postfix.start()
            try:
                for round_ in range(args.rounds):
                    for kind, runs in results.items():
                        if postfix is not None and kind.startswith("postfix"):
                            reuse = kind == "postfix-reuse"
                            runs.append(
                                await postfix.deliver(count=args.messages, size=args.size, reuse=reuse)
                            )
                            continue
                        directory = Path(tmp) / f"{kind}-{round_}"
                        directory.mkdir()
                        runs.append(
                            await deliver(
                                sandbox,
                                directory,
                                uvloop=kind == "uvloop",
                                count=args.messages,
                                size=args.size,
                                connections=args.connections,
                            )
                        )
                if postfix is not None:
                    verified, sessions = postfix.sessions()
                    print(f"Postfix: {verified} of its {sessions} TLS sessions to the fake Exchange verified")
            finally:
                if postfix is not None:
                    await postfix.stop()
    median = {kind: statistics.median(r[0] for r in runs) for kind, runs in results.items()}
    cpu = {kind: statistics.median(r[1] for r in runs) for kind, runs in results.items()}
    for kind, runs in results.items():
        shown = ", ".join(f"{r[0]:6.0f}" for r in runs)
        cpus = ", ".join(f"{r[1] * 1000:.2f}" for r in runs)
        print(
            f"{kind:13s}: {shown} msg/s (median {median[kind]:.0f}); "
            f"CPU {cpus} ms per message (median {cpu[kind] * 1000:.2f})"
        )
    pairs = [("uvloop", "asyncio")] + [
        (kind, baseline) for kind in ("uvloop", "asyncio") for baseline in ("postfix", "postfix-reuse")
    ]
    for kind, baseline in pairs:
        if baseline in median:
            print(
                f"{kind} / {baseline}: {median[kind] / median[baseline]:.2f}x msg/s, "
                f"{cpu[kind] / cpu[baseline]:.2f}x CPU per message"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300, help="messages in the spool per round")
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, interleaved")
    parser.add_argument(
        "--connections", type=int, default=3, help="upstream sessions (Exchange's per-mailbox limit)"
    )
    parser.add_argument("--postfix", action="store_true", help="also Postfix + sasl-xoauth2 (root)")
    asyncio.run(main(parser.parse_args()))
