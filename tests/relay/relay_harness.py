"""Shared pieces of the relay's end-to-end tests: a sandbox-backed relay and a legacy smtplib client."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from smtp_oauth.relay.listener.session import ListenerTuning
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.relay.service import RelayService
from smtp_oauth.relay.spool.base import QueueState
from smtp_oauth.sandbox import Sandbox

USER, PASSWORD = "legacy-app", "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD, log2_n=4)  # cheap on purpose: tests log in hundreds of times
FAST_DELIVERY = {
    "backoff_base": 0.1,
    "backoff_cap": 0.3,
    "poll_interval": 0.3,
    "probe_first": 0.2,
    "probe_max": 0.5,
}


def relay_section(**extra: Any) -> dict[str, Any]:
    """[relay] for tests: a free port, one user, unpaced, one process (test_workers.py runs several)."""
    return {
        "listen": "127.0.0.1:0",
        "workers": 1,
        "messages_per_minute": 0,
        "shutdown_timeout": "5s",
        "users": [{"name": USER, "password_hash": PASSWORD_HASH}],
        **extra,
    }


def make_message(sender: str, n: int = 0, *, to: str = "someone@example.net", size: int = 0) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"legacy message {n}"
    message["Message-ID"] = f"<legacy-{n}@test>"
    message.set_content(f"hello {n}\n" + "x" * size)
    return message


def send_legacy(
    port: int, messages: list[EmailMessage], *, user: str = USER, password: str = PASSWORD
) -> None:
    """What FERN or a scanner does: plain smtplib, AUTH on loopback, one connection for all."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(user, password)
        for message in messages:
            client.send_message(message)


async def send_concurrently(port: int, batches: list[list[EmailMessage]]) -> None:
    """Each batch over its own legacy connection, all connections at once."""
    await asyncio.gather(*(asyncio.to_thread(send_legacy, port, batch) for batch in batches))


@asynccontextmanager
async def running_relay(
    sandbox: Sandbox, *, ready_within: float = 10.0, **delivery: float
) -> AsyncIterator[tuple[RelayService, int]]:
    """An in-process relay on the sandbox's settings; yields it and its port once it listens."""
    service = RelayService(
        sandbox.settings(),
        delivery_tuning={**FAST_DELIVERY, **delivery},
        listener_tuning=ListenerTuning(greet_pause=0.0, shutdown_grace=4.0),
    )
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(ready=ready.set_result))
    try:
        addresses = await asyncio.wait_for(asyncio.shield(ready), ready_within)
        yield service, addresses[0][1]
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)


async def wait_until(predicate: Callable[[], bool], *, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def states(service: RelayService) -> dict[QueueState, int]:
    assert service.spool is not None
    return await service.spool.counts_by_state()


async def wait_for_count(
    service: RelayService, state: QueueState, count: int, *, within: float = 10.0
) -> None:
    """Until ``count`` messages are in ``state`` (Exchange stores a message before its 250 reaches us)."""
    deadline = time.monotonic() + within
    while (await states(service))[state] != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {count} {state}: {await states(service)}")
        await asyncio.sleep(0.05)


class RelayProcess:
    """``python -m smtp_oauth relay`` as a child process; its log goes to a file (a pipe could fill)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.config, self.log, self.env = config, log, env
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, *, within: float = 20) -> int:
        """Start it and return the port it listens on (read from its log)."""
        import re
        import sys

        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smtp_oauth", "--config", str(self.config), "relay",
                stdout=log, stderr=log, env=self.env,
            )  # fmt: skip
        pattern = re.compile(r"relay listening on 127\.0\.0\.1:(\d+)")

        def listening() -> bool:
            match = pattern.search(self.log.read_text(errors="replace")[offset:])
            if match:
                self.port = int(match.group(1))
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"the relay exited:\n{self.log.read_text()}")
            return bool(match)

        await wait_until(listening, within=within, what="the relay to listen")
        return self.port

    def kill(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, within: float = 20) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), within)


def rest(sock: socket.socket) -> bytes:
    """What the server still sends before the connection ends (a reset counts as the end)."""
    sock.settimeout(10)
    try:
        return sock.recv(1024)
    except ConnectionResetError:
        return b""


def begin_data(sock: socket.socket, sender: str) -> None:
    """Log in, start a transaction and send half a message, without its end."""
    file = sock.makefile("rb")

    def reply() -> bytes:
        line = file.readline()
        while line[3:4] == b"-":
            line = file.readline()
        return line

    reply()  # greeting
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    for command, code in (
        ("EHLO client", b"250"),
        (f"AUTH PLAIN {token}", b"235"),
        (f"MAIL FROM:<{sender}>", b"250"),
        ("RCPT TO:<someone@example.net>", b"250"),
        ("DATA", b"354"),
    ):
        sock.sendall(command.encode() + b"\r\n")
        assert reply().startswith(code), command
    sock.sendall(f"From: {sender}\r\nSubject: cut\r\n\r\nhalf a mess".encode())
