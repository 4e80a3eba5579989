"""Benchmark: per-message wall time, CPU and peak RSS of ``send-mail`` against a minimal stdlib script.

Legacy software runs ``send-mail`` once per message, so what counts is the whole process: start-up,
imports, settings, and handing the message on. The yardstick is the least a Python program can do
for the same exchange: stdlib ``smtplib`` with the token handed in (STARTTLS, AUTH XOAUTH2, one
message). Measured, interleaved, in one run against the sandbox (fake Entra ID + fake Exchange
Online on 127.0.0.1) and a relay, both on a background thread of this process:

- ``send-mail`` direct, token cached (target <= 1.5x the script);
- ``send-mail`` with ``[send_mail] via = "relay"``: the message handed to the relay's submission
  socket, exit 0 once it is in the spool (target <= 1.0x the script).

CPU and peak RSS are each child's own (``os.wait4``; GNU time for the RSS). On a busy machine
the CPU ratios are the steadier figures: wall time then measures the scheduler as well.

    .venv/bin/python bench/bench_send_mail.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import os
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

from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.tokens.provider import cached_access_token

DIRECT_TARGET, RELAY_TARGET = 1.5, 1.0
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


class Background:
    """The sandbox and a relay on their own event loop in a thread, so this script can block."""

    def __init__(self, directory: Path) -> None:
        # The relay keeps its upstream sessions a few seconds (upstream_idle_timeout), and the
        # direct sends and the script use the same mailbox: room for all, so nothing gets 432.
        self.sandbox = Sandbox(directory, max_sessions_per_mailbox=10)
        self.relay: RelayService | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox", daemon=True)
        self._relay_task: concurrent.futures.Future[None] | None = None

    def __enter__(self) -> Background:
        self._thread.start()
        self._call(self.sandbox.start())
        return self

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)  # type: ignore[arg-type]

    def start_relay(self, config: Path) -> None:
        ready = threading.Event()
        self.relay = RelayService(load_settings(config))
        self._relay_task = asyncio.run_coroutine_threadsafe(
            self.relay.run(ready=lambda _: ready.set()), self._loop
        )
        if not ready.wait(30):
            sys.exit("the relay did not start")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.relay is not None and self._relay_task is not None:
            self._loop.call_soon_threadsafe(self.relay.stop)
            self._relay_task.result(timeout=60)
        self._call(self.sandbox.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Sample:
    """One run: wall time, CPU time (user + system) and peak RSS of the client process."""

    wall: float
    cpu: float
    rss_kib: int


GNU_TIME = Path("/usr/bin/time")


def timed(command: Sequence[str], env: dict[str, str], cwd: Path) -> Sample:
    """Run ``command`` once. CPU is the child's own (``os.wait4``, microseconds); peak RSS comes from
    GNU time, which starts the command from its own small image: a child forked straight from this
    process would report this process's size (Linux keeps the pre-exec high-water mark)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        launcher = [str(GNU_TIME), "-f", "%M", "-o", report.name] if GNU_TIME.exists() else []
        start = time.perf_counter()
        process = subprocess.Popen(
            [*launcher, *command], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
        if process.returncode != 0:
            sys.exit(f"{command[0]} failed ({process.returncode}): {stderr.decode(errors='replace')}")
        rss = report.read().split()
    return Sample(elapsed, usage.ru_utime + usage.ru_stime, int(rss[-1]) if rss else 0)


def median(samples: list[Sample], what: Callable[[Sample], float]) -> float:
    return statistics.median(what(sample) for sample in samples)


def row(name: str, samples: list[Sample], baseline: list[Sample]) -> str:
    walls = sorted(sample.wall for sample in samples)
    p90 = walls[min(len(walls) - 1, int(len(walls) * 0.9))]
    wall, base = median(samples, lambda s: s.wall), median(baseline, lambda s: s.wall)
    cpu, rss = median(samples, lambda s: s.cpu), median(samples, lambda s: s.rss_kib)
    return (
        f"{name:<36}{wall * 1000:>8.1f}{p90 * 1000:>8.1f}{cpu * 1000:>9.1f}{rss / 1024:>9.1f}"
        f"{wall / base:>8.2f}x{cpu / median(baseline, lambda s: s.cpu):>8.2f}x"
        f"{rss / median(baseline, lambda s: s.rss_kib):>8.2f}x"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="[LABEL=]SEND_MAIL",
        help="also time this send-mail (direct and via the relay), e.g. an older version's; repeatable",
    )
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-send-mail-", dir="/tmp") as tmp,
        Background(Path(tmp) / "sb") as background,
    ):
        work, sb = Path(tmp), background.sandbox
        # An installed package has its .pyc files; with PYTHONDONTWRITEBYTECODE set (as in some CI
        # and container set-ups) every run would recompile smtp_oauth and measure the compiler.
        # SSL_CERT_FILE (which some containers set) makes OpenSSL parse the whole CA bundle, ~20 ms,
        # and send-mail honours it; cron, the caller measured here, passes no such variable.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SMTP_OAUTH_") and k not in {"PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE"}
        }
        env.update(XDG_STATE_HOME=str(work / "state"), XDG_CONFIG_HOME=str(work / "config"))
        env.update(XDG_RUNTIME_DIR=str(work / "run"))
        relay_config = sb.write_config(
            work / "relay.toml",
            relay={
                "listen": "127.0.0.1:0",
                "submission_socket": str(work / "submit.sock"),
                "messages_per_minute": 0,
                # at hash-password's cost: the relay refuses a weaker hash
                "users": [{"name": "bench", "password_hash": hash_password("unused-bench")}],
            },
            send_mail={"via": "relay"},
        )
        background.start_relay(relay_config)
        settings = sb.settings()
        mailbox = settings.smtp.username
        message = ["-s", "benchmark", "--body", "x", RECIPIENT]
        direct = [str(SEND_MAIL), "--config", str(sb.config_path), *message]
        via_relay = [str(SEND_MAIL), "--config", str(relay_config), *message]

        # Warm-up: fetches and caches the token, writes .pyc files and the settings snapshots.
        timed(direct, env, work)
        timed(via_relay, env, work)
        token = cached_access_token(settings)
        if token is None:
            sys.exit("the token cache did not serve a token after the warm-up; the figures would be wrong")
        stdlib = [sys.executable, "-c", STDLIB_SCRIPT, sb.smtp_host, str(sb.smtp_port), str(sb.ca_file)]
        stdlib += [mailbox, RECIPIENT]
        stdlib_env = {**env, "BENCH_TOKEN": token}
        bare = [sys.executable, "-c", "pass"]

        commands: dict[str, Callable[[], Sample]] = {
            "python -c pass (start-up)": lambda: timed(bare, env, work),
            "smtplib script (baseline)": lambda: timed(stdlib, stdlib_env, work),
            "send-mail direct (cached)": lambda: timed(direct, env, work),
            "send-mail via relay": lambda: timed(via_relay, env, work),
        }
        if args.compare:
            # An older version knows fewer keys: the sandbox's configuration without the [graph] table.
            older_config = sb.write_config(work / "compare.toml", graph=None)
        for index, spec in enumerate(args.compare):
            label, _, path = spec.rpartition("=")
            # Its own state directory: versions would void each other's settings snapshot.
            other_env = {**env, "XDG_STATE_HOME": str(work / f"state-compare-{index}")}
            other = [path, "--config", str(older_config), *message]
            other_relay = [path, "--config", str(relay_config), *message]
            for _ in range(2):  # the token, then the snapshot (if that version keeps one)
                timed(other, other_env, work)
                timed(other_relay, other_env, work)
            label = label or "compare"
            commands[f"{label} (direct)"] = functools.partial(timed, other, other_env, work)
            commands[f"{label} (via relay)"] = functools.partial(timed, other_relay, other_env, work)
        samples: dict[str, list[Sample]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so drift (CPU frequency, caches) hits all alike
            for name, run in commands.items():
                samples[name].append(run())
        delivered_directly = len(sb.delivered())

    baseline = samples["smtplib script (baseline)"]
    print(f"send-mail benchmark: {args.runs} runs each, interleaved; sandbox and relay on 127.0.0.1")
    delivered = f"{delivered_directly} messages at the sandbox"
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {delivered}")
    ratios = f"{'wall':>9}{'CPU':>9}{'RSS':>9}"
    print(f"{'median of each':<36}{'wall ms':>8}{'p90':>8}{'CPU ms':>9}{'RSS MiB':>9}{ratios}")
    for name, values in samples.items():
        print(row(name, values, baseline))
    for name, target in (("send-mail direct (cached)", DIRECT_TARGET), ("send-mail via relay", RELAY_TARGET)):
        ratio = median(samples[name], lambda s: s.wall) / median(baseline, lambda s: s.wall)
        verdict = "within" if ratio <= target else "OVER"
        print(f"{name}: {ratio:.2f}x the smtplib script's wall time ({verdict} the {target}x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
