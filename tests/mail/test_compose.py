"""Specification of smtp_oauth.mail.compose: addresses and MIME messages built from options."""

from __future__ import annotations

import email
import os
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

import pytest

from smtp_oauth.cli.exit_codes import ExitCode, exit_code_of
from smtp_oauth.errors import MessageError
from smtp_oauth.mail.addresses import make_message_id
from smtp_oauth.mail.compose import (
    Attachment,
    build_message,
    dedupe_addresses,
    needs_smtputf8,
    parse_address,
    parse_addresses,
)

SENDER = Address("Jane Doe", "jane", "contoso.example")


def _reparse(message: EmailMessage) -> EmailMessage:
    data = message.as_bytes(policy=policy.SMTP)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_parse_addresses_splits_comma_lists() -> None:
    """A value may hold several comma-separated addresses."""
    found = parse_addresses(["a@x.example, b@y.example", "c@z.example"])
    assert [a.addr_spec for a in found] == ["a@x.example", "b@y.example", "c@z.example"]


def test_parse_addresses_keeps_quoted_display_names_with_commas() -> None:
    """A quoted display name holding a comma stays one address."""
    (found,) = parse_addresses(['"Doe, John" <john@x.example>'])
    assert (found.display_name, found.addr_spec) == ("Doe, John", "john@x.example")


def test_parse_addresses_decodes_encoded_words() -> None:
    """RFC 2047 encoded display names are decoded."""
    (found,) = parse_addresses(["=?utf-8?q?J=C3=B6rg?= <jo@x.example>"])
    assert found.display_name == "Jörg"


def test_parse_addresses_empty_group_yields_nothing() -> None:
    """``undisclosed-recipients:;`` is valid and names nobody."""
    assert parse_addresses(["undisclosed-recipients:;"]) == []


@pytest.mark.parametrize(
    "bad",
    ["plain", "x@", ":;0", "@x.example", "a b@x.example", "a@x.example junk", "<>", "a@b@c", "x@.example"],
)
def test_parse_addresses_rejects_non_addresses(bad: str) -> None:
    """Text that is not an address raises MessageError (exit 65) naming it."""
    with pytest.raises(MessageError) as caught:
        parse_addresses([bad], what="To")
    assert exit_code_of(caught.value) == ExitCode.DATAERR
    assert "To" in str(caught.value)


def test_local_user_name_gets_a_hint_about_full_addresses() -> None:
    """A bare user name (cron's default MAILTO) is refused with a hint to give a full address."""
    with pytest.raises(MessageError) as caught:
        parse_addresses(["root"], what="To header")
    hint = caught.value.explain() or ""
    assert "no local users" in hint
    assert "MAILTO" in hint


def test_parse_addresses_accepts_non_ascii_addresses() -> None:
    """Internationalised addresses (RFC 6531) are kept as they are."""
    (found,) = parse_addresses(["jörg@bücher.example"])
    assert found.addr_spec == "jörg@bücher.example"
    assert needs_smtputf8([found])


def test_parse_address_wants_exactly_one() -> None:
    """A sender must be one address."""
    with pytest.raises(MessageError):
        parse_address("a@x.example, b@x.example")


def test_dedupe_addresses_ignores_domain_case_only() -> None:
    """Duplicates go; the domain compares case-insensitively, the local part exactly."""
    assert dedupe_addresses(["a@X.example", "a@x.example", "A@x.example"]) == ["a@X.example", "A@x.example"]


def test_message_id_uses_the_sender_domain() -> None:
    """The Message-ID's right-hand side is the sender's domain, IDNA-encoded when needed."""
    assert make_message_id(SENDER.addr_spec).endswith("@contoso.example>")
    assert make_message_id("x@bücher.example").endswith("@xn--bcher-kva.example>")


def test_build_message_sets_date_and_message_id() -> None:
    """Every built message has Date and Message-ID."""
    message = _reparse(build_message(sender=SENDER, to=[SENDER], text="hi"))
    assert message["Date"]
    assert message["Message-ID"].endswith("@contoso.example>")


