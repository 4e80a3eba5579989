"""One rule for address equality and one Message-ID/Date maker, used by every place that needs them."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from email.message import EmailMessage

from smtp_oauth.mail.addresses import make_message_id, message_date, same_address, unique_addresses
from smtp_oauth.mail.compose import dedupe_addresses
from smtp_oauth.mail.envelope import build_envelope

SPELLINGS = ["John@Example.com", "john@example.com", "John@EXAMPLE.com", "john@Example.COM"]


def test_the_local_part_is_exact_and_the_domain_is_not() -> None:
    """RFC 5321 2.4: John@ and john@ are two mailboxes; the domain's case does not matter."""
    assert same_address("John@Example.com", "John@example.COM")
    assert not same_address("John@example.com", "john@example.com")
    assert unique_addresses(SPELLINGS) == ["John@Example.com", "john@example.com"]


def test_send_mail_and_the_envelope_keep_the_same_recipients() -> None:
    """The two rules that disagreed (one casefolded the whole address) now give one answer."""
    envelope, _ = build_envelope(
        b"Subject: x\r\n\r\nbody\r\n", sender="a@contoso.example", recipients=SPELLINGS, default_sender="x@y"
    )
    assert (
        list(envelope.recipients) == dedupe_addresses(SPELLINGS) == ["John@Example.com", "john@example.com"]
    )


def test_an_envelope_fills_in_an_ascii_message_id_for_an_idn_sender() -> None:
    """A filled-in Message-ID takes the sender's domain in IDNA form, as composed messages always did."""
    message = EmailMessage()
    message["To"] = "rcpt@example.net"
    message.set_content("hi\n")
    _, message_id = build_envelope(
        message, sender="jörg@bücher.example", recipients=None, default_sender="x@y"
    )
    assert message_id is not None
    assert message_id.endswith("@xn--bcher-kva.example>")
    assert message_id.isascii()


def test_a_message_id_never_lacks_a_domain() -> None:
    """No domain to take: localhost, never an empty right-hand side or a DNS look-up."""
    assert make_message_id("root").endswith("@localhost>")
    assert make_message_id("a@b.example", prefix="ndr").endswith(".ndr@b.example>")


def test_message_date_reads_back_as_the_moment_given() -> None:
    """A datetime or a POSIX timestamp becomes an RFC 5322 date that parses back to it."""
    moment = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    assert email.utils.parsedate_to_datetime(message_date(moment)) == moment
    assert email.utils.parsedate_to_datetime(message_date(moment.timestamp())) == moment
