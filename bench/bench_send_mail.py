"""Benchmark: per-message wall time of ``send-mail`` (cached token) against a minimal smtplib script.

Legacy software runs ``send-mail`` once per message, so what counts is the whole process: start-up,
imports, settings, reading the cached token, STARTTLS, AUTH XOAUTH2 and one message. The yardstick
is the least a Python program can do for the same exchange: stdlib ``smtplib`` with the token
handed in. Both run N times, interleaved, against the sandbox (fake Entra ID + fake Exchange Online
on 127.0.0.1, run here on a background thread). Target: send-mail <= 1.5x the smtplib script.

    .venv/bin/python bench/bench_send_mail.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.tokens.provider import cached_access_token

TARGET_RATIO = 1.5
RECIPIENT = "bench@example.com"
SEND_MAIL = Path(sys.executable).parent / "send-mail"

# The yardstick: what a hand-written stdlib script does, the token handed in by environment.
STDLIB_SCRIPT = """
import base64, os, smtplib, ssl, sys
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

host, port, ca_file, user, to = sys.argv[1:6]
message = EmailMessage()
message["From"] = user
message["To"] = to
message["Subject"] = "benchmark"
message["Date"] = formatdate(localtime=True)
message["Message-ID"] = make_msgid(domain=user.rpartition("@")[2])
message.set_content("benchmark message\\n")
with smtplib.SMTP(host, int(port), timeout=30) as smtp:
    smtp.ehlo()
    smtp.starttls(context=ssl.create_default_context(cafile=ca_file))
    smtp.ehlo()
    blob = base64.b64encode(f"user={user}\\x01auth=Bearer {os.environ['BENCH_TOKEN']}\\x01\\x01".encode())
    code, reply = smtp.docmd("AUTH", "XOAUTH2 " + blob.decode())
    if code != 235:
        sys.exit(f"AUTH failed: {code} {reply!r}")
    smtp.send_message(message, from_addr=user, to_addrs=[to])
"""


class BackgroundSandbox:
    """The sandbox on its own event loop in a thread, so this script can block on subprocesses."""

    def __init__(self, directory: Path) -> None:
        self.sandbox = Sandbox(directory)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox", daemon=True)

    def __enter__(self) -> Sandbox:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sandbox.start(), self._loop).result(timeout=60)
        return self.sandbox

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Sample:
    """One run: wall time, and the CPU time (user + system) the client process used."""

    wall: float
    cpu: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: Sequence[str], env: dict[str, str], cwd: Path) -> Sample:
    cpu_before, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu_before
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return Sample(elapsed, cpu)


def _row(name: str, samples: list[Sample]) -> str:
    walls = sorted(sample.wall for sample in samples)
    p90 = walls[min(len(walls) - 1, int(len(walls) * 0.9))]
    cpu = statistics.median(sample.cpu for sample in samples)
    return (
        f"{name:<28}{statistics.median(walls) * 1000:>9.1f}{p90 * 1000:>9.1f}"
        f"{walls[0] * 1000:>9.1f}{cpu * 1000:>11.1f}"
    )


def _median_wall(samples: list[Sample]) -> float:
    return statistics.median(sample.wall for sample in samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-send-mail-") as tmp,
        BackgroundSandbox(Path(tmp) / "sb") as sb,
    ):
        work = Path(tmp)
        # An installed package has its .pyc files; with PYTHONDONTWRITEBYTECODE set (as in some CI
        # and container set-ups) every run would recompile smtp_oauth and measure the compiler.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SMTP_OAUTH_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update(XDG_STATE_HOME=str(work / "state"), XDG_CONFIG_HOME=str(work / "config"))
        settings = sb.settings()
        mailbox = settings.smtp.username
        send_mail = [
            str(SEND_MAIL),
            "--config",
            str(sb.config_path),
            "-s",
            "benchmark",
            "--body",
            "x",
            RECIPIENT,
        ]

        _timed(send_mail, env, work)  # warm-up: fetches the token once and caches it, writes .pyc files
        token = cached_access_token(settings)
        if token is None:
            sys.exit("the token cache did not serve a token after the warm-up; the figures would be wrong")
        stdlib = [sys.executable, "-c", STDLIB_SCRIPT, sb.smtp_host, str(sb.smtp_port), str(sb.ca_file)]
        stdlib += [mailbox, RECIPIENT]
        stdlib_env = {**env, "BENCH_TOKEN": token}
        bare = [sys.executable, "-c", "pass"]

        commands: dict[str, Callable[[], Sample]] = {
            "python -c pass (start-up)": lambda: _timed(bare, env, work),
            "smtplib script": lambda: _timed(stdlib, stdlib_env, work),
            "send-mail (cached token)": lambda: _timed(send_mail, env, work),
        }
        samples: dict[str, list[Sample]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so drift (CPU frequency, caches) hits all alike
            for name, run in commands.items():
                samples[name].append(run())
        delivered = len(sb.delivered())

    ours, yardstick = samples["send-mail (cached token)"], samples["smtplib script"]
    ratio = _median_wall(ours) / _median_wall(yardstick)
    cpu_ratio = statistics.median(s.cpu for s in ours) / statistics.median(s.cpu for s in yardstick)
    print(f"send-mail benchmark: {args.runs} runs each, sandbox on 127.0.0.1, STARTTLS + XOAUTH2 + 1 message")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {delivered} messages delivered")
    print(f"{'':<28}{'wall ms':>9}{'p90':>9}{'min':>9}{'client CPU':>11}")
    print(f"{'':<28}{'median':>9}{'':>9}{'':>9}{'median':>11}")
    for name, values in samples.items():
        print(_row(name, values))
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"ratio send-mail / smtplib, median wall: {ratio:.2f}x  ({verdict} the {TARGET_RATIO}x target)")
    print(f"ratio send-mail / smtplib, median client CPU: {cpu_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
