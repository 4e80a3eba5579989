"""The fake Exchange Online after login: who may send, what is stored, the limits on one message."""

from __future__ import annotations

import json
from pathlib import Path

import aiosmtplib
import pytest

from smtp_oauth.sandbox.exchange.server import DEFAULT_HOSTNAME, FakeExchange
from tests.sandbox.exchange_helpers import (
    MAILBOX,
    OTHER_MAILBOX,
    RECIPIENT,
    ExchangeKit,
    app_only_token,
    client,
    message,
    running_exchange,
)


async def test_delivered_message_lands_on_disk_with_its_envelope(
    kit: ExchangeKit, exchange: FakeExchange
) -> None:
    """An accepted message is an .eml (raw, as received) plus a .json envelope in store_dir."""
    mail = message(subject="On disk")
    mail["Message-ID"] = "<one@client.test>"
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        _, reply = await smtp.send_message(mail, recipients=[RECIPIENT, "cc@example.test"])
    [delivered] = exchange.delivered()
    assert reply.startswith("2.6.0 <one@client.test> [InternalId=")
    assert reply.endswith("Queued mail for delivery")
    assert delivered.path.parent == exchange.store_dir
    assert delivered.path.read_bytes() == delivered.data
    assert delivered.message["Subject"] == "On disk"
    envelope = json.loads(delivered.path.with_suffix(".json").read_text())
    assert envelope["auth_user"] == MAILBOX
    assert envelope["mail_from"] == MAILBOX
    assert envelope["rcpt_tos"] == [RECIPIENT, "cc@example.test"]
    assert envelope["received_at"]
    assert sorted(path.name for path in exchange.store_dir.iterdir()) == [
        delivered.path.name,
        delivered.path.with_suffix(".json").name,
    ]


