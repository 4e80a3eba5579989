"""Specification of ``send-mail`` in sendmail mode (-t, -i, or called as ``sendmail``) against the sandbox."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smtp_oauth.cli.exit_codes import ExitCode
from tests.cli.send_mail_harness import SEND_MAIL, mailbox_of, run_send_mail

if TYPE_CHECKING:
    from smtp_oauth.sandbox import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGE = b"To: a@example.com\nCc: b@example.com\nBcc: hidden@example.com\nSubject: report\n\nline one\n"


async def test_t_reads_recipients_and_strips_bcc(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-t sends to To, Cc and Bcc; the Bcc header never reaches the delivered message."""
    run = await run_send_mail("--config", sandbox.config_path, "-t", env=env, stdin=MESSAGE)
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.rcpt_tos == ["a@example.com", "b@example.com", "hidden@example.com"]
    assert b"hidden" not in delivered.data
    assert b"Bcc" not in delivered.data


async def test_t_adds_argument_recipients(sandbox: Sandbox, env: dict[str, str]) -> None:
    """With -t, command-line recipients are added to the header recipients."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-t", "extra@example.com", env=env, stdin=MESSAGE
    )
    assert run.returncode == ExitCode.OK, run.stderr
    assert "extra@example.com" in sandbox.delivered()[0].rcpt_tos


async def test_without_t_recipients_are_the_arguments(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Without -t the headers are not read for recipients; the message is sent as it is."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-oi", "only@example.com", env=env, stdin=MESSAGE
    )
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.rcpt_tos == ["only@example.com"]
    assert b"Subject: report" in delivered.data


async def test_lone_dot_ends_input_without_i(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Without -i a line holding only '.' ends the message (Postfix)."""
    stdin = b"Subject: dots\n\nbefore\n.\nafter\n"
    run = await run_send_mail("--config", sandbox.config_path, "-t", "a@example.com", env=env, stdin=stdin)
    assert run.returncode == ExitCode.OK, run.stderr
    data = sandbox.delivered()[0].data
    assert b"before" in data
    assert b"after" not in data


async def test_lone_dot_is_kept_with_i(sandbox: Sandbox, env: dict[str, str]) -> None:
    """With -i the dot line is content and arrives (dot-stuffing undone by the server)."""
    stdin = b"Subject: dots\n\nbefore\n.\n..two\nafter\n"
    run = await run_send_mail("--config", sandbox.config_path, "-i", "a@example.com", env=env, stdin=stdin)
    assert run.returncode == ExitCode.OK, run.stderr
    data = sandbox.delivered()[0].data
    assert b"\r\nbefore\r\n.\r\n..two\r\nafter\r\n" in data


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
async def test_lf_and_crlf_input_arrive_alike(sandbox: Sandbox, env: dict[str, str], newline: bytes) -> None:
    """LF and CRLF input both arrive as the same CRLF message."""
    stdin = newline.join([b"Subject: endings", b"", b"one", b"two", b""])
    run = await run_send_mail("--config", sandbox.config_path, "-ti", "a@example.com", env=env, stdin=stdin)
    assert run.returncode == ExitCode.OK, run.stderr
    data = sandbox.delivered()[0].data
    assert data.endswith(b"\r\n\r\none\r\ntwo\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")


async def test_8bit_body_is_preserved(sandbox: Sandbox, env: dict[str, str]) -> None:
    """8-bit body bytes (UTF-8 and Latin-1 alike) arrive byte for byte."""
    body = "Grüße, ½ € \n".encode() + "Größe in Latin-1\n".encode("latin-1")
    stdin = (
        b"Subject: 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + body
    )
    run = await run_send_mail("--config", sandbox.config_path, "-ti", "a@example.com", env=env, stdin=stdin)
    assert run.returncode == ExitCode.OK, run.stderr
    assert sandbox.delivered()[0].data.endswith(body.replace(b"\n", b"\r\n"))


