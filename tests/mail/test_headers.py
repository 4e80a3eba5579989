"""One header reader: the envelope, the relay's listener and its file reader read a header alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_oauth.mail.envelope import build_envelope
from smtp_oauth.mail.headers import read_file_headers, read_headers

HEADERS = {
    "obsolete-colon": b"Subject: a\r\nMessage-ID : <obs@x.example>\r\n\r\nbody\r\n",
    "lone-cr": b"Subject: a\rMessage-ID: <cr@x.example>\r\rbody",
    "folded": b"Message-ID:\r\n <fold@x.example>\r\n\r\nbody\r\n",
    "in-the-body": b"X: 1\r\n\r\nMessage-ID: <body@x.example>\r\n",
}
EXPECTED = {
    "obsolete-colon": "<obs@x.example>",
    "lone-cr": "<cr@x.example>",
    "folded": "<fold@x.example>",
    "in-the-body": None,
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_every_reader_finds_the_same_message_id(name: str, tmp_path: Path) -> None:
    """The envelope's Message-ID is the relay's (it missed `Message-ID :`, which the relay counts)."""
    data = HEADERS[name]
    path = tmp_path / "message.eml"
    path.write_bytes(data)
    _, from_envelope = build_envelope(
        data, sender="a@x.example", recipients=["b@x.example"], default_sender="a@x"
    )
    assert (
        from_envelope == read_headers(data).message_id == read_file_headers(path).message_id == EXPECTED[name]
    )
