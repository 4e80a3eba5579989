"""The connection and failed-login limits hold across accept workers as in one process.

Real relays with two worker processes (the main process counts for both, ``workers/authority.py``),
and real listeners whose limits are asked over a control channel that is closed or silent.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import signal
import smtplib
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from smtp_oauth.relay.listener.incoming import SPILL_AT
from smtp_oauth.relay.listener.server import ListenerTuning, RelayListener
from smtp_oauth.relay.service import RelayService
from smtp_oauth.relay.workers.remote import RemoteLimits
from smtp_oauth.sandbox import Sandbox
from tests.relay import login_clients
from tests.relay.login_clients import plain, user_under_attack_tuning
from tests.relay.relay_harness import FAST_DELIVERY, PASSWORD, USER, relay_section, wait_until
from tests.relay.test_listener import read_reply, relay_settings

WORKERS = 2
READY_WITHIN = 60.0
WRONG = plain(USER, "wrong-guess")
RIGHT = plain(USER, PASSWORD)
guess_for = functools.partial(login_clients.guess_for, wrong=WRONG)
login = functools.partial(login_clients.login, right=RIGHT)
guesses_until_closed = functools.partial(login_clients.guesses_until_closed, wrong=WRONG)
FAST_FAILURES = ListenerTuning(
    auth_failure_delay=0.2, auth_failure_delay_max=0.2, greet_pause=0.0, shutdown_grace=2.0
)


@asynccontextmanager
async def relay_with_workers(
    sandbox: Sandbox, *, tuning: ListenerTuning = FAST_FAILURES, **relay: Any
) -> AsyncIterator[tuple[RelayService, tuple[str, int]]]:
    """A relay with two accept workers and ``relay`` settings; yields it and its address."""
    sandbox.write_config(relay=relay_section(workers=WORKERS, **relay))
    service = RelayService(sandbox.settings(), delivery_tuning=FAST_DELIVERY, listener_tuning=tuning)
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(ready=ready.set_result))
    try:
        addresses = await asyncio.wait_for(asyncio.shield(ready), READY_WITHIN)
        yield service, addresses[0]
    finally:
        service.stop()
        await asyncio.wait_for(task, 20)


def greeting(address: tuple[str, int], *, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A raw connection and its first reply (220, or the 421 refusing it)."""
    sock = socket.create_connection(address, timeout=20, source_address=(source, 0))
    return sock, read_reply(sock)


def sessions(service: RelayService) -> dict[int, int]:
    assert service.workers is not None
    return service.workers.connections()


async def hold_across_workers(
    service: RelayService, address: tuple[str, int], sources: list[str]
) -> list[socket.socket]:
    """One connection from each of ``sources``, opened again until both workers serve some of them.

    The kernel spreads connections by a hash of their ports: a few tries at most.
    """
    for _ in range(30):
        held = [await asyncio.to_thread(greeting, address, source=source) for source in sources]
        assert [reply[:4] for _, reply in held] == [b"220 "] * len(held)
        await wait_until(lambda: sum(sessions(service).values()) == len(sources), what="the sessions")
        if all(sessions(service).values()):
            return [sock for sock, _ in held]
        for sock, _ in held:
            sock.close()
        await wait_until(lambda: not any(sessions(service).values()), what="the sessions to close")
    raise AssertionError("the connections never landed on both workers")


async def test_one_client_holds_no_more_than_its_limit_across_the_workers(sandbox: Sandbox) -> None:
    """relay.max_connections_per_client = 3 with two workers: the 4th connection gets 421 4.7.0."""
    async with relay_with_workers(sandbox, max_connections_per_client=3) as (service, address):
        held = await hold_across_workers(service, address, ["127.0.0.1"] * 3)
        refused, refusal = await asyncio.to_thread(greeting, address)
        other, other_reply = await asyncio.to_thread(greeting, address, source="127.0.0.2")
        for sock in [*held, refused, other]:
            sock.close()
    assert refusal.startswith(b"421 4.7.0 ")
    assert other_reply.startswith(b"220 ")


async def test_the_total_connection_limit_holds_across_the_workers(sandbox: Sandbox) -> None:
    """relay.max_connections = 3 with two workers: a 4th client, from any address, gets 421 4.7.0."""
    async with relay_with_workers(sandbox, max_connections=3) as (service, address):
        held = await hold_across_workers(service, address, [f"127.0.0.{n}" for n in (2, 3, 4)])
        refused, refusal = await asyncio.to_thread(greeting, address, source="127.0.0.9")
        for sock in [*held, refused]:
            sock.close()
    assert refusal.startswith(b"421 4.7.0 ")


async def test_connections_of_a_killed_worker_are_given_back(sandbox: Sandbox) -> None:
    """Workers SIGKILLed while holding a client's connections: that client is not locked out after."""
    async with relay_with_workers(sandbox, max_connections_per_client=2) as (service, address):
        assert service.workers is not None
        held = [await asyncio.to_thread(greeting, address) for _ in range(2)]
        await wait_until(lambda: sum(sessions(service).values()) == 2, what="the sessions")
        for pid in service.workers.pids:
            os.kill(pid, signal.SIGKILL)
        workers = service.workers
        await wait_until(
            lambda: workers.restarts == WORKERS and workers.alive == WORKERS,
            within=30,
            what="the workers to come back",
        )
        again = [await asyncio.to_thread(greeting, address) for _ in range(2)]
        for sock, _ in [*held, *again]:
            sock.close()
    assert [reply[:4] for _, reply in again] == [b"220 "] * 2


