"""SMTP App RBAC end to end: a claims-less app-only token through send-mail and `check`, and the
setup script `check` prints for the model the token uses."""

from __future__ import annotations

import json
from pathlib import Path

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.tokens.claims import decode_claims
from smtp_oauth.tokens.provider import create_token_provider
from tests.cli.admin_cli import Completed, clean_env, run_cli_async
from tests.cli.send_mail_harness import run_send_mail


def rbac_config(sandbox: Sandbox, tmp_path: Path, **smtp: str) -> Path:
    """The scanner app (secret, no API permission), sending as scanner@ unless told otherwise."""
    return sandbox.write_config(tmp_path / "rbac.toml", credential="rbac", smtp=smtp)


async def check(config: Path, tmp_path: Path, *args: str) -> Completed:
    return await run_cli_async("check", "--config", str(config), *args, env=clean_env(tmp_path), cwd=tmp_path)


async def test_rbac_token_carries_no_roles(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """The sandbox issues the RBAC app a token without a roles claim, as Entra does."""
    from smtp_oauth.settings.loading import load_settings

    settings = load_settings(rbac_config(smtp_oauth_sandbox, tmp_path))
    claims = decode_claims(await create_token_provider(settings).access_token())
    assert "roles" not in claims


async def test_claims_less_token_passes_check_and_names_rbac(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """check passes every step for a token without roles, and says SMTP App RBAC is in use."""
    done = await check(rbac_config(smtp_oauth_sandbox, tmp_path), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SMTP App RBAC" in " ".join(done.stdout.split())


async def test_check_json_reports_the_model(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """--json carries the model as a fact of the claims step, for monitoring."""
    done = await check(smtp_oauth_sandbox.config_path, tmp_path, "--json")
    report = json.loads(done.stdout)
    [claims] = [step for step in report["steps"] if step["name"] == "claims"]
    assert claims["facts"]["model"] == "api_permission"


async def test_claims_less_token_sends_through_send_mail(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """send-mail delivers as scanner@ with a token that has no roles at all."""
    config = rbac_config(smtp_oauth_sandbox, tmp_path)
    done = await run_send_mail(
        "--config",
        config,
        "--to",
        "alice@example.test",
        "-s",
        "rbac",
        "--body",
        "hi",
        env=clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.second_user.upn


async def test_mailbox_outside_the_scope_gets_the_rbac_script(
    smtp_oauth_sandbox: Sandbox, tmp_path: Path
) -> None:
    """AUTH refused for a mailbox outside the role assignment: the fix is the RBAC setup with the ids."""
    tenant = smtp_oauth_sandbox.tenant
    config = rbac_config(smtp_oauth_sandbox, tmp_path, username=tenant.mailbox)
    done = await check(config, tmp_path)
    assert done.returncode == 77, done.stdout + done.stderr
    flat = " ".join(done.stdout.split())
    app = tenant.rbac_app
    assert f"New-ServicePrincipal -AppId {app.client_id} -ObjectId {app.service_principal_id}" in flat
    assert f'New-ManagementRoleAssignment -App {app.client_id} -Role "Application SMTP.SendAsApp"' in flat
    assert f"PrimarySmtpAddress -eq '{tenant.mailbox}'" in flat
    assert "Add-MailboxPermission" not in flat


async def test_sandbox_grants_a_mailbox_by_rbac(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """After the sandbox's RBAC grant the same configuration passes check."""
    tenant = smtp_oauth_sandbox.tenant
    config = rbac_config(smtp_oauth_sandbox, tmp_path, username=tenant.mailbox)
    smtp_oauth_sandbox.grant_mailbox(tenant.rbac_app.client_id, tenant.mailbox, model="rbac")
    done = await check(config, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_sandbox_grants_a_mailbox_by_fullaccess(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """A FullAccess grant serves the classic model: the daemon app may then send as scanner@ too."""
    tenant = smtp_oauth_sandbox.tenant
    config = smtp_oauth_sandbox.write_config(
        tmp_path / "classic.toml", smtp={"username": tenant.second_user.upn}
    )
    assert (await check(config, tmp_path)).returncode == 77
    smtp_oauth_sandbox.grant_mailbox(tenant.app.client_id, tenant.second_user.upn, model="fullaccess")
    done = await check(config, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
