"""MAIL FROM / RCPT TO paths: the relay's quick reading agrees with aiosmtpd's own on every form."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from smtp_oauth.relay.listener.session import RelaySession

PATHS = [
    "<a@b.c>",
    "<a@b.c> SIZE=10",
    "<a.b+c@d-e.f> BODY=8BITMIME SMTPUTF8",
    "<a@b.c>\tSIZE=1",
    "<a@b>  SIZE=1",
    "<A!#$%&'*+/=?^_`{|}~-z@x.y>",
    "<>",
    "<> SIZE=5",
    "<a..b@c>",
    "<.a@b>",
    "<a.@b>",
    "<a@b.>",
    "<a@-b>",
    "<a@b..c>",
    "<a@[1.2.3.4]>",
    '<"x y"@b>',
    "<a@b>x",
    "<@x:a@b>",
    "<a b@c>",
    "<a@b",
    "a@b",
    "<a(comment)@b>",
    "<ü@b.c>",
    "<a@b.c> SIZE=1\r\nRCPT",
]


@pytest.mark.parametrize("arg", PATHS)
def test_mail_and_rcpt_paths_are_read_as_aiosmtpd_reads_them(arg: str) -> None:
    """The relay's quick path for MAIL/RCPT addresses gives aiosmtpd's own answer for every form."""
    session = RelaySession.__new__(RelaySession)  # only the parser is used: no connection
    session.local_part_limit = 0
    assert session._getaddr(arg) == SMTP._getaddr(session, arg)
