"""Exchange Online's per-mailbox limits in the fake: 3 submitting sessions, messages per minute."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import aiosmtplib
import pytest

from smtp_oauth.sandbox.limits import SessionSlots, SubmissionRate
from tests.sandbox.exchange_helpers import (
    MAILBOX,
    ExchangeKit,
    app_only_token,
    client,
    delegated_token,
    message,
    running_exchange,
)


async def test_fourth_concurrent_session_gets_432_at_mail(kit: ExchangeKit, tmp_path: Path) -> None:
    """With 3 sessions of a mailbox open, a 4th logs in but gets 432 4.3.2 at MAIL FROM."""
    async with running_exchange(kit, tmp_path / "mail") as exchange, AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(client(kit, exchange, token=app_only_token(kit.key)))
            for _ in range(4)
        ]
        for smtp in sessions[:3]:
            await smtp.send_message(message())
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await sessions[3].send_message(message())
        assert exchange.sessions_peak == {MAILBOX: 4}
    assert f"{info.value.code} {info.value.message}" == (
        "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    )
    assert len(exchange.delivered()) == 3


async def test_waiting_session_may_submit_once_another_ends(kit: ExchangeKit, tmp_path: Path) -> None:
    """When one of the first 3 sessions ends, the 4th may submit."""
    async with running_exchange(kit, tmp_path / "mail") as exchange:
        sessions = [client(kit, exchange, token=delegated_token(kit.key)) for _ in range(4)]
        for smtp in sessions:
            await smtp.connect()
        await sessions[0].quit()
        await sessions[3].send_message(message())
        for smtp in sessions[1:]:
            await smtp.quit()
    assert len(exchange.delivered()) == 1


async def test_sessions_are_counted_per_mailbox(kit: ExchangeKit, tmp_path: Path) -> None:
    """The limit is per mailbox: sessions_peak reports each mailbox's own count."""
    async with running_exchange(kit, tmp_path / "mail", max_sessions_per_mailbox=1) as exchange:
        async with client(kit, exchange, token=app_only_token(kit.key)) as first:
            await first.send_message(message())
        async with client(kit, exchange, token=app_only_token(kit.key)) as second:
            await second.send_message(message())
    assert exchange.sessions_peak == {MAILBOX: 1}
    assert len(exchange.delivered()) == 2


async def test_submission_rate_limit_answers_421_and_hangs_up(kit: ExchangeKit, tmp_path: Path) -> None:
    """Past messages_per_minute, MAIL FROM gets 421 4.4.2 and the server closes the connection."""
    async with running_exchange(kit, tmp_path / "mail", messages_per_minute=2) as exchange:
        smtp = client(kit, exchange, token=app_only_token(kit.key))
        await smtp.connect()
        for _ in range(2):
            await smtp.send_message(message())
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.send_message(message())
        assert not smtp.is_connected
        smtp.close()
    assert info.value.code == 421
    assert info.value.message.startswith("4.4.2 ")
    assert "rate" in info.value.message
    assert len(exchange.delivered()) == 2


def test_submission_rate_frees_up_after_a_minute() -> None:
    """Messages older than 60 seconds no longer count against the rate."""
    now = [1000.0]
    rate = SubmissionRate(2, clock=lambda: now[0])
    rate.record(MAILBOX)
    rate.record(MAILBOX)
    assert not rate.allows(MAILBOX)
    now[0] += 60.0
    assert rate.allows(MAILBOX)


def test_zero_messages_per_minute_means_unlimited() -> None:
    """messages_per_minute=0 never refuses."""
    rate = SubmissionRate(0)
    for _ in range(1000):
        rate.record(MAILBOX)
    assert rate.allows(MAILBOX)


def test_session_slots_follow_login_order() -> None:
    """The first `limit` open sessions may submit; a later one takes a freed slot."""
    slots = SessionSlots(2)
    for session in ("a", "b", "c"):
        slots.open(MAILBOX, session)
    assert [slots.may_submit(session) for session in ("a", "b", "c")] == [True, True, False]
    slots.close("a")
    assert slots.may_submit("c")
    assert slots.peak == {MAILBOX: 3}
    assert not slots.may_submit("never-authenticated")
