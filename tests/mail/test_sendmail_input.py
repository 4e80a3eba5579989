"""Specification of smtp_oauth.mail.sendmail_input: what sendmail does to the message it reads."""

from __future__ import annotations

import io
import re

import pytest

from smtp_oauth.errors import MessageError
from smtp_oauth.mail.compose import parse_address
from smtp_oauth.mail.sendmail_input import (
    header_recipients,
    prepare_message,
    read_message,
    split_message,
    to_crlf,
)

ENVELOPE = parse_address("sender@contoso.example")


def _lines(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_lone_dot_ends_input_without_i() -> None:
    """Without -i a line holding only '.' ends the message, as in Postfix."""
    assert read_message(_lines(b"a\n.\nb\n"), ignore_dots=False) == b"a\n"


def test_lone_dot_with_crlf_ends_input_without_i() -> None:
    """The dot line may end in CRLF too."""
    assert read_message(_lines(b"a\r\n.\r\nb\r\n"), ignore_dots=False) == b"a\r\n"


def test_lone_dot_is_content_with_i() -> None:
    """With -i/-oi a lone dot is an ordinary line and input ends at EOF."""
    assert read_message(_lines(b"a\n.\nb\n"), ignore_dots=True) == b"a\n.\nb\n"


def test_dot_starting_lines_are_content() -> None:
    """Lines that merely start with a dot never end the input."""
    assert read_message(_lines(b"..x\n.x\n"), ignore_dots=False) == b"..x\n.x\n"


def test_read_stops_at_the_dot_line() -> None:
    """Nothing after the dot line is consumed, so a writer waiting for us is not blocked."""
    stream = _lines(b"a\n.\nleft over\n")
    read_message(stream, ignore_dots=False)
    assert stream.read() == b"left over\n"


@pytest.mark.parametrize("data", [b"a\nb\n", b"a\r\nb\r\n", b"a\rb\r", b"a\nb"])
def test_line_endings_become_crlf(data: bytes) -> None:
    """LF, CRLF, stray CR and a missing final newline all become CRLF lines."""
    assert to_crlf(data) == b"a\r\nb\r\n"


def test_split_keeps_folded_headers_together() -> None:
    """A folded header field is one field with its continuation lines."""
    fields, body = split_message(b"To: a@x.example,\r\n b@x.example\r\nSubject: s\r\n\r\nbody\r\n")
    assert fields == [b"To: a@x.example,\r\n b@x.example\r\n", b"Subject: s\r\n"]
    assert body == b"body\r\n"


def test_split_drops_mbox_from_line() -> None:
    """A leading mbox 'From ' line is not a header and is dropped."""
    fields, _ = split_message(b"From someone Mon Jan 1 00:00:00 2024\r\nSubject: s\r\n\r\nb\r\n")
    assert fields == [b"Subject: s\r\n"]


def test_split_headerless_input_is_all_body() -> None:
    """Input that does not start with a header is entirely body."""
    fields, body = split_message(b"just text\r\nmore\r\n")
    assert fields == []
    assert body == b"just text\r\nmore\r\n"


def test_header_recipients_reads_to_cc_bcc() -> None:
    """-t takes To, Cc and Bcc, including folded and grouped lists."""
    fields, _ = split_message(
        b'To: a@x.example,\r\n "Doe, J" <j@x.example>\r\nCc: team: c@x.example;\r\nBcc: d@x.example\r\n'
        b"Reply-To: not@x.example\r\n\r\n"
    )
    assert [a.addr_spec for a in header_recipients(fields)] == [
        "a@x.example",
        "j@x.example",
        "c@x.example",
        "d@x.example",
    ]


def test_header_recipients_prefers_resent_headers() -> None:
    """A forwarded message (Resent- headers) goes to the Resent- recipients only."""
    fields, _ = split_message(b"Resent-To: new@x.example\r\nTo: original@x.example\r\n\r\n")
    assert [a.addr_spec for a in header_recipients(fields)] == ["new@x.example"]


def test_header_recipients_rejects_garbage() -> None:
    """An unparsable To header is a MessageError naming the header."""
    fields, _ = split_message(b"To: not an address\r\n\r\n")
    with pytest.raises(MessageError, match="To header"):
        header_recipients(fields)


def test_prepare_removes_bcc_including_continuations() -> None:
    """Bcc (and its folded lines) never reaches the sent headers, but its addresses get the mail."""
    raw = b"To: a@x.example\nBcc: hidden@x.example,\n  also-hidden@x.example\nSubject: s\n\nbody\n"
    prepared = prepare_message(raw, envelope_sender=ENVELOPE, read_recipients=True)
    assert b"hidden" not in prepared.data
    assert prepared.recipients == ["a@x.example", "hidden@x.example", "also-hidden@x.example"]


def test_prepare_adds_arguments_to_header_recipients() -> None:
    """With -t, command-line recipients are added to the header ones (Postfix >= 2.1), once each."""
    raw = b"To: a@x.example\n\nbody\n"
    extra = [parse_address("b@x.example"), parse_address("a@x.example")]
    prepared = prepare_message(raw, envelope_sender=ENVELOPE, recipients=extra, read_recipients=True)
    assert prepared.recipients == ["a@x.example", "b@x.example"]


def test_prepare_without_t_ignores_header_recipients() -> None:
    """Without -t the recipients are the arguments only."""
    raw = b"To: a@x.example\n\nbody\n"
    prepared = prepare_message(raw, envelope_sender=ENVELOPE, recipients=[parse_address("b@x.example")])
    assert prepared.recipients == ["b@x.example"]


def test_prepare_adds_missing_from_date_message_id() -> None:
    """From, Date and Message-ID are added when the message lacks them."""
    prepared = prepare_message(b"Subject: s\n\nbody\n", envelope_sender=ENVELOPE)
    assert prepared.added_headers == ["From", "Date", "Message-ID"]
    headers = prepared.data.split(b"\r\n\r\n", 1)[0]
    assert b"From: sender@contoso.example" in headers
    assert re.search(rb"Message-ID: <[^>]+@contoso.example>", headers)
    assert b"\r\nDate: " in headers


def test_prepare_keeps_existing_headers() -> None:
    """Present From, Date and Message-ID are left exactly as they are."""
    raw = b"From: Me <me@x.example>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@x>\n\nb\n"
    prepared = prepare_message(raw, envelope_sender=ENVELOPE)
    assert prepared.added_headers == []
    assert prepared.data == to_crlf(raw)


def test_prepare_uses_full_name_for_missing_from() -> None:
    """-F's name goes into a From header built for a message without one."""
    from_address = parse_address('"Büro Bot" <sender@contoso.example>')
    prepared = prepare_message(b"Subject: s\n\nb\n", envelope_sender=ENVELOPE, from_address=from_address)
    assert b"From: =?utf-8?q?B=C3=BCro?= Bot <sender@contoso.example>" in prepared.data


def test_prepare_preserves_8bit_body_bytes() -> None:
    """8-bit (even invalid UTF-8) body bytes are sent untouched, only line endings change."""
    body = "Grüße\n".encode("latin-1") + b"\xff\xfe raw\n"
    prepared = prepare_message(b"Subject: s\n\n" + body, envelope_sender=ENVELOPE)
    assert prepared.data.endswith(b"\r\n\r\n" + to_crlf(body))


def test_prepare_inserts_blank_line_before_headerless_body() -> None:
    """A body that follows headers without an empty line gets one, so it stays body."""
    prepared = prepare_message(b"Subject: s\nthis is body\n", envelope_sender=ENVELOPE)
    head, body = prepared.data.split(b"\r\n\r\n", 1)
    assert b"Subject: s" in head
    assert body == b"this is body\r\n"
