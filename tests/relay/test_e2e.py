"""`smtp-oauth relay` as a real process: kill -9 at any moment loses nothing, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env
from tests.relay.relay_harness import (
    PASSWORD,
    PASSWORD_HASH,
    USER,
    RelayProcess,
    begin_data,
    make_message,
    relay_section,
    rest,
    send_legacy,
    wait_until,
)


@pytest.fixture
async def relay(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(sandbox.config_path, tmp_path / "relay.log", clean_env(tmp_path))
    yield process
    if process.process is not None and process.process.returncode is None:
        process.kill(signal.SIGKILL)
        await process.wait()


def send_until_refused(port: int, sender: str, count: int, acknowledged: list[str]) -> None:
    """Send ``count`` messages on one connection, recording each Message-ID the relay acknowledged."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login(USER, PASSWORD)
            for n in range(count):
                message = make_message(sender, n, size=2000)
                client.send_message(message)
                acknowledged.append(str(message["Message-ID"]))
    except (smtplib.SMTPException, OSError):
        pass  # the relay was killed: what was acknowledged is what counts


def delivered_ids(sandbox: Sandbox) -> Counter[str]:
    return Counter(str(d.message["Message-ID"]) for d in sandbox.delivered())


async def test_kill_9_during_receive_loses_no_accepted_message(sandbox: Sandbox, relay: RelayProcess) -> None:
    """Killing the relay while clients send: after a restart every acknowledged message is delivered."""
    port = await relay.start()
    acknowledged: list[str] = []
    sending = asyncio.create_task(
        asyncio.to_thread(send_until_refused, port, sandbox.tenant.mailbox, 400, acknowledged)
    )
    await wait_until(lambda: len(acknowledged) >= 60, what="60 acknowledged messages")
    relay.kill(signal.SIGKILL)
    await relay.wait()
    await sending
    assert len(acknowledged) < 400, "the kill came too late to interrupt receiving"

    await relay.start()
    await wait_until(lambda: set(acknowledged) <= set(delivered_ids(sandbox)), within=60, what="redelivery")
    duplicates = sum(n - 1 for n in delivered_ids(sandbox).values())
    print(f"kill -9 during receive: {len(acknowledged)} acknowledged, {duplicates} duplicates")
    relay.kill(signal.SIGTERM)
    assert await relay.wait() == 0


async def test_kill_9_during_delivery_delivers_everything_at_least_once(
    sandbox: Sandbox, relay: RelayProcess
) -> None:
    """Killing the relay while it delivers: after a restart every message is delivered at least once."""
    port = await relay.start()
    messages = [make_message(sandbox.tenant.mailbox, n, size=2000) for n in range(80)]
    await asyncio.to_thread(send_legacy, port, messages)
    await wait_until(lambda: len(sandbox.delivered()) >= 10, what="delivery to start")
    relay.kill(signal.SIGKILL)
    await relay.wait()
    assert len(sandbox.delivered()) < 80, "the kill came too late to interrupt delivery"

    await relay.start()
    wanted = {str(m["Message-ID"]) for m in messages}
    await wait_until(lambda: wanted <= set(delivered_ids(sandbox)), within=60, what="all 80 delivered")
    duplicates = sum(n - 1 for n in delivered_ids(sandbox).values())
    print(f"kill -9 during delivery: 80 accepted, {duplicates} duplicates")
    assert duplicates <= 3  # at most the sends in flight on the 3 sessions
    relay.kill(signal.SIGTERM)
    assert await relay.wait() == 0


async def test_a_worker_whose_main_process_died_still_acknowledges_what_it_stored(
    sandbox: Sandbox, relay: RelayProcess
) -> None:
    """relay.workers = 2, the main process SIGKILLed while a client is inside DATA: the worker stores
    the message and answers 250 (it is in the spool; a 4xx would make the client send it again,
    and both copies would be delivered), and a restarted relay delivers it once."""
    sandbox.write_config(relay=relay_section(workers=2))
    port = await relay.start(within=60)  # two accept processes import the relay first
    sender = sandbox.tenant.mailbox
    # Idle connections beside it, so that the worker's stop hangs some up and writes to its closed
    # control channel first (what makes uvloop refuse every later write on it); the kernel spreads
    # connections over both workers, and eight leave the busy one without an idle one 1 time in 256.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        await asyncio.to_thread(begin_data, client, sender)
        for connection in idle:
            await asyncio.to_thread(connection.recv, 1024)  # the greeting: a session of its worker
        relay.kill(signal.SIGKILL)
        await relay.wait()
        for connection in idle:
            await asyncio.to_thread(rest, connection)  # hung up by the stopping worker
            connection.close()
        client.sendall(b"age\r\n.\r\n")
        assert (await asyncio.to_thread(rest, client)).startswith(b"250 "), relay.log.read_text()

    await relay.start(within=60)
    await wait_until(lambda: len(sandbox.delivered()) == 1, within=30, what="delivery after the restart")
    assert sandbox.delivered()[0].message["Subject"] == "cut"
    await asyncio.sleep(1)
    assert len(sandbox.delivered()) == 1
    relay.kill(signal.SIGTERM)
    assert await relay.wait() == 0


async def test_sigterm_stops_gracefully(sandbox: Sandbox, relay: RelayProcess, tmp_path: Path) -> None:
    """SIGTERM mid-delivery: exit 0 in time, nothing left in sending, everything sent after a restart."""
    port = await relay.start()
    messages = [make_message(sandbox.tenant.mailbox, n, size=2000) for n in range(60)]
    await asyncio.to_thread(send_legacy, port, messages)
    await wait_until(lambda: len(sandbox.delivered()) >= 10, what="delivery to start")
    started = time.monotonic()
    relay.kill(signal.SIGTERM)
    assert await relay.wait(within=10) == 0
    assert time.monotonic() - started < 5 + 1  # relay.shutdown_timeout is 5s in relay_section()
    assert "relay stopped" in relay.log.read_text()

    spool = await SqliteSpool.open(tmp_path / "sandbox" / "spool", create=False)
    try:
        counts = await spool.counts_by_state()
    finally:
        await spool.close()
    assert counts["sending"] == 0
    assert counts["delivered"] + counts["queued"] == 60

    await relay.start()
    wanted = {str(m["Message-ID"]) for m in messages}
    await wait_until(lambda: wanted <= set(delivered_ids(sandbox)), within=60, what="all 60 delivered")
    relay.kill(signal.SIGINT)
    assert await relay.wait() == 0


async def test_sighup_reloads_users(sandbox: Sandbox, relay: RelayProcess) -> None:
    """SIGHUP re-reads relay.users from the file: a user added there can log in, no restart."""
    port = await relay.start()
    users = [
        {"name": USER, "password_hash": PASSWORD_HASH},
        {"name": "scanner", "password_hash": PASSWORD_HASH},
    ]
    sandbox.write_config(relay=relay_section(listen=f"127.0.0.1:{port}", users=users))
    relay.kill(signal.SIGHUP)
    reloaded = "relay configuration reloaded"
    await wait_until(lambda: reloaded in relay.log.read_text(), within=30, what="the reload")
    await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)], user="scanner")
    await wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery")
    relay.kill(signal.SIGTERM)
    assert await relay.wait() == 0


async def test_open_relay_refuses_to_start(sandbox: Sandbox, tmp_path: Path) -> None:
    """A non-loopback relay.listen without users exits 78 with a message naming the danger."""
    sandbox.write_config(relay=relay_section(listen="0.0.0.0:0", users=[]))
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "smtp_oauth", "--config", str(sandbox.config_path), "relay"),
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 78
    assert b"open relay" in stderr
