"""relay.workers: accept processes on SO_REUSEPORT sockets and one spool, the main process delivering.

A real relay service in this process (delivery, submission socket, metrics) with real worker
processes (``python -m smtp_oauth.relay.workers.child``), real SQLite, the sandbox's fake Exchange.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smtp_oauth.relay.client import SubmissionClient
from smtp_oauth.relay.passwords import hash_password
from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox import Sandbox
from tests.relay import relay_harness as harness

WORKERS = 2
READY_WITHIN = 60.0  # each worker imports the relay and opens the spool; slow on a loaded machine


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="smtp-oauth-", dir="/tmp") as directory:
        yield Path(directory) / "submit.sock"


@pytest.fixture
async def relay(sandbox: Sandbox, socket_path: Path) -> AsyncIterator[tuple[RelayService, int]]:
    """A relay with two accept workers, its submission socket and metrics."""
    sandbox.write_config(
        relay=harness.relay_section(
            workers=WORKERS, submission_socket=str(socket_path), metrics_listen="127.0.0.1:0"
        )
    )
    async with harness.running_relay(sandbox, ready_within=READY_WITHIN) as running:
        yield running


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_every_worker_is_running_and_accepting(relay: tuple[RelayService, int]) -> None:
    """relay.workers = 2 starts two accept processes besides the main one."""
    service, _ = relay
    assert service.workers is not None
    assert service.workers.alive == WORKERS
    assert len(set(service.workers.pids)) == WORKERS
    assert os.getpid() not in service.workers.pids


async def test_mail_accepted_by_the_workers_is_delivered_by_the_main_process(
    sandbox: Sandbox, relay: tuple[RelayService, int]
) -> None:
    """Ten messages over five connections at once: all stored, woken and delivered, each once."""
    _, port = relay
    sender = sandbox.settings().smtp.username
    batches = [[harness.make_message(sender, 2 * c + n) for n in range(2)] for c in range(5)]
    await harness.send_concurrently(port, batches)
    await harness.wait_until(lambda: len(sandbox.delivered()) == 10, what="ten deliveries")
    subjects = sorted(str(m.message["Subject"]) for m in sandbox.delivered())
    assert subjects == sorted(f"legacy message {n}" for n in range(10))


async def test_concurrent_connections_are_spread_over_the_workers(
    relay: tuple[RelayService, int],
) -> None:
    """Connections that stay open are served by more than one worker process (SO_REUSEPORT)."""
    service, port = relay
    assert service.workers is not None
    # Off this loop: the main process, running here, admits each connection the workers accept.
    clients = [await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=30) for _ in range(8)]
    try:
        for client in clients:
            await asyncio.to_thread(client.login, harness.USER, harness.PASSWORD)
        workers = service.workers
        await harness.wait_until(lambda: sum(workers.connections().values()) == 8, what="eight sessions")
        served = workers.connections()
    finally:
        for client in clients:
            client.close()
    assert len([n for n in served.values() if n]) == WORKERS, served


async def test_metrics_count_what_every_worker_accepted(
    sandbox: Sandbox, relay: tuple[RelayService, int]
) -> None:
    """/metrics: accepted_total sums the workers, and shows how many run."""
    service, port = relay
    sender = sandbox.settings().smtp.username
    await harness.send_concurrently(port, [[harness.make_message(sender, c)] for c in range(4)])
    text = await service.metrics()
    assert "smtp_oauth_relay_accepted_total 4\n" in text
    assert f"smtp_oauth_relay_workers {WORKERS}\n" in text


async def test_a_killed_worker_is_started_again(sandbox: Sandbox, relay: tuple[RelayService, int]) -> None:
    """SIGKILL of a worker: the main process starts another; mail keeps being accepted."""
    service, port = relay
    assert service.workers is not None
    victim = service.workers.pids[0]
    os.kill(victim, signal.SIGKILL)
    await harness.wait_until(
        lambda: (
            service.workers is not None and service.workers.restarts == 1 and service.workers.alive == WORKERS
        ),
        within=20,
        what="the worker to be started again",
    )
    assert victim not in service.workers.pids
    await asyncio.to_thread(
        harness.send_legacy, port, [harness.make_message(sandbox.settings().smtp.username, 1)]
    )
    await harness.wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery")


async def test_workers_killed_mid_data_lose_nothing_acknowledged(
    sandbox: Sandbox, relay: tuple[RelayService, int]
) -> None:
    """Both workers SIGKILLed while a client is inside DATA: every message that got 250 is delivered,
    the one cut off is not half-stored, and the workers come back."""
    service, port = relay
    assert service.workers is not None
    sender = sandbox.settings().smtp.username
    await asyncio.to_thread(harness.send_legacy, port, [harness.make_message(sender, n) for n in range(3)])
    cut = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        await asyncio.to_thread(harness.begin_data, cut, sender)
        for pid in service.workers.pids:
            os.kill(pid, signal.SIGKILL)
        assert await asyncio.to_thread(harness.rest, cut) == b""  # cut off, never a 250
    finally:
        cut.close()
    await harness.wait_until(lambda: len(sandbox.delivered()) == 3, what="the acknowledged messages")
    await harness.wait_until(
        lambda: service.workers is not None and service.workers.alive == WORKERS,
        within=30,
        what="the workers to come back",
    )
    await asyncio.sleep(0.5)
    assert len(sandbox.delivered()) == 3
    assert sum((await harness.states(service)).values()) == 3


async def test_local_submissions_still_go_to_the_main_process(
    sandbox: Sandbox, relay: tuple[RelayService, int], socket_path: Path
) -> None:
    """The submission socket (send-mail via the relay) works beside the workers."""
    sender = sandbox.settings().smtp.username
    message = f"From: {sender}\r\nTo: a@example.test\r\nSubject: local\r\n\r\nhi\r\n".encode()

    def submit() -> None:
        with SubmissionClient([socket_path], timeout=10) as client:
            client.send(message, sender=sender, recipients=["a@example.test"])

    await asyncio.to_thread(submit)
    await harness.wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery of the local submission")


async def test_a_reload_reaches_the_workers(sandbox: Sandbox, relay: tuple[RelayService, int]) -> None:
    """SIGHUP's reload: a user added to the file can log in through the workers."""
    service, port = relay
    section = harness.relay_section(workers=WORKERS, submission_socket=str(service.submission.path))
    section["users"] = [
        *section["users"],
        {"name": "added", "password_hash": hash_password("added-password", log2_n=4)},
    ]
    sandbox.write_config(relay=section)
    assert await service.reload()

    def login() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.login("added", "added-password")

    for _ in range(2 * WORKERS):  # new connections land on either worker
        await asyncio.to_thread(login)


async def test_a_graceful_stop_stops_every_worker(sandbox: Sandbox, socket_path: Path) -> None:
    """stop() (SIGTERM) ends the workers too, and the port closes."""
    sandbox.write_config(relay=harness.relay_section(workers=WORKERS, submission_socket=str(socket_path)))
    async with harness.running_relay(sandbox, ready_within=READY_WITHIN) as (service, port):
        assert service.workers is not None
        pids = service.workers.pids
    assert pids
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
