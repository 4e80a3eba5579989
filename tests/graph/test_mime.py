"""graph/mime.py: Bcc for envelope-only recipients, QP as base64, extra header recipients refused."""

from __future__ import annotations

import email
import email.policy

import pytest

from smtp_oauth.cli.exit_codes import exit_code_of
from smtp_oauth.errors import MessageError
from smtp_oauth.graph.mime import add_bcc, for_graph, reencode_quoted_printable

RAW = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\n\r\nbody\r\n"


def test_envelope_only_recipients_become_one_bcc_header_at_the_end() -> None:
    """Everything stays byte for byte; a Bcc line is added after the last header."""
    sent = for_graph(RAW, ["b@y.test", "c@z.test", "d@z.test"])
    assert sent == b"From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\nBcc: c@z.test, d@z.test\r\n\r\nbody\r\n"


def test_a_message_whose_headers_name_every_recipient_is_unchanged() -> None:
    """No Bcc is added when To/Cc already name all envelope recipients (compared case-insensitively)."""
    assert for_graph(RAW, ["B@Y.test"]) == RAW


def test_an_existing_bcc_header_is_merged_not_duplicated() -> None:
    """A message with a Bcc keeps one Bcc header holding its addresses and the new ones."""
    raw = b"From: a@x.test\nBcc: old@y.test,\n  other@y.test\nTo: b@y.test\n\nbody\n"
    sent = add_bcc(raw, ["new@z.test"])  # the line ends it finds are kept
    assert sent == b"From: a@x.test\nTo: b@y.test\nBcc: old@y.test, other@y.test, new@z.test\n\nbody\n"


def test_many_bcc_addresses_are_folded() -> None:
    """Long Bcc headers are folded (four addresses a line), far below the 998-character line limit."""
    addresses = [f"user{n}@example.test" for n in range(40)]
    sent = add_bcc(RAW, addresses)
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == addresses
    assert max(len(line) for line in sent.split(b"\r\n")) < 200


def test_a_header_recipient_outside_the_envelope_is_refused() -> None:
    """Graph would send to a To address the envelope leaves out: MessageError (65) naming it."""
    with pytest.raises(MessageError) as caught:
        for_graph(RAW, ["c@z.test"])
    assert "b@y.test" in str(caught.value)
    assert exit_code_of(caught.value) == 65
    assert "transport" in (caught.value.explain() or "")


def test_quoted_printable_parts_become_base64_with_the_same_content() -> None:
    """A QP part (soft line break before hex digits, which Graph mangles) is base64 afterwards, same text."""
    html = "<p>" + "x" * 70 + "=ABCD</p>"
    message = email.message.EmailMessage()
    message["From"] = "a@x.test"
    message["To"] = "b@y.test"
    message.set_content(html, subtype="html", cte="quoted-printable")
    raw = message.as_bytes(policy=email.policy.SMTP)
    assert b"quoted-printable" in raw
    sent = reencode_quoted_printable(raw)
    before = email.message_from_bytes(raw, policy=email.policy.default)
    after = email.message_from_bytes(sent, policy=email.policy.default)
    assert after["Content-Transfer-Encoding"] == "base64"
    assert after.get_payload(decode=True) == before.get_payload(decode=True)
    assert html.encode() in after.get_payload(decode=True)
    assert b"quoted-printable" not in sent


def test_a_message_without_quoted_printable_is_not_rewritten() -> None:
    """No QP part: the same bytes come back (no re-serialisation)."""
    assert reencode_quoted_printable(RAW) is RAW


def test_bare_line_feeds_become_crlf() -> None:
    """A legacy client's LF-only message reaches Graph with CRLF line ends, as SMTP sends it."""
    assert for_graph(RAW.replace(b"\r\n", b"\n"), ["b@y.test"]) == RAW