async def test_several_messages_go_over_one_session(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """One authenticated session may submit message after message; they are stored in order."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        for number in range(3):
            await smtp.send_message(message(subject=f"Message {number}"))
    assert [m.message["Subject"] for m in exchange.delivered()] == ["Message 0", "Message 1", "Message 2"]
    assert exchange.auth_attempts == 1


async def test_greeting_and_ehlo_look_like_exchange(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """The banner names a Microsoft ESMTP service; EHLO advertises SIZE, 8BITMIME and SMTPUTF8."""
    async with client(kit, exchange) as smtp:
        reply = await smtp.ehlo()
        extensions = dict(smtp.esmtp_extensions)
    assert reply.message.startswith(f"{DEFAULT_HOSTNAME} Hello [127.0.0.1]")
    assert extensions["size"] == str(35 * 1024 * 1024)
    assert {"8bitmime", "smtputf8", "enhancedstatuscodes"} <= set(extensions)


async def test_banner_says_microsoft_esmtp_and_sandbox(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """The 220 greeting reads like Exchange's and says it is a sandbox."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=exchange.port, start_tls=False, timeout=10)
    reply = await smtp.connect()
    smtp.close()
    assert reply.code == 220
    assert reply.message.startswith(f"{DEFAULT_HOSTNAME} Microsoft ESMTP MAIL Service ready at ")
    assert "sandbox" in reply.message


async def test_commands_before_starttls_are_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """MAIL before STARTTLS gets 530 5.7.0 Must issue a STARTTLS command first."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=exchange.port, start_tls=False, timeout=10) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.mail(MAILBOX)
    assert (info.value.code, info.value.message) == (530, "5.7.0 Must issue a STARTTLS command first")


async def test_mail_before_auth_is_refused_with_530_5_7_57(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """MAIL FROM after STARTTLS but before AUTH gets 530 5.7.57."""
    async with client(kit, exchange) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.mail(MAILBOX)
    assert (info.value.code, info.value.message) == (530, "5.7.57 Client not authenticated to send mail.")


async def test_envelope_sender_other_than_mailbox_is_refused(
    kit: ExchangeKit, exchange: FakeExchange
) -> None:
    """MAIL FROM another address than the authenticated mailbox gets 550 5.7.60."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.send_message(message(sender=OTHER_MAILBOX))
    assert info.value.code == 550
    assert info.value.message.startswith(
        "5.7.60 SMTP; Client does not have permissions to send as this sender"
    )
    assert exchange.delivered() == []


async def test_from_header_other_than_mailbox_is_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A right envelope sender but a From: header of another address gets 550 5.7.60 after DATA."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await smtp.send_message(message(sender=f"Boss <{OTHER_MAILBOX}>"), sender=MAILBOX)
    assert info.value.code == 550
    assert info.value.message.startswith("5.7.60 ")
    assert exchange.delivered() == []


async def test_sender_case_does_not_matter(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """MAIL FROM and From: match the mailbox whatever their case."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        await smtp.send_message(message(sender=MAILBOX.upper()))
    assert len(exchange.delivered()) == 1


async def test_declared_size_over_limit_is_refused(kit: ExchangeKit, tmp_path: Path) -> None:
    """MAIL FROM with SIZE= above max_message_size gets 552 5.3.4."""
    async with (
        running_exchange(kit, tmp_path / "mail", max_message_size=10_000) as exchange,
        client(kit, exchange, token=app_only_token(kit.key)) as smtp,
    ):
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.send_message(message(body="x" * 20_000))
    assert (info.value.code, info.value.message) == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
    )


async def test_undeclared_oversize_data_is_refused(kit: ExchangeKit, tmp_path: Path) -> None:
    """DATA beyond max_message_size without a SIZE= declaration gets 552 5.3.4 and is not stored."""
    async with running_exchange(kit, tmp_path / "mail", max_message_size=10_000) as exchange:
        async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
            await smtp.mail(MAILBOX)
            await smtp.rcpt(RECIPIENT)
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.data(bytes(message(body="x" * 20_000)))
        assert exchange.delivered() == []
    assert (info.value.code, info.value.message) == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
    )


async def test_more_than_500_recipients_are_refused(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """The 501st RCPT TO of a message gets 452 4.5.3 Too many recipients; the first 500 get through."""
    recipients = [f"r{number}@example.test" for number in range(501)]
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        refused, _ = await smtp.send_message(message(), recipients=recipients)
    assert {address: reply.code for address, reply in refused.items()} == {"r500@example.test": 452}
    assert refused["r500@example.test"].message == "4.5.3 Too many recipients"
    assert exchange.delivered()[0].rcpt_tos == recipients[:500]


async def test_utf8_addresses_and_8bit_body_are_kept(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """SMTPUTF8 recipients and an 8-bit body arrive byte for byte."""
    mail = message(to="jürgen@exämple.test", body="Grüße, naïve café.\n")
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        await smtp.send_message(mail)
    [delivered] = exchange.delivered()
    assert delivered.rcpt_tos == ["jürgen@exämple.test"]
    assert "Grüße, naïve café.\r\n".encode() in delivered.data
    assert delivered.message.get_content().rstrip() == "Grüße, naïve café."


async def test_long_lines_in_data_are_accepted(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A header line longer than 1000 octets is accepted, as Exchange does."""
    raw = f"From: {MAILBOX}\r\nTo: {RECIPIENT}\r\nX-Long: {'y' * 3000}\r\n\r\nbody\r\n".encode()
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        await smtp.sendmail(MAILBOX, [RECIPIENT], raw)
    assert exchange.delivered()[0].data == raw


async def test_clear_forgets_messages_and_deletes_their_files(
    kit: ExchangeKit, exchange: FakeExchange
) -> None:
    """clear() empties delivered() and removes the .eml and .json files."""
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        await smtp.send_message(message())
    exchange.clear()
    assert exchange.delivered() == []
    assert list(exchange.store_dir.iterdir()) == []


async def test_numbering_continues_in_a_reused_folder(kit: ExchangeKit, tmp_path: Path) -> None:
    """A new server on a folder with messages numbers its own after them."""
    for _ in range(2):
        async with running_exchange(kit, tmp_path / "mail") as exchange:
            async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
                await smtp.send_message(message())
            [delivered] = exchange.delivered()
    assert delivered.path.name.startswith("000002-")


async def test_stop_closes_open_sessions(kit: ExchangeKit, tmp_path: Path) -> None:
    """stop() returns promptly and drops connected clients."""
    async with running_exchange(kit, tmp_path / "mail") as exchange:
        smtp = client(kit, exchange, token=app_only_token(kit.key))
        await smtp.connect()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.noop()


async def test_internal_error_is_a_451_without_details(kit: ExchangeKit, exchange: FakeExchange) -> None:
    """A failure inside the server (here: the store folder is gone) is 451 4.3.0, naming nothing internal."""
    exchange.store_dir.rmdir()
    exchange.store_dir.write_text("not a folder any more")
    async with client(kit, exchange, token=app_only_token(kit.key)) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await smtp.send_message(message())
    assert info.value.code == 451
    assert info.value.message.startswith("4.3.0 ")
    assert "Error" not in info.value.message
    assert str(exchange.store_dir) not in info.value.message
