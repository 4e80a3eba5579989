"""`smtp-oauth check` against the sandbox: all steps pass when healthy, and each fault names its cause."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.sandbox.certs import make_certificates
from tests.cli.admin_cli import Completed, clean_env, run_cli_async

SMTP_AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
    "Visit https://aka.ms/smtp_auth_disabled for more information."
)


async def _check(sandbox: Sandbox, tmp_path: Path, *args: str, config: Path | None = None) -> Completed:
    path = config or sandbox.config_path
    return await run_cli_async("check", "--config", str(path), *args, env=clean_env(tmp_path), cwd=tmp_path)


def _status_lines(stdout: str) -> dict[str, str]:
    """Step title -> its PASS/FAIL/SKIP/WARN label, from the human output."""
    labels = {}
    for line in stdout.splitlines():
        label, _, rest = line.partition(" ")
        if label in {"PASS", "FAIL", "SKIP", "WARN"}:
            labels[rest.strip().split(":")[0]] = label
    return labels


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_check_passes_every_step_on_a_healthy_sandbox(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Config, token, claims, TCP, STARTTLS and AUTH all pass, and check exits 0."""
    done = await _check(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert list(labels) == [
        "configuration",
        "access token",
        "token claims",
        "TCP connection",
        "STARTTLS and certificate",
        "AUTH XOAUTH2",
    ]
    assert set(labels.values()) == {"PASS"}
    assert "All checks passed." in done.stdout
    assert smtp_oauth_sandbox.delivered() == []  # AUTH only: nothing sent


async def test_check_json_is_one_document_for_monitoring(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """--json prints one JSON document with ok, exit_code, the ids and every step; no token in it."""
    done = await _check(smtp_oauth_sandbox, tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["exit_code"] == 0
    assert report["identity"]["client_id"] == smtp_oauth_sandbox.tenant.app.client_id
    assert [step["name"] for step in report["steps"]] == [
        "config",
        "token",
        "claims",
        "connect",
        "tls",
        "auth",
    ]
    assert report["steps"][2]["facts"]["oid"] == smtp_oauth_sandbox.tenant.app.service_principal_id
    assert "eyJ" not in done.stdout


async def test_send_test_delivers_a_message(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """--send-test ADDR adds a step that sends a test message to ADDR."""
    done = await _check(smtp_oauth_sandbox, tmp_path, "--send-test", "ops@example.org")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _status_lines(done.stdout)["test message"] == "PASS"
    delivered = smtp_oauth_sandbox.delivered()
    assert len(delivered) == 1
    assert delivered[0].rcpt_tos == ["ops@example.org"]


async def test_smtp_auth_disabled_names_set_casmailbox(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """535 5.7.139 (twice: the retry with a fresh token too) -> AUTH fails naming Set-CASMailbox."""
    smtp_oauth_sandbox.inject("AUTH", SMTP_AUTH_DISABLED, times=2)
    done = await _check(smtp_oauth_sandbox, tmp_path)
    assert done.returncode == 77, done.stdout + done.stderr
    assert _status_lines(done.stdout)["AUTH XOAUTH2"] == "FAIL"
    assert " INFO " not in done.stdout + done.stderr  # "retrying once with a new token" stays out
    mailbox = smtp_oauth_sandbox.tenant.mailbox
    flat = " ".join(done.stdout.split())
    assert f"Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false" in flat


async def test_app_not_granted_the_mailbox_names_service_principal_commands(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """535 5.7.3 for app-only -> New-ServicePrincipal and Add-MailboxPermission with the real ids."""
    other = f"nobody@{smtp_oauth_sandbox.tenant.domain}"
    config = smtp_oauth_sandbox.write_config(tmp_path / "other.toml", smtp={"username": other})
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 77, done.stdout + done.stderr
    assert _status_lines(done.stdout)["AUTH XOAUTH2"] == "FAIL"
    app = smtp_oauth_sandbox.tenant.app
    flat = " ".join(done.stdout.split())
    assert "5.7.3" in flat
    assert f"New-ServicePrincipal -AppId {app.client_id} -ObjectId {app.service_principal_id}" in flat
    assert (
        f"Add-MailboxPermission -Identity {other} -User {app.service_principal_id} -AccessRights FullAccess"
        in flat
    )


async def test_wrong_audience_names_identity_scopes(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Scopes for another API -> the audience is not Exchange Online, and identity.scopes is named."""
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "graph.toml", identity={"scopes": ["https://graph.microsoft.com/.default"]}
    )
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 77, done.stdout + done.stderr
    flat = " ".join(done.stdout.split())
    assert "identity.scopes asks for https://graph.microsoft.com/.default" in flat
    assert "not Exchange Online" in flat
    assert '["https://outlook.office365.com/.default"]' in flat
    assert _status_lines(done.stdout)["AUTH XOAUTH2"] == "SKIP"


async def test_wrong_secret_names_aadsts7000215(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """A wrong client secret -> the token step fails with AADSTS7000215 and says which value to copy."""
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "bad.toml", identity={"client_secret": "not-the-secret"}
    )
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 77, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert labels["access token"] == "FAIL"
    assert labels["TCP connection"] == "SKIP"
    flat = " ".join(done.stdout.split())
    assert "AADSTS7000215" in flat
    assert "Certificates & secrets" in flat
    assert "not-the-secret" not in done.stdout + done.stderr


async def test_unreachable_host_fails_the_tcp_step(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """Nothing listening on smtp.port -> the TCP step fails (exit 75) and names smtp.host/smtp.port."""
    port = _closed_port()
    config = smtp_oauth_sandbox.write_config(tmp_path / "closed.toml", smtp={"port": port})
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 75, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert labels["TCP connection"] == "FAIL"
    assert labels["STARTTLS and certificate"] == "SKIP"
    flat = " ".join(done.stdout.split())
    assert f"cannot connect to 127.0.0.1:{port}" in flat
    assert "smtp.host and smtp.port" in flat


async def test_untrusted_certificate_names_smtp_ca_file(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """smtp.ca_file holding another CA -> the STARTTLS step fails (a configuration error, 78)."""
    other_ca = make_certificates(tmp_path / "other-ca").ca_file
    config = smtp_oauth_sandbox.write_config(tmp_path / "ca.toml", smtp={"ca_file": str(other_ca)})
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 78, done.stdout + done.stderr
    labels = _status_lines(done.stdout)
    assert labels["TCP connection"] == "PASS"
    assert labels["STARTTLS and certificate"] == "FAIL"
    flat = " ".join(done.stdout.split())
    assert "not trusted" in flat
    assert f"smtp.ca_file ({other_ca})" in flat


async def test_configuration_error_fails_first_and_skips_the_rest(tmp_path: Path) -> None:
    """A configuration error -> the config step fails with exit 78 and every later step is skipped."""
    config = tmp_path / "broken.toml"
    config.write_text('[identity]\ntenant_id = "t"\n[smtp]\nusername = "a@b.c"\n')
    done = await run_cli_async("check", "--config", str(config), env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 78
    labels = _status_lines(done.stdout)
    assert labels["configuration"] == "FAIL"
    assert set(list(labels.values())[1:]) == {"SKIP"}
    assert "identity.client_id" in done.stdout


async def test_check_passes_for_a_signed_in_user(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """After a device-code login, check passes with the delegated token (scp SMTP.Send, the user)."""
    config = smtp_oauth_sandbox.write_config(tmp_path / "user.toml", flow="device_code")
    env = clean_env(tmp_path)
    login = await run_cli_async("login", "--config", str(config), env=env, cwd=tmp_path)
    assert login.returncode == 0, login.stderr
    done = await _check(smtp_oauth_sandbox, tmp_path, config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    claims_line = next(line for line in done.stdout.splitlines() if line.startswith("PASS  token claims"))
    assert "scp SMTP.Send" in claims_line
    assert f"user {smtp_oauth_sandbox.tenant.mailbox}" in claims_line
