"""Delivery throughput of `smtp-oauth relay` (uvloop, asyncio) and of Postfix + sasl-xoauth2, side by side.

Each round fills a fresh SQLite spool with ``--messages`` messages of ``--size`` bytes for one
mailbox, starts the relay (a child process, ``relay.workers = 1``, unpaced) and times its delivery
to the sandbox's fake Exchange Online (STARTTLS verified, XOAUTH2 with a real MSAL token from the
fake Entra ID, at most ``relay.upstream_connections`` sessions). The sandbox runs in a process of
its own (bench/sandbox_process.py), so every kind faces the same server, undisturbed by the bench.
A round gives messages per second between the first and the last one Exchange received, and the
CPU seconds per message over the same span (user + system, from /proc; start-up and the token
request excluded) of the sender and of the fake Exchange. "asyncio" hides uvloop from the relay (an
importable ``uvloop`` that fails), so relay/eventloop.py falls back; ``asyncio@SOURCE`` runs the
relay of another source tree (an older build, for a before/after in one run). ``--postfix``: also
Postfix 3.7 with the sasl-xoauth2 plug-in, delivering the same messages from its own filled queue
to the same fake Exchange through as many sessions, timed the same way (bench/postfix_delivery.py;
root, bench/build_sasl_xoauth2.sh first). The kinds are interleaved, each round starting with the
next kind; medians, spreads and ratios are printed.

    .venv/bin/python bench/bench_relay_delivery.py [--messages 300] [--rounds 3] [--postfix]
        [--kinds uvloop,asyncio,asyncio@/tmp/base] [--py-spy DIR]
"""

# A script run by hand: it polls and blocks on purpose around what it measures.
# ruff: noqa: ASYNC220, ASYNC240
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_message
from bench.postfix_delivery import PostfixDelivery
from bench.sandbox_process import Round, SandboxProcess, cpu_seconds, time_delivery
from smtp_oauth.relay.spool.base import Message
from smtp_oauth.relay.spool.sqlite import SqliteSpool


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


def relay_kind(kind: str) -> tuple[bool, Path | None]:
    """``uvloop`` / ``asyncio``, optionally ``@SOURCE``: (uvloop?, the source tree to run, if not ours)."""
    loop, _, source = kind.partition("@")
    if loop not in ("uvloop", "asyncio"):
        raise SystemExit(
            f"unknown kind {kind!r}: uvloop, asyncio (each optionally @SOURCE), postfix, postfix-reuse"
        )
    return loop == "uvloop", Path(source).resolve() if source else None


async def deliver(
    sandbox: SandboxProcess,
    directory: Path,
    kind: str,
    *,
    count: int,
    size: int,
    connections: int,
    py_spy: Path | None,
) -> Round:
    """One round of the relay."""
    uvloop, source = relay_kind(kind)
    spool_dir = directory / "spool"
    mailbox = sandbox.mailbox
    await fill(spool_dir, mailbox, count, size)
    config = directory / "relay.toml"
    await sandbox.write_config(
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
    paths = [str(source)] if source else []
    if not uvloop:
        (directory / "uvloop.py").write_text("raise ImportError('hidden by the bench')\n")
        paths.append(str(directory))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    await sandbox.clear()
    log = directory / "relay.log"
    relay = subprocess.Popen(
        [sys.executable, "-m", "smtp_oauth", "--config", str(config), "relay"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    spy = None
    if py_spy is not None:
        py_spy.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [shutil.which("py-spy") or "py-spy", "record", "--pid", str(relay.pid), "--rate", "200",
             "--format", "raw", "--output", str(py_spy / f"{directory.name}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        return await time_delivery(
            sandbox,
            count,
            sender_cpu=lambda: cpu_seconds(relay.pid),
            failed=lambda: None if relay.poll() is None else f"the relay exited; see {log}",
            auth_user=mailbox,
        )
    finally:
        relay.terminate()
        relay.wait()
        if spy is not None:
            spy.wait()


async def one_round(
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    postfix: PostfixDelivery | None,
    kind: str,
    directory: Path,
) -> Round:
    if kind.startswith("postfix"):
        assert postfix is not None
        return await postfix.deliver(count=args.messages, size=args.size, reuse=kind == "postfix-reuse")
    directory.mkdir()
    return await deliver(
        sandbox,
        directory,
        kind,
        count=args.messages,
        size=args.size,
        connections=args.connections,
        py_spy=args.py_spy,
    )


def summary(runs: list[Round]) -> str:
    rates = [run.rate for run in runs]
    return (
        f"{', '.join(f'{rate:.0f}' for rate in rates)} msg/s (median {statistics.median(rates):.0f}, "
        f"spread {min(rates):.0f}-{max(rates):.0f}); CPU per message: sender "
        f"{statistics.median(run.cpu for run in runs) * 1000:.2f} ms, fake Exchange "
        f"{statistics.median(run.server_cpu for run in runs) * 1000:.2f} ms (medians)"
    )


async def main(args: argparse.Namespace) -> None:
    kinds = args.kinds.split(",")
    for kind in kinds:
        if not kind.startswith("postfix"):
            relay_kind(kind)
    results: dict[str, list[Round]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # same disk as the project, not tmpfs
        async with SandboxProcess(Path(tmp) / "sandbox") as sandbox:
            wants_postfix = any(kind.startswith("postfix") for kind in kinds)
            postfix = PostfixDelivery(sandbox, connections=args.connections) if wants_postfix else None
            if postfix is not None:
                await postfix.start()
            try:
                for round_ in range(args.rounds):
                    # Interleaved, and each round starts with the next kind: no kind always goes first.
                    for kind in kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]:
                        directory = Path(tmp) / f"{kind.replace('/', '_')}-{round_}"
                        outcome = await one_round(args, sandbox, postfix, kind, directory)
                        results[kind].append(outcome)
                        print(
                            f"round {round_ + 1} {kind}: {outcome.rate:.0f} msg/s, CPU per message "
                            f"{outcome.cpu * 1000:.2f} ms, fake Exchange {outcome.server_cpu * 1000:.2f} ms",
                            flush=True,
                        )
                if postfix is not None:
                    verified, sessions = postfix.sessions()
                    print(f"Postfix: {verified} of its {sessions} TLS sessions to the fake Exchange verified")
            finally:
                if postfix is not None:
                    await postfix.stop()
    for kind, runs in results.items():
        print(f"{kind:13s}: {summary(runs)}")
    median = {kind: statistics.median(r.rate for r in runs) for kind, runs in results.items()}
    cpu = {kind: statistics.median(r.cpu for r in runs) for kind, runs in results.items()}
    relays = [kind for kind in kinds if not kind.startswith("postfix")]
    baselines = [kind for kind in kinds if kind.startswith("postfix")] or relays[-1:]
    for kind in relays:
        for baseline in baselines:
            if kind != baseline:
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
    parser.add_argument(
        "--kinds",
        default="uvloop,asyncio",
        help="comma-separated: uvloop, asyncio (either as KIND@SOURCE: the relay of another source "
        "tree, e.g. an older build unpacked with git archive), postfix, postfix-reuse (root)",
    )
    parser.add_argument("--postfix", action="store_true", help="add postfix,postfix-reuse to --kinds")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="py-spy record each relay round into DIR")
    parsed = parser.parse_args()
    if parsed.postfix:
        parsed.kinds += ",postfix,postfix-reuse"
    asyncio.run(main(parsed))