async def test_parallel_guesses_over_both_workers_are_no_faster_than_one(sandbox: Sandbox) -> None:
    """20 connections from one address, over two workers, get one 535 per failure delay, not two."""
    tuning = ListenerTuning(  # only the address's failure delay: the user's limit is out of reach
        auth_failure_delay=0.2,
        auth_failure_delay_max=0.2,
        auth_user_failure_limit=10_000,
        greet_pause=0.0,
        shutdown_grace=2.0,
    )
    async with relay_with_workers(sandbox, tuning=tuning, max_connections_per_client=50) as (_, address):
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=20) as pool:
            counts = await asyncio.gather(
                *(loop.run_in_executor(pool, guess_for, address, 3.0) for _ in range(20))
            )
    assert sum(counts) <= 3.0 / 0.2 + 2


async def test_a_user_under_attack_is_limited_over_both_workers(sandbox: Sandbox) -> None:
    """Guesses at one user from 20 addresses over two workers stop at its failure limit; its own
    address still logs in at once and a new one gets 454."""
    async with relay_with_workers(sandbox, tuning=user_under_attack_tuning(shutdown_grace=2.0)) as (
        _,
        address,
    ):
        code, _ = await asyncio.to_thread(login, address, source="127.0.0.2")
        assert code == 235
        codes = [
            await asyncio.to_thread(functools.partial(guesses_until_closed, address, source=f"127.0.1.{n}"))
            for n in range(1, 21)
        ]
        own_code, own_time = await asyncio.to_thread(login, address, source="127.0.0.2")
        new_code, _ = await asyncio.to_thread(login, address, source="127.0.2.1")
    assert sum(c.count(535) for c in codes) == 3 + 1  # the user's failure limit, then one new address
    assert (own_code, own_time < 2.0) == (235, True)
    assert new_code == 454


@asynccontextmanager
async def listener_asking(
    limits: Callable[[asyncio.StreamWriter], RemoteLimits], *, closed: bool, logins_only: bool = False
) -> AsyncIterator[tuple[str, int]]:
    """A listener whose limits (``logins_only``: its login limits) are asked over a socketpair whose
    other end is closed or silent."""
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_unix_connection(sock=ours)
    remote = limits(writer)
    if closed:
        theirs.close()
        remote.close()  # what the worker's reader loop does when the main process has gone

    async def store(message: object) -> str:
        return "never"

    listener = RelayListener(
        relay_settings(),
        default_mailbox="fern@contoso.com",
        store=store,
        tuning=ListenerTuning(greet_pause=0.0, shutdown_grace=1.0),
        connections=None if logins_only else remote,
        logins=remote,
    )
    await listener.start()
    try:
        yield listener.addresses[0]
    finally:
        await listener.stop()
        writer.close()
        theirs.close()


async def test_a_worker_without_its_main_process_refuses_connections() -> None:
    """Limits that cannot be asked (the main process has gone) refuse with 421 4.7.0, never admit."""
    async with listener_asking(RemoteLimits, closed=True) as address:
        sock, reply = await asyncio.to_thread(greeting, address)
        sock.close()
    assert reply.startswith(b"421 4.7.0 ")


async def test_a_worker_without_its_main_process_refuses_logins() -> None:
    """Login limits that cannot be asked: AUTH gets 454 4.7.0 and the password is not checked."""
    async with listener_asking(RemoteLimits, closed=True, logins_only=True) as address:

        def auth() -> int:
            with smtplib.SMTP(*address, timeout=10) as client:
                client.ehlo("printer")
                code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0fern\0whatever").decode())
            return code

        code = await asyncio.to_thread(auth)
    assert code == 454


async def test_a_silent_main_process_gets_connections_refused() -> None:
    """A main process that does not answer an admission in time: 421 4.7.0, not an open door."""
    limits = functools.partial(RemoteLimits, admit_timeout=0.3)
    async with listener_asking(limits, closed=False) as address:
        sock, reply = await asyncio.to_thread(greeting, address)
        sock.close()
    assert reply.startswith(b"421 4.7.0 ")


def stall_in_data(sock: socket.socket, sender: str, size: int) -> None:
    """Log in on a greeted connection, start DATA and send ``size`` bytes of body, never its end."""
    for command in (b"EHLO x\r\n", f"AUTH PLAIN {RIGHT}\r\n".encode()):
        sock.sendall(command)
        read_reply(sock)
    sock.sendall(f"MAIL FROM:<{sender}>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n".encode())
    while b"354" not in read_reply(sock):
        pass
    line = b"y" * 76 + b"\r\n"
    sock.sendall(f"From: {sender}\r\n\r\n".encode() + line * (size // len(line)))


async def test_one_client_pins_no_more_disk_than_its_share_across_the_workers(sandbox: Sandbox) -> None:
    """Stalled DATA transfers of one address on both workers hold at most one allowance on disk, not two."""
    share = 3 * SPILL_AT
    tuning = replace(FAST_FAILURES, unfinished_bytes_per_client=share)
    async with relay_with_workers(sandbox, tuning=tuning) as (service, address):
        held = await hold_across_workers(service, address, ["127.0.0.1"] * 6)
        sender = sandbox.settings().smtp.username
        for sock in held:
            await asyncio.to_thread(stall_in_data, sock, sender, 2 * SPILL_AT)  # two spills each
        incoming = service.listener.incoming_dir
        assert incoming is not None
        await asyncio.sleep(1.0)
        on_disk = sum(path.stat().st_size for path in incoming.iterdir())
        for sock in held:
            sock.close()
    assert SPILL_AT <= on_disk <= share
