"""The relay service end to end, in process: smtplib client -> relay -> fake Exchange Online."""

from __future__ import annotations

import asyncio
import time

from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import (
    make_message,
    relay_section,
    running_relay,
    send_legacy,
    states,
    wait_for_count,
    wait_until,
)


async def test_legacy_client_mail_reaches_exchange(sandbox: Sandbox) -> None:
    """A message from smtplib with a local password arrives at Exchange through XOAUTH2 as the mailbox."""
    mailbox = sandbox.tenant.mailbox
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(mailbox, 1)])
        await wait_for_count(service, "delivered", 1)
    [delivered] = sandbox.delivered()
    assert (delivered.auth_user, delivered.mail_from, delivered.rcpt_tos) == (
        mailbox,
        mailbox,
        ["someone@example.net"],
    )
    assert delivered.message["Subject"] == "legacy message 1"
    assert delivered.message["Message-ID"] == "<legacy-1@test>"


async def test_exchange_down_then_up_delivers_the_queue(sandbox: Sandbox) -> None:
    """While Exchange is unreachable mail is accepted and deferred; when it is back, it is delivered."""
    mailbox = sandbox.tenant.mailbox
    await sandbox.exchange.stop()
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(mailbox, n) for n in range(3)])
        assert service.spool is not None
        await wait_until(lambda: service.delivery is not None and service.delivery.results["deferred"] >= 1)
        assert (await states(service))["delivered"] == 0
        await sandbox.exchange.start()
        await wait_for_count(service, "delivered", 3)
        entries = await service.spool.list(["delivered"])
        assert max(entry.attempts for entry in entries) >= 2


async def test_432_is_deferred_and_retried(sandbox: Sandbox) -> None:
    """Two 432 4.3.2 replies to MAIL defer the message twice; the third attempt delivers it."""
    sandbox.inject("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", times=2)
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_for_count(service, "delivered", 1)
        assert service.spool is not None
        [entry] = await service.spool.list(["delivered"])
    assert entry.attempts == 3
    assert service.delivery is not None
    assert service.delivery.results["deferred"] == 2


async def test_exchange_daily_quota_is_deferred_not_dead(sandbox: Sandbox) -> None:
    """554 5.2.0 SubmissionQuotaExceeded clears by itself: the message is deferred, then delivered."""
    sandbox.inject("DATA", "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_for_count(service, "delivered", 1)
    assert service.delivery is not None
    assert (service.delivery.results["deferred"], service.delivery.results["dead"]) == (1, 0)
    assert len(sandbox.delivered()) == 1


async def test_burst_of_200_uses_at_most_3_sessions(sandbox: Sandbox) -> None:
    """200 messages from 4 clients at once never open more than 3 upstream sessions for the mailbox."""
    mailbox = sandbox.tenant.mailbox
    async with running_relay(sandbox) as (_, port):
        await asyncio.gather(
            *(
                asyncio.to_thread(send_legacy, port, [make_message(mailbox, c * 50 + n) for n in range(50)])
                for c in range(4)
            )
        )
        await wait_until(lambda: len(sandbox.delivered()) == 200, within=60, what="200 deliveries")
    assert sandbox.exchange.sessions_peak[mailbox] <= 3
    assert sorted(d.message["Message-ID"] for d in sandbox.delivered()) == sorted(
        f"<legacy-{n}@test>" for n in range(200)
    )


async def test_permanent_rejection_is_dead_and_listed(sandbox: Sandbox) -> None:
    """A 550 at DATA makes the message dead; it stays in the queue with the reply."""
    sandbox.inject("DATA", "550 5.7.60 SMTP; Client does not have permissions to send as this sender")
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_until(lambda: service.delivery is not None and service.delivery.results["dead"] == 1)
        assert service.spool is not None
        [entry] = await service.spool.list(["dead"])
    assert entry.last_reply.startswith("550 5.7.60")
    assert sandbox.delivered() == []


async def http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    return response.decode()


async def test_metrics_and_health(sandbox: Sandbox) -> None:
    """/healthz answers 200 while running and /metrics shows queue depth and delivery counts."""
    sandbox.write_config(relay=relay_section(metrics_listen="127.0.0.1:0"))
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_for_count(service, "delivered", 1)
        assert service.metrics_server is not None
        metrics_port = service.metrics_server.addresses[0][1]
        health = await http_get(metrics_port, "/healthz")
        text = await http_get(metrics_port, "/metrics")
    assert health.startswith("HTTP/1.1 200 OK")
    assert "Content-Type: text/plain; version=0.0.4" in text
    assert 'smtp_oauth_relay_queue_messages{state="delivered"} 1' in text
    assert 'smtp_oauth_relay_deliveries_total{result="delivered"} 1' in text
    assert "smtp_oauth_relay_accepted_total 1" in text


async def test_metrics_show_when_the_token_in_use_expires(sandbox: Sandbox) -> None:
    """After a delivery, /metrics has the expiry (Unix time, in the future) of the token it used."""
    sandbox.write_config(relay=relay_section(metrics_listen="127.0.0.1:0"))
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(sandbox.tenant.mailbox, 1)])
        await wait_for_count(service, "delivered", 1)
        assert service.metrics_server is not None
        text = await http_get(service.metrics_server.addresses[0][1], "/metrics")
    [sample] = [line for line in text.splitlines() if line.startswith("smtp_oauth_relay_token_expiry_")]
    expiry = float(sample.split()[1])
    assert time.time() < expiry < time.time() + 86400


async def test_reload_adds_a_user_without_restart(sandbox: Sandbox) -> None:
    """After the configuration file gains a user, reload() lets it log in; the old one still works."""
    from smtp_oauth.relay.passwords import hash_password
    from tests.relay.relay_harness import PASSWORD_HASH, USER

    async with running_relay(sandbox) as (service, port):
        new_user = {"name": "scanner", "password_hash": hash_password("scan-pass-123", log2_n=4)}
        sandbox.write_config(
            relay=relay_section(
                listen=f"127.0.0.1:{port}", users=[{"name": USER, "password_hash": PASSWORD_HASH}, new_user]
            )
        )
        assert await service.reload()
        message = make_message(sandbox.tenant.mailbox, 1)
        await asyncio.to_thread(send_legacy, port, [message], user="scanner", password="scan-pass-123")
        await wait_until(lambda: len(sandbox.delivered()) == 1)