async def test_missing_date_and_message_id_are_added(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A message without Date, Message-ID or From gets them; From is the configured mailbox."""
    run = await run_send_mail(
        "--config",
        sandbox.config_path,
        "-ti",
        "a@example.com",
        env=env,
        stdin=b"Subject: bare\n\nx\n",
    )
    assert run.returncode == ExitCode.OK, run.stderr
    message = sandbox.delivered()[0].message
    assert message["Date"]
    domain = mailbox_of(sandbox).rpartition("@")[2]
    assert re.fullmatch(rf"<[^>]+@{re.escape(domain)}>", message["Message-ID"])
    assert message["From"] == mailbox_of(sandbox)


async def test_full_name_goes_into_missing_from(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-F sets the display name of the From header built for a message without one."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-ti", "-F", "Backup Bot", "a@example.com",
        env=env, stdin=b"Subject: named\n\nx\n",
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    assert sandbox.delivered()[0].message["From"].addresses[0].display_name == "Backup Bot"


async def test_full_name_cannot_inject_headers(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A line break in -F's name becomes a space, not a second header."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-ti", "-F", "Bot\nBcc: evil@example.com", "a@example.com",
        env=env, stdin=b"Subject: named\n\nx\n",
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.rcpt_tos == ["a@example.com"]
    assert delivered.message["From"].addresses[0].display_name == "Bot Bcc: evil@example.com"
    assert "Bcc" not in delivered.message


async def test_no_recipients_exits_65(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-t with no To/Cc/Bcc and no arguments: exit 65, nothing sent."""
    run = await run_send_mail("--config", sandbox.config_path, "-t", env=env, stdin=b"Subject: nobody\n\nx\n")
    assert run.returncode == ExitCode.DATAERR
    assert "no recipients" in run.stderr
    assert sandbox.delivered() == []


async def test_envelope_sender_from_f(sandbox: Sandbox, env: dict[str, str]) -> None:
    """-f sets MAIL FROM exactly as given."""
    sender = mailbox_of(sandbox).upper()  # Exchange compares case-insensitively
    run = await run_send_mail(
        "--config",
        sandbox.config_path,
        "-t",
        "-f",
        sender,
        env=env,
        stdin=b"To: a@example.com\n\nx\n",
    )
    assert run.returncode == ExitCode.OK, run.stderr
    assert sandbox.delivered()[0].mail_from == sender


async def test_usual_sendmail_flags_are_accepted(sandbox: Sandbox, env: dict[str, str]) -> None:
    """The flags PHP, cron, mailx and friends pass are accepted and ignored."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-t", "-oi", "-odi", "-oem", "-bm", "-om", "-Am",
        "-N", "never", "-B", "8BITMIME", "-O", "DeliveryMode=b", "-G", "-U", "-h", "20",
        "--", "a@example.com",
        env=env, stdin=b"Subject: flags\n\nx\n",
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    assert sandbox.delivered()[0].rcpt_tos == ["a@example.com"]


async def test_invoked_as_sendmail(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    """Through a symlink named sendmail it reads a finished message from stdin, as sendmail does."""
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(SEND_MAIL)
    run = await run_send_mail(
        "--config", sandbox.config_path, "a@example.com", env=env, program=link, stdin=MESSAGE
    )
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.rcpt_tos == ["a@example.com"]
    assert delivered.message["Subject"] == "report"


async def test_sendmail_name_reports_as_sendmail(env: dict[str, str], tmp_path: Path) -> None:
    """Errors of the sendmail name start with 'sendmail:' and compose options are refused (64)."""
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(SEND_MAIL)
    run = await run_send_mail("-s", "subject", "a@example.com", env=env, program=link)
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith("sendmail: --subject cannot be used in sendmail mode")


# What cronie pipes into "$MAILCMD -FCronDaemon -i -odi -oem -oi -t -f <user>" (do_command.c).
CRON_MESSAGE = (
    b'From: "(Cron Daemon)" <root>\nTo: ops@example.com\nSubject: Cron <root@host> backup\n'
    b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nX-Cron-Env: <SHELL=/bin/sh>\n\n"
    b"backup done\n"
)


async def test_cron_mail_with_local_sender_is_delivered(sandbox: Sandbox, env: dict[str, str]) -> None:
    """cron's `-f root` and `From: <root>` (no domain) are sent as the configured mailbox, not refused."""
    run = await run_send_mail(
        "--config", sandbox.config_path, "-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root",
        env=env, stdin=CRON_MESSAGE,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    (delivered,) = sandbox.delivered()
    assert delivered.mail_from == mailbox_of(sandbox)
    (author,) = delivered.message["From"].addresses
    assert (author.display_name, author.addr_spec) == ("(Cron Daemon)", mailbox_of(sandbox))
    assert delivered.message["Subject"] == "Cron <root@host> backup"


async def test_qualified_from_header_is_kept(sandbox: Sandbox, env: dict[str, str]) -> None:
    """A From header with a domain is left as written; only a bare local name is replaced."""
    stdin = b"From: Someone <someone@example.org>\nTo: a@example.com\n\nx\n"
    run = await run_send_mail("--config", sandbox.config_path, "--dry-run", "-ti", env=env, stdin=stdin)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.stdout.startswith(b"From: Someone <someone@example.org>\n")