def test_build_message_encodes_utf8_subject_and_body() -> None:
    """A non-ASCII subject is RFC 2047-encoded on the wire and the body is UTF-8."""
    built = build_message(sender=SENDER, to=[SENDER], subject="Grüße", text="Ünïcode body")
    raw = built.as_bytes(policy=policy.SMTP)
    assert b"Subject: =?utf-8?" in raw
    parsed = _reparse(built)
    assert parsed["Subject"] == "Grüße"
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().rstrip() == "Ünïcode body"


def test_build_message_quotes_display_names() -> None:
    """Display names with specials are quoted so they stay one address."""
    built = build_message(sender=Address("Doe, Jane", "jane", "x.example"), to=[SENDER], text="")
    assert b'From: "Doe, Jane" <jane@x.example>' in built.as_bytes(policy=policy.SMTP)


def test_build_message_never_contains_bcc() -> None:
    """Blind copies are not a parameter: the message carries no Bcc header."""
    assert "Bcc" not in build_message(sender=SENDER, to=[SENDER], text="x")


def test_build_message_html_makes_multipart_alternative() -> None:
    """Text plus HTML become multipart/alternative with both parts."""
    parsed = _reparse(build_message(sender=SENDER, to=[SENDER], text="plain", html="<p>rich</p>"))
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_build_message_html_alone_is_text_html() -> None:
    """HTML without text is a single text/html part."""
    parsed = _reparse(build_message(sender=SENDER, to=[SENDER], html="<p>rich</p>"))
    assert parsed.get_content_type() == "text/html"


def test_attachment_round_trips_byte_for_byte() -> None:
    """Random binary data comes back identical after serialisation and parsing."""
    data = os.urandom(200_000)
    built = build_message(
        sender=SENDER, to=[SENDER], text="see attached", attachments=[Attachment("blob.bin", data)]
    )
    parsed = _reparse(built)
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "blob.bin"
    assert attachment.get_content() == data


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", ("application", "pdf")),
        ("photo.png", ("image", "png")),
        ("notes.txt", ("text", "plain")),
        ("mystery", ("application", "octet-stream")),
        ("forwarded.eml", ("application", "octet-stream")),
    ],
)
def test_attachment_mime_type_is_guessed_from_name(name: str, expected: tuple[str, str]) -> None:
    """The type comes from the file name; message/* and unknown types go as octet-stream."""
    assert Attachment(name, b"").mime_type == expected


def test_attachment_name_may_be_non_ascii() -> None:
    """A non-ASCII file name survives (RFC 2231)."""
    built = build_message(
        sender=SENDER, to=[SENDER], text="x", attachments=[Attachment("Bericht-Ü.pdf", b"%PDF")]
    )
    (attachment,) = _reparse(built).iter_attachments()
    assert attachment.get_filename() == "Bericht-Ü.pdf"


def test_extra_header_replaces_a_unique_header() -> None:
    """``--header "Subject: x"`` replaces the subject rather than adding a second one."""
    built = build_message(sender=SENDER, to=[SENDER], subject="a", text="", headers=[("Subject", "b")])
    assert built.get_all("Subject") == ["b"]


def test_extra_header_may_repeat() -> None:
    """Headers that may repeat are added each time."""
    built = build_message(sender=SENDER, to=[SENDER], text="", headers=[("X-Tag", "1"), ("X-Tag", "2")])
    assert built.get_all("X-Tag") == ["1", "2"]


def test_header_injection_is_refused() -> None:
    """A header value with a line break is a MessageError, not a second header."""
    with pytest.raises(MessageError):
        build_message(sender=SENDER, to=[SENDER], text="", headers=[("X-Tag", "a\r\nBcc: evil@x.example")])


def test_subject_line_breaks_are_flattened() -> None:
    """A multi-line subject becomes one line."""
    built = build_message(sender=SENDER, to=[SENDER], subject="one\ntwo", text="")
    assert built["Subject"] == "one two"
