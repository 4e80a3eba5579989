"""One relay, several senders: relay users on two profiles (two apps, two mailboxes), each
delivered upstream with its own identity; create_transport(profile=) and check --all-profiles."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.sandbox import Sandbox
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.transport import create_transport
from tests.cli.admin_cli import clean_env, run_cli_async
from tests.relay.relay_harness import (
    FAST_DELIVERY,
    PASSWORD,
    PASSWORD_HASH,
    make_message,
    send_legacy,
    wait_until,
)


def two_profile_config(sandbox: Sandbox) -> Path:
    """Top level: the daemon app and sender@; profile "scanner": the RBAC app and scanner@."""
    tenant = sandbox.tenant
    scanner = {
        "identity": {"client_id": tenant.rbac_app.client_id, "client_secret": tenant.rbac_app.client_secret},
        "smtp": {"username": tenant.second_user.upn},
    }
    users: list[dict[str, Any]] = [
        {"name": "erp", "password_hash": PASSWORD_HASH},
        {"name": "scanner", "password_hash": PASSWORD_HASH, "profile": "scanner"},
    ]
    return sandbox.write_config(
        sandbox.directory / "profiles.toml",
        profiles={"scanner": scanner},
        relay={"listen": "127.0.0.1:0", "messages_per_minute": 0, "shutdown_timeout": "5s", "users": users},
    )


async def test_relay_delivers_each_user_with_its_profiles_identity(smtp_oauth_sandbox: Sandbox) -> None:
    """erp's mail goes out as sender@ (daemon app), scanner's as scanner@ (RBAC app), one relay."""
    from smtp_oauth.relay.service import RelayService

    tenant = smtp_oauth_sandbox.tenant
    service = RelayService(
        load_settings(two_profile_config(smtp_oauth_sandbox)), delivery_tuning=FAST_DELIVERY
    )
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(ready=ready.set_result))
    try:
        port = (await asyncio.wait_for(asyncio.shield(ready), 10))[0][1]
        await asyncio.to_thread(
            send_legacy, port, [make_message(tenant.mailbox, 1)], user="erp", password=PASSWORD
        )
        await asyncio.to_thread(
            send_legacy, port, [make_message(tenant.second_user.upn, 2)], user="scanner", password=PASSWORD
        )
        await wait_until(lambda: len(smtp_oauth_sandbox.delivered()) == 2, what="both deliveries")
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
    by_mailbox = {message.auth_user: message for message in smtp_oauth_sandbox.delivered()}
    assert set(by_mailbox) == {tenant.mailbox, tenant.second_user.upn}
    cache_files = sorted(p.name for p in (smtp_oauth_sandbox.directory / "token-cache").glob("*.json"))
    assert [name.split("-")[0] for name in cache_files] == sorted(
        [tenant.app.client_id.split("-")[0], tenant.rbac_app.client_id.split("-")[0]]
    )


async def test_scanner_may_not_send_as_the_erp_mailbox(smtp_oauth_sandbox: Sandbox) -> None:
    """A profile user's allowed sender defaults to its profile's mailbox, not the top level's."""
    import smtplib

    from smtp_oauth.relay.service import RelayService

    tenant = smtp_oauth_sandbox.tenant
    service = RelayService(
        load_settings(two_profile_config(smtp_oauth_sandbox)), delivery_tuning=FAST_DELIVERY
    )
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(ready=ready.set_result))
    try:
        port = (await asyncio.wait_for(asyncio.shield(ready), 10))[0][1]
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await asyncio.to_thread(
                send_legacy, port, [make_message(tenant.mailbox, 3)], user="scanner", password=PASSWORD
            )
        assert refused.value.smtp_code == 550
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)


async def test_create_transport_sends_as_a_profile(smtp_oauth_sandbox: Sandbox) -> None:
    """create_transport(settings, profile=...) uses the profile's identity and mailbox."""
    settings = load_settings(two_profile_config(smtp_oauth_sandbox))
    message = EmailMessage()
    message["To"] = "alice@example.test"
    message["Subject"] = "from a profile"
    message.set_content("hi\n")
    async with create_transport(settings, profile="scanner") as transport:
        await transport.send(message)
    [delivered] = smtp_oauth_sandbox.delivered()
    assert delivered.auth_user == smtp_oauth_sandbox.tenant.second_user.upn


async def test_check_all_profiles_checks_each(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """check --all-profiles runs the top level and every profile; exit 0 when all pass."""
    config = two_profile_config(smtp_oauth_sandbox)
    done = await run_cli_async(
        "check", "--config", str(config), "--all-profiles", env=clean_env(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== top level" in done.stdout
    assert "== profile scanner" in done.stdout
    assert done.stdout.count("All checks passed.") == 2


async def test_reload_that_moves_a_user_to_another_profile_is_refused(smtp_oauth_sandbox: Sandbox) -> None:
    """Changing relay users' profiles needs a restart: reload keeps the running configuration."""
    from smtp_oauth.relay.service import RelayService

    config = two_profile_config(smtp_oauth_sandbox)
    service = RelayService(load_settings(config), delivery_tuning=FAST_DELIVERY)
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(ready=ready.set_result))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
        config.write_text(config.read_text().replace('profile = "scanner"\n', ""))
        assert await service.reload() is False
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
