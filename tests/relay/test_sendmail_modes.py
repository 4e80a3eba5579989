"""sendmail's other modes through the relay: -bs, -bp/mailq, -q, and -bi/newaliases, -bv.

A real relay (in this process) on the sandbox and real ``send-mail`` processes, run under the
names sendmail is installed as.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smtp_oauth.cli.sendmail_modes import format_queue
from smtp_oauth.relay.service import RelayService
from smtp_oauth.relay.spool.base import new_queue_id
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env, run_program
from tests.cli.send_mail_harness import SEND_MAIL
from tests.relay.relay_harness import relay_section, running_relay, states, wait_until


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A short socket path (sockaddr_un holds 108 bytes; pytest's temporary paths can be longer)."""
    with tempfile.TemporaryDirectory(prefix="smtp-oauth-", dir="/tmp") as directory:
        yield Path(directory) / "submit.sock"


@pytest.fixture
def configured(sandbox: Sandbox, socket_path: Path) -> Sandbox:
    """The sandbox's configuration with the submission socket and via = "relay"."""
    sandbox.write_config(relay=relay_section(submission_socket=str(socket_path)), send_mail={"via": "relay"})
    return sandbox


@pytest.fixture
async def relay(configured: Sandbox) -> AsyncIterator[RelayService]:
    async with running_relay(configured, backoff_base=60, backoff_cap=60) as (service, _port):
        yield service


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


async def run_as(
    name: str, sandbox: Sandbox, env: dict[str, str], *args: str, stdin: bytes = b""
) -> tuple[int, str, str]:
    """send-mail run under ``name`` (a symlink, as distributions install it); (code, stdout, stderr)."""
    link = Path(env["HOME"]) / "bin" / name
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(SEND_MAIL)
    code, stdout, stderr = await run_program(
        link, "-C", sandbox.config_path, *args, env=env, cwd=env["HOME"], stdin=stdin
    )
    return code, stdout.decode(), stderr.decode()


SMTP_DIALOGUE = (
    b"EHLO app.example\r\n"
    b"MAIL FROM:<{sender}>\r\n"
    b"RCPT TO:<alice@example.test>\r\n"
    b"DATA\r\n"
    b"From: {sender}\r\nTo: alice@example.test\r\nSubject: via -bs\r\n\r\nhello\r\n.\r\n"
    b"QUIT\r\n"
)


async def test_bs_speaks_smtp_on_stdin_and_stdout(
    relay: RelayService, configured: Sandbox, env: dict[str, str]
) -> None:
    """`sendmail -bs` (Symfony Mailer's default): an SMTP dialogue on stdio, the message queued."""
    sender = configured.settings().smtp.username.encode()
    code, stdout, stderr = await run_as(
        "sendmail", configured, env, "-bs", stdin=SMTP_DIALOGUE.replace(b"{sender}", sender)
    )
    assert (code, stderr) == (0, "")
    replies = [line[:3] for line in stdout.splitlines() if line[3:4] == " "]
    assert replies == ["220", "250", "250", "250", "354", "250", "221"]
    assert "queued as" in stdout
    await wait_until(lambda: len(configured.delivered()) == 1, what="delivery upstream")


async def test_mailq_lists_a_deferred_message_and_q_sends_it_now(
    relay: RelayService, configured: Sandbox, env: dict[str, str]
) -> None:
    """`mailq` shows the deferred message with its reply; `sendmail -q` makes the relay send it now."""
    configured.inject("MAIL", "451 4.3.0 Try again later", times=1)
    code, _, _ = await run_as("sendmail", configured, env, "-t", stdin=b"To: bob@example.test\n\nlater\n")
    assert code == 0
    await wait_until(
        lambda: relay.delivery is not None and bool(relay.delivery.results.get("deferred")), what="deferral"
    )
    code, listing, stderr = await run_as("mailq", configured, env)
    assert (code, stderr) == (0, "")
    assert "(451 4.3.0 Try again later)" in listing
    assert "bob@example.test" in listing
    assert listing.rstrip().endswith("in 1 Request.")
    code, _, stderr = await run_as("sendmail", configured, env, "-q")
    assert (code, stderr) == (0, "")
    await wait_until(lambda: len(configured.delivered()) == 1, within=10, what="the retried delivery")


def test_mailq_lines_recipients_up_under_the_sender_of_a_full_length_id() -> None:
    """A 24-digit queue id with its mark keeps the columns: recipients and the reply start where
    the sender does, as in Postfix's mailq."""
    entry = {
        "id": new_queue_id(),
        "state": "sending",
        "size": 1234,
        "created_at": 1_796_000_000.0,
        "mail_from": "app@example.test",
        "last_reply": "451 4.3.0 Try again later",
        "rcpt_tos": ["bob@example.test"],
    }
    header, line, reply, recipient, *_ = format_queue([entry]).splitlines()
    column = header.index("-Sender/Recipient-")
    assert line.startswith(f"{entry['id']}* ")
    assert [line.index("app@"), reply.index("("), recipient.index("bob@")] == [column] * 3


async def test_mailq_says_when_the_queue_is_empty(
    relay: RelayService, configured: Sandbox, env: dict[str, str]
) -> None:
    """`sendmail -bp` with nothing queued: mailq's own words, exit 0."""
    assert await run_as("sendmail", configured, env, "-bp") == (0, "Mail queue is empty\n", "")


@pytest.mark.parametrize(("name", "args"), [("mailq", ()), ("sendmail", ("-q",)), ("sendmail", ("-bs",))])
async def test_queue_modes_without_a_relay_exit_69_with_one_line(
    configured: Sandbox, env: dict[str, str], name: str, args: tuple[str, ...]
) -> None:
    """No relay running: -bp/mailq, -q and -bs exit 69 saying so, and never read a message."""
    code, stdout, stderr = await run_as(name, configured, env, *args, stdin=b"To: x@example.test\n\nx\n")
    assert (code, stdout) == (69, "")
    assert stderr.splitlines()[0].startswith(f"{name}: no relay is running: ")


async def test_newaliases_has_nothing_to_do(configured: Sandbox, env: dict[str, str]) -> None:
    """`newaliases` (and -bi) exits 0 with one line: there is no aliases database to rebuild."""
    code, stdout, stderr = await run_as("newaliases", configured, env)
    assert (code, stdout) == (0, "")
    assert len(stderr.splitlines()) == 1
    assert "no local aliases" in stderr


async def test_bv_is_refused_with_one_line(configured: Sandbox, env: dict[str, str]) -> None:
    """`sendmail -bv addr` cannot be answered before delivery: exit 64, one line naming why."""
    code, _, stderr = await run_as("sendmail", configured, env, "-bv", "alice@example.test")
    assert code == 64
    assert stderr.startswith("sendmail: -bv (verify addresses) is not supported: ")


async def test_no_mode_composes_a_message_when_called_as_mailq(
    relay: RelayService, configured: Sandbox, env: dict[str, str]
) -> None:
    """`mailq` with a recipient-looking argument and input on stdin still only lists the queue."""
    code, listing, _ = await run_as("mailq", configured, env, "alice@example.test", stdin=b"hello\n")
    assert (code, listing) == (0, "Mail queue is empty\n")
    assert sum((await states(relay)).values()) == 0
