"""The listener's refusals on uvloop, the loop `smtp-oauth relay` runs on when it is installed.

uvloop's transports are not subclasses of asyncio's transport classes, so code that recognised a
transport with ``isinstance`` did nothing there. A real relay process (which picks uvloop itself)
and raw sockets: what a client on the wire gets.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env
from tests.relay.relay_harness import USER, RelayProcess, relay_section

pytestmark = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")


@pytest.fixture
async def relay(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[tuple[RelayProcess, int]]:
    """A relay process allowing two connections per client address."""
    sandbox.write_config(relay=relay_section(max_connections_per_client=2))
    process = RelayProcess(sandbox.config_path, tmp_path / "relay.log", clean_env(tmp_path))
    port = await process.start()
    yield process, port
    process.kill(signal.SIGTERM)
    await process.wait()


def first_lines(port: int, count: int) -> list[bytes]:
    """The first line each of ``count`` connections opened at once gets (b"" for a bare close)."""
    connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        return [connection.makefile("rb").readline() for connection in connections]
    finally:
        for connection in connections:
            connection.close()


def failed_logins(port: int, attempts: int) -> tuple[list[bytes], bytes]:
    """Wrong passwords on one connection: the last line of each reply, then what follows them."""
    wrong = base64.b64encode(f"\0{USER}\0wrong guess".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        lines = connection.makefile("rb")
        lines.readline()  # greeting
        connection.sendall(b"EHLO client.example\r\n")
        while lines.readline()[3:4] == b"-":
            pass
        replies = []
        for _ in range(attempts):
            connection.sendall(b"AUTH PLAIN " + wrong + b"\r\n")
            replies.append(lines.readline())
        return replies, lines.read()


async def test_a_connection_over_the_client_limit_is_answered_421(relay: tuple[RelayProcess, int]) -> None:
    """Past max_connections_per_client the client reads 421 4.7.0, and the log holds no traceback."""
    process, port = relay
    lines = await asyncio.to_thread(first_lines, port, 3)
    assert [line[:3] for line in lines] == [b"220", b"220", b"421"]
    assert lines[2].startswith(b"421 4.7.0 Too many connections from your address")
    assert "Traceback" not in process.log.read_text()


async def test_the_session_s_failed_logins_end_with_421_and_a_close(relay: tuple[RelayProcess, int]) -> None:
    """After a session's third failed login the relay answers 535, then 421, and closes the connection."""
    _, port = relay
    replies, rest = await asyncio.to_thread(failed_logins, port, 3)
    assert [reply[:3] for reply in replies] == [b"535"] * 3
    assert rest.startswith(b"421 4.7.0 Too many failed authentication attempts")
