"""The relay beside other senders and on a full disk: idle upstream sessions, 452 at MAIL, health."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import time
from pathlib import Path

from smtp_oauth.relay.delivery.manager import DeliveryManager
from smtp_oauth.relay.spool.base import Message
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox
from smtp_oauth.transport import send_message
from tests.relay.relay_harness import (
    PASSWORD,
    USER,
    make_message,
    relay_section,
    running_relay,
    send_legacy,
    wait_for_count,
)
from tests.relay.test_delivery import FakeUpstream, fast_config, incoming, wait_for_state
from tests.relay.test_service import http_get


async def test_idle_upstream_sessions_are_closed_for_the_mailbox_s_other_senders(sandbox: Sandbox) -> None:
    """After a burst the relay's upstream sessions close within upstream_idle_timeout: no 432 for others."""
    sandbox.write_config(relay=relay_section(upstream_idle_timeout="0.5s"))
    async with running_relay(sandbox) as (service, port):
        mailbox = sandbox.tenant.mailbox
        await asyncio.to_thread(send_legacy, port, [make_message(mailbox, n) for n in range(9)])
        await wait_for_count(service, "delivered", 9)
        assert sandbox.exchange.sessions_peak[mailbox] == 3  # the relay used all three
        await asyncio.sleep(1.5)
        # What send-mail and the library do: their own sessions, same mailbox, three at once.
        results = await asyncio.gather(
            *(
                asyncio.to_thread(send_message, make_message(mailbox, 100 + n), settings=sandbox.settings())
                for n in range(3)
            )
        )
    assert all(result.reply.startswith("250") for result in results)


async def test_mail_below_min_free_space_gets_452_before_anything_is_written(sandbox: Sandbox) -> None:
    """Below relay.min_free_space MAIL FROM gets '452 4.3.1 Insufficient system storage'."""
    sandbox.write_config(relay=relay_section(min_free_space="1PiB"))
    async with running_relay(sandbox) as (_, port):

        def mail_from() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.login(USER, PASSWORD)
                return client.mail(sandbox.tenant.mailbox)

        reply = await asyncio.to_thread(mail_from)
    assert reply == (452, b"4.3.1 Insufficient system storage")


async def test_health_is_unhealthy_while_mail_cannot_be_accepted(sandbox: Sandbox) -> None:
    """/healthz answers 503 while the spool's file system is below relay.min_free_space."""
    sandbox.write_config(relay=relay_section(min_free_space="1PiB", metrics_listen="127.0.0.1:0"))
    async with running_relay(sandbox) as (service, _):
        assert service.metrics_server is not None
        health = await http_get(service.metrics_server.addresses[0][1], "/healthz")
    assert not health.startswith("HTTP/1.1 200")


class FullDiskSpool(SqliteSpool):
    """A real spool whose first ``failures`` mark_delivered calls fail as on a full disk."""

    failures = 0

    async def mark_delivered(
        self,
        queue_id: str,
        *,
        reply: str,
        refused: dict[str, tuple[int, str]] | None = None,
        report: Message | None = None,
    ) -> str | None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await super().mark_delivered(queue_id, reply=reply, refused=refused, report=report)


async def test_upstream_sessions_stay_within_the_limit_after_spool_errors(tmp_path: Path) -> None:
    """When recording an outcome fails the worker's session is closed: at most upstream_connections."""
    spool = await FullDiskSpool.open(tmp_path / "spool", exclusive=True)
    spool.failures = 6
    upstream = FakeUpstream(delay=0.01)
    manager = DeliveryManager(spool, upstream.factory(), fast_config(upstream_connections=3))
    task = asyncio.create_task(manager.run())
    try:
        ids = [await spool.enqueue(incoming(n)) for n in range(12)]
        manager.wake()
        await wait_for_state(spool, ids[-1], "delivered", within=15)
    finally:
        await manager.stop(grace=1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
    assert upstream.peak["box@example.com"] <= 3


async def test_upstream_outage_is_probed_not_tried_per_message(sandbox: Sandbox) -> None:
    """With AUTH refused (535) a queue of 20 costs a few logins, and goes out within a probe of recovery."""
    mailbox = sandbox.tenant.mailbox
    sandbox.inject("AUTH", "535 5.7.3 Authentication unsuccessful", times=10_000)
    async with running_relay(sandbox, probe_first=0.5, probe_max=1.0) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(mailbox, n) for n in range(20)])
        await asyncio.sleep(3.0)
        attempts_while_down = sandbox.exchange.auth_attempts
        sandbox.exchange.clear_injections()
        recovered = asyncio.get_running_loop().time()
        await wait_for_count(service, "delivered", 20, within=10)
        to_delivery = asyncio.get_running_loop().time() - recovered
    # 3 workers may fail at once, then one probe a second; each try is 2 AUTHs (fresh-token retry).
    assert attempts_while_down <= 2 * (3 + 4)
    assert to_delivery < 3.0


async def test_432_shrinks_the_mailbox_s_sessions_and_retries_within_seconds(sandbox: Sandbox) -> None:
    """A 432 4.3.2 makes the pool use one session fewer and retries the message seconds later."""
    sandbox.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", times=1)
    async with running_relay(sandbox, backoff_base=60.0, backoff_cap=3600.0) as (service, port):
        start = asyncio.get_running_loop().time()
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_for_count(service, "delivered", 1, within=10)
        took = asyncio.get_running_loop().time() - start
        assert service.delivery is not None
        [pool] = service.delivery._pools.values()
    assert took < 5.0
    assert pool.health.limit == 2


async def test_deferred_messages_are_tried_at_once_at_start_up(tmp_path: Path) -> None:
    """A message deferred for an hour by a previous run is sent as soon as delivery starts."""
    spool = await SqliteSpool.open(tmp_path / "spool", exclusive=True)
    upstream = FakeUpstream()
    try:
        queue_id = await spool.enqueue(incoming(1))
        [claimed] = await spool.claim_due("box@example.com", 1)
        await spool.mark_deferred(claimed.id, next_attempt_at=time.time() + 3600, reply="421 4.3.2 down")
        manager = DeliveryManager(spool, upstream.factory(), fast_config())
        task = asyncio.create_task(manager.run())
        try:
            await wait_for_state(spool, queue_id, "delivered", within=5)
        finally:
            await manager.stop(grace=1.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await spool.close()
