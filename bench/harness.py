"""What the relay benchmarks share: the test message they send, and the relay as a child process."""

from __future__ import annotations

import asyncio
import re
import sys
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType

LISTENING = re.compile(rb"relay listening on 127\.0\.0\.1:(\d+)")


def bench_message(sender: str, n: int, size: int, *, tag: str) -> EmailMessage:
    """Message ``n`` of a run, about ``size`` bytes of 65-octet lines; its Message-ID names the bench."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.net"
    message["Subject"] = f"bench {n}"
    message["Message-ID"] = f"<{tag}-bench-{n}@sandbox.test>"
    message.set_content(("0123456789abcdef" * 4 + "\n") * max(1, size // 65))
    return message


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status: VmRSS (resident now), VmHWM (its peak)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match.group(1))


class RelayChild:
    """``python -m smtp_oauth --config CONFIG relay`` as a child process, its output in ``log``.

    ``async with`` starts it and waits until its log says where it listens (``port``); leaving
    stops it with SIGTERM, as systemd does.
    """

    def __init__(self, config: Path, log: Path, *, ready_within: float = 60.0) -> None:
        self.config, self.log, self.ready_within = config, log, ready_within
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> RelayChild:
        with self.log.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smtp_oauth", "--config", str(self.config), "relay",
                stdout=log, stderr=log,
            )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + self.ready_within
        while not (found := LISTENING.search(self.log.read_bytes())):
            if self._process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await self._stop()
                raise RuntimeError(f"the relay did not start; see {self.log}")
            await asyncio.sleep(0.1)
        self.port = int(found.group(1))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
