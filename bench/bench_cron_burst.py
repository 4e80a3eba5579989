"""Benchmark: 20 cron jobs mailing at the same minute, all for one mailbox, direct vs via the relay.

Exchange Online allows a mailbox 3 concurrent SMTP sessions and 30 messages a minute; the sandbox's
fake Exchange enforces both (``432 4.3.2`` beyond 3 sessions). Cron does not retry: a ``send-mail``
that exits 75 loses its mail. Both ways run in one process, one after the other, against the same
sandbox:

- direct: 20 ``send-mail -t`` at once, each to Exchange itself;
- via the relay: the same 20 with ``[send_mail] via = "relay"``; the relay paces them.

Reported: exit codes, messages delivered, seconds until the last one was delivered, the most
upstream sessions the mailbox had at once.

    .venv/bin/python bench/bench_cron_burst.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.tokens.provider import create_token_provider

SEND_MAIL = Path(sys.executable).parent / "send-mail"
CRON_MESSAGE = "From: root\nTo: ops{n}@example.test\nSubject: Cron <root@host> job {n}\n\noutput of job {n}\n"


async def burst(config: Path, jobs: int, env: dict[str, str], cwd: Path) -> collections.Counter[int]:
    async def one(n: int) -> int:
        process = await asyncio.create_subprocess_exec(
            str(SEND_MAIL), "--config", str(config), "-t", "-i", "-f", "root",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=env, cwd=cwd,
        )  # fmt: skip
        await process.communicate(CRON_MESSAGE.format(n=n).encode())
        assert process.returncode is not None
        return process.returncode

    return collections.Counter(await asyncio.gather(*(one(n) for n in range(jobs))))


async def wait_for(sandbox: Sandbox, count: int, *, within: float) -> float:
    """Seconds until ``count`` messages were delivered (polled: the sandbox has no event for it)."""
    start = time.monotonic()
    while time.monotonic() - start < within:  # polling a counter, not waiting on an event
        if len(sandbox.delivered()) >= count:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def codes(counter: collections.Counter[int]) -> str:
    return ", ".join(f"{count} x exit {code}" for code, count in sorted(counter.items()))


async def run(jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cron-", dir="/tmp") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_OAUTH_")}
        env.update(XDG_STATE_HOME=str(work / "state"), XDG_RUNTIME_DIR=str(work / "run"), HOME=tmp)
        async with Sandbox(work / "sb", max_sessions_per_mailbox=3, messages_per_minute=30) as sandbox:
            mailbox = sandbox.settings().smtp.username
            await create_token_provider(sandbox.settings()).access_token()  # the day's first token

            start = time.monotonic()
            direct = await burst(sandbox.config_path, jobs, env, work)
            direct_seconds = await wait_for(sandbox, direct[0], within=5) + (time.monotonic() - start)
            direct_delivered = len(sandbox.delivered())
            direct_peak = sandbox.exchange.sessions_peak.get(mailbox, 0)
            sandbox.exchange.clear()
            await asyncio.sleep(1)  # the direct sessions are closed

            config = sandbox.write_config(
                work / "relay.toml",
                relay={
                    "listen": "127.0.0.1:0",
                    "submission_socket": str(work / "submit.sock"),
                    "users": [{"name": "unused", "password_hash": hash_password("unused-pw")}],
                },
                send_mail={"via": "relay"},
            )
            sandbox.exchange._handler.slots.peak.clear()  # the relay's own peak, not the direct burst's
            relay = RelayService(load_settings(config))
            ready = asyncio.Event()
            task = asyncio.create_task(relay.run(ready=lambda _: ready.set()))
            await ready.wait()
            start = time.monotonic()
            via_relay = await burst(config, jobs, env, work)
            accepted_seconds = time.monotonic() - start
            relay_seconds = await wait_for(sandbox, jobs, within=180) + accepted_seconds
            relay_delivered = len(sandbox.delivered())
            relay_peak = sandbox.exchange.sessions_peak.get(mailbox, 0)
            relay.stop()
            await task

    print(f"{jobs} concurrent cron sends for one mailbox; fake Exchange: 3 sessions, 30 messages/min")
    print(f"{'':<14}{'exit codes':<26}{'delivered':>10}{'last delivered':>16}{'peak sessions':>15}")
    print(f"{'direct':<14}{codes(direct):<26}{direct_delivered:>10}{direct_seconds:>15.1f}s{direct_peak:>15}")
    print(
        f"{'via relay':<14}{codes(via_relay):<26}{relay_delivered:>10}{relay_seconds:>15.1f}s{relay_peak:>15}"
    )
    print(
        f"via relay: all {jobs} handed over (exit 0) within {accepted_seconds:.2f}s, then paced by the relay"
    )
    lost = jobs - direct_delivered
    print(f"direct: {lost} of {jobs} messages lost (cron does not retry a send-mail that exits 75)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20)
    asyncio.run(run(parser.parse_args().jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
