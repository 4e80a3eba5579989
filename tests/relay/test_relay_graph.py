"""The relay with transport = "graph": delivery through the sandbox's fake Microsoft Graph."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.relay.relay_harness import (
    PASSWORD,
    PASSWORD_HASH,
    USER,
    make_message,
    relay_section,
    running_relay,
    send_legacy,
    states,
    wait_until,
)


@pytest.fixture
async def graph_sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A sandbox whose config sends through Graph; a second relay user sends as the second mailbox."""
    async with Sandbox(tmp_path / "sandbox") as running:
        second = running.tenant.second_user.upn
        users = [
            {"name": USER, "password_hash": PASSWORD_HASH},
            {"name": "scanner", "password_hash": PASSWORD_HASH, "mailbox": second},
        ]
        running.write_config(transport="graph", relay=relay_section(users=users))
        yield running


async def test_the_relay_delivers_through_graph_adding_only_the_bcc(graph_sandbox: Sandbox) -> None:
    """A legacy app's message with an envelope-only recipient reaches Graph with just a Bcc added."""
    message = make_message(graph_sandbox.tenant.mailbox, 1)
    async with running_relay(graph_sandbox) as (_, port):

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.login(USER, PASSWORD)
                client.sendmail(
                    str(message["From"]), ["someone@example.net", "hidden@example.net"], message.as_bytes()
                )

        await asyncio.to_thread(send)
        await wait_until(lambda: len(graph_sandbox.graph_delivered()) == 1, what="delivery through Graph")
    [delivered] = graph_sandbox.graph_delivered()
    assert delivered.rcpt_tos == ["someone@example.net", "hidden@example.net"]
    # What smtplib put on the wire (it ends the data with CRLF), with CRLF line ends as SMTP has them.
    wire = (message.as_bytes() + b"\r\n").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, _, body = wire.partition(b"\r\n\r\n")
    assert delivered.data == head + b"\r\nBcc: hidden@example.net\r\n\r\n" + body
    assert graph_sandbox.delivered() == []


async def test_retry_after_defers_the_message_and_no_request_comes_before_it(graph_sandbox: Sandbox) -> None:
    """429 with Retry-After: 8 (past the transport's own short waits): the relay defers, then delivers; no
    sendMail request in between."""
    graph_sandbox.inject_graph(
        "sendMail", 429, "ApplicationThrottled", "Application is over its limit.", retry_after=8
    )
    async with running_relay(graph_sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [make_message(graph_sandbox.tenant.mailbox, 2)])
        await wait_until(lambda: bool(graph_sandbox.graph.requests("sendMail")), what="the first attempt")
        await asyncio.sleep(0.5)
        assert (await states(service))["deferred"] == 1
        await wait_until(lambda: len(graph_sandbox.graph_delivered()) == 1, within=30, what="the retry")
    first, second = graph_sandbox.graph.requests("sendMail")
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 8.0


async def test_graph_requests_stay_within_four_per_app_across_mailboxes(graph_sandbox: Sandbox) -> None:
    """Two mailboxes, 3 workers each, slow Graph: never more than 4 requests at once, none throttled."""
    graph_sandbox.graph.api.latency = 0.3
    first = [make_message(graph_sandbox.tenant.mailbox, n) for n in range(10)]
    second = [make_message(graph_sandbox.tenant.second_user.upn, 100 + n) for n in range(10)]
    async with running_relay(graph_sandbox) as (_, port):
        await asyncio.gather(
            asyncio.to_thread(send_legacy, port, first),
            asyncio.to_thread(send_legacy, port, second, user="scanner"),
        )
        await wait_until(lambda: len(graph_sandbox.graph_delivered()) == 20, within=60, what="20 deliveries")
    assert graph_sandbox.graph.max_in_flight == 4
    assert {r.status for r in graph_sandbox.graph.requests("sendMail")} == {202}
    senders = {d.auth_user for d in graph_sandbox.graph_delivered()}
    assert senders == {graph_sandbox.tenant.mailbox, graph_sandbox.tenant.second_user.upn}


@pytest.fixture
async def no_readwrite_sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", graph_permissions=("Mail.Send",)) as running:
        running.write_config(transport="graph", relay=relay_section())
        yield running


async def test_a_large_message_without_mail_readwrite_is_dead_with_the_reason(
    no_readwrite_sandbox: Sandbox,
) -> None:
    """A 5 MB message, no Mail.ReadWrite: dead at once (not retried for days), the reason naming it."""
    sandbox = no_readwrite_sandbox
    message = EmailMessage()
    message["From"] = sandbox.tenant.mailbox
    message["To"] = "someone@example.net"
    message["Subject"] = "scan"
    message.set_content("Attached.\n")
    message.add_attachment(b"%PDF" * 1_300_000, maintype="application", subtype="pdf", filename="scan.pdf")
    async with running_relay(sandbox) as (service, port):
        await asyncio.to_thread(send_legacy, port, [message])
        assert service.spool is not None
        spool = service.spool

        async def dead() -> list[object]:
            return list(await spool.list(["dead"]))

        for _ in range(200):
            entries = await dead()
            if entries:
                break
            await asyncio.sleep(0.05)
        [entry] = entries
    assert "Mail.ReadWrite" in entry.last_reply or "draft" in entry.last_reply  # type: ignore[attr-defined]
    assert sandbox.graph_delivered() == []
