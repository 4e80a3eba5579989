"""The relay's submission socket and ``send-mail`` with ``[send_mail] via = "relay"``.

A real relay (in this process) on the sandbox, real ``send-mail`` processes submitting over its
Unix socket, real SQLite and the fake Exchange Online behind it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smtp_oauth.relay.client import SubmissionClient
from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env, run_program
from tests.cli.send_mail_harness import SEND_MAIL
from tests.relay.relay_harness import relay_section, running_relay, states, wait_until

CRON_MESSAGE = b"From: root\nTo: {to}\nSubject: Cron <root@host> run-parts /etc/cron.hourly\n\nall good\n"


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A short socket path (sockaddr_un holds 108 bytes; pytest's temporary paths can be longer)."""
    with tempfile.TemporaryDirectory(prefix="smtp-oauth-", dir="/tmp") as directory:
        yield Path(directory) / "submit.sock"


@pytest.fixture
async def relay(sandbox: Sandbox, socket_path: Path) -> AsyncIterator[RelayService]:
    """A running relay whose configuration also tells send-mail to go through it."""
    sandbox.write_config(relay=relay_section(submission_socket=str(socket_path)), send_mail={"via": "relay"})
    async with running_relay(sandbox) as (service, _port):
        yield service


async def send_mail(sandbox: Sandbox, env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run the installed send-mail with the sandbox's configuration; (exit code, stderr)."""
    code, _, stderr = await run_program(
        SEND_MAIL, "--config", sandbox.config_path, *args, env=env, cwd=env["HOME"], stdin=stdin
    )
    return code, stderr.decode("utf-8", "replace")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


async def test_send_mail_via_relay_exits_once_the_message_is_in_the_spool(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """send-mail via the relay exits 0 with the message already committed to the relay's spool."""
    code, stderr = await send_mail(sandbox, env, "-s", "hello", "--body", "queued", "alice@example.test")
    assert (code, stderr) == (0, "")
    assert sum((await states(relay)).values()) == 1  # stored before send-mail returned
    await wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery upstream")
    assert sandbox.delivered()[0].rcpt_tos == ["alice@example.test"]


async def test_local_submission_is_recorded_as_the_peer_account(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """The relay names the submitter by the kernel's peer uid (SO_PEERCRED), with no password asked."""
    code, _ = await send_mail(sandbox, env, "--body", "x", "alice@example.test")
    assert code == 0
    assert relay.spool is not None
    (entry,) = await relay.spool.list()
    assert entry.local_user == pwd.getpwuid(os.getuid()).pw_name
    assert entry.mailbox == sandbox.settings().smtp.username


async def test_cron_style_local_sender_goes_out_as_the_mailbox(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """`sendmail -t -f root` as cron runs it: accepted, and sent as the configured mailbox."""
    message = CRON_MESSAGE.replace(b"{to}", b"ops@example.test")
    code, stderr = await send_mail(sandbox, env, "-t", "-i", "-f", "root", "-oem", stdin=message)
    assert (code, stderr) == (0, "")
    await wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery upstream")
    assert sandbox.delivered()[0].mail_from == sandbox.settings().smtp.username


async def test_local_submission_of_a_profile_goes_out_as_its_mailbox_and_identity(
    sandbox: Sandbox, socket_path: Path, env: dict[str, str]
) -> None:
    """`send-mail --profile scanner` via the relay is delivered as scanner's mailbox, with its app."""
    tenant = sandbox.tenant
    scanner = {
        "identity": {"client_id": tenant.rbac_app.client_id, "client_secret": tenant.rbac_app.client_secret},
        "smtp": {"username": tenant.second_user.upn},
    }
    sandbox.write_config(
        relay=relay_section(submission_socket=str(socket_path)),
        send_mail={"via": "relay"},
        profiles={"scanner": scanner},
    )
    async with running_relay(sandbox):
        code, stderr = await send_mail(
            sandbox, env, "--profile", "scanner", "--body", "scan", "a@example.test"
        )
        assert (code, stderr) == (0, "")
        await wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery upstream")
    delivered = sandbox.delivered()[0]
    assert (delivered.auth_user, delivered.mail_from) == (tenant.second_user.upn, tenant.second_user.upn)
    cache_files = [p.name for p in (sandbox.directory / "token-cache").glob("*.json")]
    assert any(name.startswith(tenant.rbac_app.client_id.split("-")[0]) for name in cache_files)


async def test_sender_the_mailbox_may_not_use_is_refused_at_submission(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """A sender outside the local account's rules is refused by the relay: exit 69, one line why."""
    code, stderr = await send_mail(sandbox, env, "-f", "ceo@elsewhere.test", "--body", "x", "a@example.test")
    assert code == 69
    assert stderr.splitlines()[0].startswith("send-mail: the relay (submission socket ")
    assert "refused the sender <ceo@elsewhere.test>: 550 5.7.1" in stderr


async def test_without_a_running_relay_send_mail_exits_69_with_one_line(
    sandbox: Sandbox, socket_path: Path, env: dict[str, str]
) -> None:
    """via = "relay" with no relay listening: exit 69 (EX_UNAVAILABLE), a line naming the socket."""
    sandbox.write_config(relay=relay_section(submission_socket=str(socket_path)), send_mail={"via": "relay"})
    code, stderr = await send_mail(sandbox, env, "--body", "x", "a@example.test")
    assert code == 69
    first, *rest = stderr.splitlines()
    assert first == (
        f"send-mail: no relay is running: nothing accepts mail on the submission socket {socket_path} "
        "(no such socket)"
    )
    assert rest[0].startswith("hint: ")


async def test_submission_socket_is_owner_and_group_only(relay: RelayService) -> None:
    """The socket is mode 0660: its group decides who may submit, nobody else may connect."""
    mode = relay.submission.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_auth_is_not_offered_on_the_submission_socket(relay: RelayService) -> None:
    """The socket's EHLO lists PIPELINING-style extensions and ETRN, but no AUTH (no passwords here)."""
    client = SubmissionClient([relay.submission.path])
    await asyncio.to_thread(client.connect)
    try:
        assert "AUTH" not in client.extensions
        assert {"SMTPUTF8", "ETRN", "PIPELINING"} <= client.extensions
    finally:
        client.close()


async def test_twenty_concurrent_cron_sends_are_all_delivered_within_the_session_limit(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """20 send-mail runs at once for one mailbox: all exit 0, all delivered, <= 3 upstream sessions."""
    runs = [
        send_mail(
            sandbox, env, "-t", "-i", stdin=CRON_MESSAGE.replace(b"{to}", f"ops{n}@example.test".encode())
        )
        for n in range(20)
    ]
    results = await asyncio.gather(*runs)
    assert [code for code, _ in results] == [0] * 20
    await wait_until(lambda: len(sandbox.delivered()) == 20, within=30, what="20 deliveries")
    mailbox = sandbox.settings().smtp.username
    assert sandbox.exchange.sessions_peak[mailbox] <= 3


async def test_a_stale_socket_of_a_killed_relay_is_replaced(sandbox: Sandbox, socket_path: Path) -> None:
    """A socket file nobody listens on (the relay was killed) does not stop the next relay."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, with no listener behind it
    sandbox.write_config(relay=relay_section(submission_socket=str(socket_path)))
    async with running_relay(sandbox) as (service, _):
        assert service.submission.listening


PROBE = """
import sys
from smtp_oauth.cli.send_mail import main
code = main(sys.argv[1:])
print(" ".join(sorted(sys.modules)))
sys.exit(code)
"""


async def test_a_send_via_the_relay_imports_no_pydantic_msal_asyncio_or_aiosmtplib(
    sandbox: Sandbox, relay: RelayService, env: dict[str, str]
) -> None:
    """Once a snapshot of the validated settings exists, a submission loads none of the heavy packages."""
    args = ["--config", str(sandbox.config_path), "--body", "x", "alice@example.test"]
    for _ in range(2):  # the first run validates fully and writes the snapshot the second one reads
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, *args, stdout=asyncio.subprocess.PIPE, env=env, cwd=env["HOME"]
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
    loaded = {name.split(".")[0] for name in stdout.decode().split()}
    assert loaded & {"pydantic", "pydantic_settings", "msal", "asyncio", "aiosmtplib", "aiosmtpd"} == set()
    await wait_until(lambda: len(sandbox.delivered()) == 2, what="both deliveries")
