"""Properties of message building and sendmail input, for any input (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_oauth.errors import MessageError
from smtp_oauth.mail.compose import parse_address, parse_addresses
from smtp_oauth.mail.sendmail_input import prepare_message, read_message, split_message, to_crlf

ENVELOPE = parse_address("sender@contoso.example")
_LINES = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=12
)
_FIELD_NAMES = st.sampled_from([b"To", b"Cc", b"Bcc", b"Subject", b"X-Tag", b"bcc", b"Resent-Bcc"])


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_parse_addresses_raises_only_message_error(text: str) -> None:
    """Whatever the text, parsing yields addresses with a local part and a domain, or MessageError."""
    try:
        addresses = parse_addresses([text])
    except MessageError:
        return
    for address in addresses:
        local, _, domain = address.addr_spec.rpartition("@")
        assert local
        assert domain


@given(st.binary(max_size=400))
def test_to_crlf_leaves_no_bare_line_breaks(data: bytes) -> None:
    """After normalising, every CR and LF is part of a CRLF pair."""
    normalised = to_crlf(data)
    assert b"\r" not in normalised.replace(b"\r\n", b"")
    assert b"\n" not in normalised.replace(b"\r\n", b"")


@given(_LINES)
def test_read_with_ignore_dots_reads_everything(lines: list[bytes]) -> None:
    """With -i the input is returned whole, dot lines included."""
    data = b"".join(line + b"\n" for line in lines)
    assert read_message(iter(data.splitlines(keepends=True)), ignore_dots=True) == data


@given(
    st.lists(st.tuples(_FIELD_NAMES, st.sampled_from([b"a@x.example", b"b@y.example", b"text"])), max_size=6),
    _LINES,
)
def test_prepared_message_never_carries_bcc(fields: list[tuple[bytes, bytes]], body: list[bytes]) -> None:
    """Whatever the headers, no Bcc or Resent-Bcc field is left in what is sent."""
    raw = b"".join(name + b": " + value + b"\n" for name, value in fields) + b"\n" + b"\n".join(body)
    prepared = prepare_message(raw, envelope_sender=ENVELOPE, recipients=[ENVELOPE])
    headers, _ = split_message(prepared.data)
    assert not [f for f in headers if f.lower().startswith((b"bcc:", b"resent-bcc:"))]


@given(_LINES)
def test_prepared_body_is_the_input_body(body: list[bytes]) -> None:
    """The body after the header section is sent exactly as given, only with CRLF line endings."""
    raw_body = b"".join(line + b"\n" for line in body)
    prepared = prepare_message(b"Subject: s\n\n" + raw_body, envelope_sender=ENVELOPE)
    assert prepared.data.split(b"\r\n\r\n", 1)[1] == to_crlf(raw_body)
