"""`send-mail` with transport = "graph": a real subprocess against the sandbox's fake Microsoft Graph."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.cli.send_mail_harness import Run, run_send_mail


def _config(sandbox: Sandbox, tmp_path: Path) -> Path:
    return sandbox.write_config(tmp_path / "graph.toml", transport="graph")


def _raw(sandbox: Sandbox, *, body: bytes = b"Nightly report: all good.\n") -> bytes:
    return (
        f"From: {sandbox.tenant.mailbox}\nTo: ops@example.test\nSubject: nightly\n"
        "Date: Thu, 03 Dec 2026 07:00:00 +0000\nMessage-ID: <nightly-1@sandbox.test>\n\n"
    ).encode() + body


async def _send(sandbox: Sandbox, tmp_path: Path, env: dict[str, str], *args: str, stdin: bytes) -> Run:
    return await run_send_mail("--config", _config(sandbox, tmp_path), *args, env=env, stdin=stdin)


async def test_sendmail_input_goes_through_graph_byte_identical_apart_from_the_bcc(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path, env: dict[str, str]
) -> None:
    """`sendmail -i ops@ audit@` < message: Graph gets the message as read, plus `Bcc: audit@`; exit 0."""
    raw = _raw(smtp_oauth_sandbox)
    done = await _send(
        smtp_oauth_sandbox, tmp_path, env, "-i", "ops@example.test", "audit@example.test", stdin=raw
    )
    assert done.returncode == 0, done.stderr
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    head, _, body = delivered.data.replace(b"\r\n", b"\n").partition(b"\n\n")
    original_head, _, original_body = raw.partition(b"\n\n")
    assert head == original_head + b"\nBcc: audit@example.test"
    assert body == original_body
    assert delivered.rcpt_tos == ["ops@example.test", "audit@example.test"]
    assert smtp_oauth_sandbox.delivered() == []  # nothing through SMTP


async def test_a_long_retry_after_exits_75_saying_how_long(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path, env: dict[str, str]
) -> None:
    """429 with Retry-After: 120 -> exit 75 at once (sendmail's "try again later"), naming the wait."""
    smtp_oauth_sandbox.inject_graph(
        "sendMail", 429, "ApplicationThrottled", "Application is over its limit.", retry_after=120
    )
    done = await _send(
        smtp_oauth_sandbox, tmp_path, env, "-i", "ops@example.test", stdin=_raw(smtp_oauth_sandbox)
    )
    assert done.returncode == 75, done.stderr
    assert "429 ApplicationThrottled" in done.stderr
    assert "Graph asked to wait 1" in done.stderr
    assert smtp_oauth_sandbox.graph_delivered() == []


@pytest.mark.smtp_oauth_sandbox(graph_permissions=())
async def test_missing_mail_send_exits_77_with_the_fix(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path, env: dict[str, str]
) -> None:
    """No Mail.Send: exit 77, the 403 and both ways to grant it; never an SMTP reply code."""
    done = await _send(
        smtp_oauth_sandbox, tmp_path, env, "-i", "ops@example.test", stdin=_raw(smtp_oauth_sandbox)
    )
    assert done.returncode == 77, done.stderr
    assert "403 ErrorAccessDenied" in done.stderr
    assert "Mail.Send" in done.stderr
    assert "New-ManagementRoleAssignment" in done.stderr


@pytest.mark.smtp_oauth_sandbox(graph_permissions=("Mail.Send",))
async def test_a_large_message_without_mail_readwrite_exits_65_naming_it(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path, env: dict[str, str]
) -> None:
    """A 5 MB message needs a draft, hence Mail.ReadWrite: exit 65 (a message Graph cannot take this way)."""
    message = EmailMessage()
    message["From"] = smtp_oauth_sandbox.tenant.mailbox
    message["To"] = "ops@example.test"
    message["Subject"] = "scan"
    message.set_content("The scan is attached.\n")
    message.add_attachment(b"%PDF" * 1_300_000, maintype="application", subtype="pdf", filename="scan.pdf")
    raw = message.as_bytes()
    done = await _send(smtp_oauth_sandbox, tmp_path, env, "-i", "ops@example.test", stdin=raw)
    assert done.returncode == 65, done.stderr
    assert "Mail.ReadWrite" in done.stderr
    assert smtp_oauth_sandbox.graph_delivered() == []
