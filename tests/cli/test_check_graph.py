"""`smtp-oauth check` with transport = "graph": claims, the dry sendMail request, large messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import Completed, clean_env, run_cli_async
from tests.cli.test_check_cmd import _status_lines


async def _check(sandbox: Sandbox, tmp_path: Path, *args: str) -> Completed:
    config = sandbox.write_config(tmp_path / "graph.toml", transport="graph")
    return await run_cli_async("check", "--config", str(config), *args, env=clean_env(tmp_path), cwd=tmp_path)


async def test_a_healthy_graph_setup_passes_without_sending(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Every Graph step passes; the dry request reaches sendMail but nothing is sent."""
    done = await _check(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert list(labels) == [
        "configuration",
        "access token",
        "token claims",
        "Graph sendMail permission (dry request)",
        "large messages (Mail.ReadWrite)",
    ]
    assert set(labels.values()) == {"PASS"}
    assert "aud https://graph.microsoft.com, roles" in done.stdout
    assert "ErrorMimeContentInvalidBase64String" in done.stdout
    assert "nothing was sent" in done.stdout
    assert smtp_oauth_sandbox.graph_delivered() == []
    assert [r.status for r in smtp_oauth_sandbox.graph.requests("sendMail")] == [400]


async def test_send_test_goes_through_graph(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """--send-test sends one message through Graph and reports Graph's acceptance."""
    done = await _check(smtp_oauth_sandbox, tmp_path, "--send-test", "ops@example.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _status_lines(done.stdout)["test message"] == "PASS"
    [delivered] = smtp_oauth_sandbox.graph_delivered()
    assert delivered.rcpt_tos == ["ops@example.test"]


@pytest.mark.smtp_oauth_sandbox(graph_permissions=())
async def test_missing_mail_send_is_named_with_both_permission_models(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """No Mail.Send anywhere: the dry request fails 403 (exit 77); the fix names consent and RBAC."""
    done = await _check(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 77, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert labels["token claims"] == "PASS"  # no roles: the RBAC model, decided by the dry request
    assert labels["Graph sendMail permission (dry request)"] == "FAIL"
    flat = " ".join(done.stdout.split())
    assert "403 ErrorAccessDenied" in flat
    assert "Application permissions > Mail.Send" in flat
    assert "New-ManagementRoleAssignment" in flat
    assert smtp_oauth_sandbox.tenant.app.service_principal_id in flat


@pytest.mark.smtp_oauth_sandbox(graph_permissions=("Mail.Send",))
async def test_missing_mail_readwrite_is_a_warning_naming_it(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Mail.Send without Mail.ReadWrite: check passes with a WARN saying large messages will fail."""
    done = await _check(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _status_lines(done.stdout)["large messages (Mail.ReadWrite)"] == "WARN"
    assert "Mail.ReadWrite" in done.stdout


async def test_a_mailbox_graph_does_not_know_is_named(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """graph.mailbox unknown to the tenant: 404 ErrorInvalidUser, exit 77, the fix names graph.mailbox."""
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "graph.toml", transport="graph", graph={"mailbox": "nobody@sandbox.test"}
    )
    done = await run_cli_async("check", "--config", str(config), env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 77, done.stdout + done.stderr
    flat = " ".join(done.stdout.split())
    assert "ErrorInvalidUser" in flat
    assert "graph.mailbox" in flat
