"""The sandbox (fake Entra ID + fake Exchange Online) in a process of its own, for the delivery bench.

In the bench's own process the fake Exchange shared an event loop and the GIL with the bench's
polling, and the relay or Postfix under test faced a server whose speed depended on what else that
process did (rounds spread 50-150 msg/s). Here it runs alone, and every kind faces the same server.

``python bench/sandbox_process.py DIR`` starts ``Sandbox(DIR)`` (logging at WARNING: the sandbox
command logs every message at INFO), prints one JSON line with what a client needs, and then answers
JSON-line requests on stdin, one reply line each, until stdin closes:

    {"op": "config", "path": P, "sections": {...}}   write a config for the sandbox (write_config)
    {"op": "clear"}                                  forget delivered mail and delete its files
    {"op": "received"}                               [[received_at ISO, auth_user], ...] so far

``SandboxProcess`` is the bench's side.
"""

# A script run by hand: its child protocol blocks briefly on purpose.
# ruff: noqa: ASYNC220
from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def serve(directory: Path) -> None:
    from smtp_oauth.logs import configure_logging
    from smtp_oauth.sandbox import Sandbox

    configure_logging("WARNING", "text")
    async with Sandbox(directory) as sandbox:
        tenant = sandbox.tenant
        info = {
            "config": str(sandbox.config_path),
            "mailbox": tenant.mailbox,
            "smtp_port": sandbox.smtp_port,
            "ca_file": str(sandbox.ca_file),
            "mail_dir": str(sandbox.mail_dir),
            "token_endpoint": sandbox.idp.token_endpoint,
            "client_id": tenant.app.client_id,
            "client_secret": tenant.app.client_secret or "",
            "pid": os.getpid(),
        }
        print(json.dumps(info), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            request = json.loads(line)
            reply: dict[str, Any] = {"ok": True}
            if request["op"] == "config":
                sandbox.write_config(Path(request["path"]), **request["sections"])
            elif request["op"] == "clear":
                await asyncio.to_thread(sandbox.exchange.clear)
            elif request["op"] == "received":
                reply["received"] = [
                    [message.received_at.isoformat(), message.auth_user] for message in sandbox.delivered()
                ]
            else:
                reply = {"ok": False, "error": f"unknown op {request['op']!r}"}
            print(json.dumps(reply), flush=True)


class SandboxProcess:
    """``async with SandboxProcess(DIR) as sandbox``: the child, and what the bench asks of it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.info: dict[str, Any] = {}
        self._child: subprocess.Popen[str] | None = None

    async def __aenter__(self) -> SandboxProcess:
        self._child = subprocess.Popen(
            [sys.executable, __file__, str(self.directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._child.stdout is not None
        line = await asyncio.to_thread(self._child.stdout.readline)
        if not line:
            raise RuntimeError("the sandbox process did not start")
        self.info = json.loads(line)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._child is not None:
            assert self._child.stdin is not None
            self._child.stdin.close()
            await asyncio.to_thread(self._child.wait)

    async def _ask(self, **request: Any) -> dict[str, Any]:
        assert self._child is not None
        assert self._child.stdin is not None
        assert self._child.stdout is not None
        self._child.stdin.write(json.dumps(request) + "\n")
        self._child.stdin.flush()
        reply: dict[str, Any] = json.loads(await asyncio.to_thread(self._child.stdout.readline))
        if not reply.get("ok"):
            raise RuntimeError(f"the sandbox process refused {request}: {reply}")
        return reply

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def mailbox(self) -> str:
        return str(self.info["mailbox"])

    @property
    def smtp_port(self) -> int:
        return int(self.info["smtp_port"])

    @property
    def ca_file(self) -> Path:
        return Path(self.info["ca_file"])

    @property
    def config_path(self) -> Path:
        return Path(self.info["config"])

    async def write_config(self, path: Path, **sections: Any) -> None:
        await self._ask(op="config", path=str(path), sections=sections)

    async def clear(self) -> None:
        await self._ask(op="clear")

    def delivered_count(self) -> int:
        """Messages in the fake Exchange's mail folder (its envelope is written last)."""
        with os.scandir(self.info["mail_dir"]) as entries:
            return sum(entry.name.endswith(".json") for entry in entries)

    async def received(self) -> list[tuple[datetime.datetime, str]]:
        """(when, as whom) for each message delivered since the last ``clear``."""
        reply = await self._ask(op="received")
        return [(datetime.datetime.fromisoformat(at), user) for at, user in reply["received"]]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class Round(NamedTuple):
    """One round of one kind: messages per second, and CPU seconds per message of the sender under
    test and of the fake Exchange (the sandbox process), between the first and the last message."""

    rate: float
    cpu: float
    server_cpu: float


async def time_delivery(
    sandbox: SandboxProcess,
    count: int,
    *,
    sender_cpu: Callable[[], float],
    failed: Callable[[], str | None],
    auth_user: str,
) -> Round:
    """Wait until the fake Exchange has ``count`` messages, all logged in as ``auth_user``.

    The CPU counters are read at the first message (start-up, the token request, the first TLS
    handshakes are behind it) and after the last; ``failed`` says why the sender cannot finish.
    """
    deadline = time.monotonic() + 600
    first: tuple[float, float] | None = None
    while (delivered := sandbox.delivered_count()) < count:
        if (why := failed()) is not None or time.monotonic() > deadline:
            raise RuntimeError(f"delivery stalled at {delivered}/{count}: {why or 'timed out'}")
        if first is None and delivered:
            first = sender_cpu(), cpu_seconds(sandbox.pid)
        await asyncio.sleep(0.02)
    last = sender_cpu(), cpu_seconds(sandbox.pid)
    first = first or last
    received = await sandbox.received()
    if {user for _, user in received} != {auth_user} or len(received) != count:
        raise RuntimeError(f"expected {count} messages sent as {auth_user}, got {len(received)}")
    times = [at for at, _ in received]
    elapsed = (max(times) - min(times)).total_seconds()
    spans = count - 1
    return Round(spans / elapsed, (last[0] - first[0]) / spans, (last[1] - first[1]) / spans)


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
