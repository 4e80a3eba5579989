"""`smtp-oauth queue` against a running `smtp-oauth relay` (both real processes)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smtp_oauth.relay.spool.base import Message
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env
from tests.relay.relay_harness import (
    RelayProcess,
    make_message,
    send_legacy,
    wait_until,
)


@pytest.fixture
async def relay(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(sandbox.config_path, tmp_path / "relay.log", clean_env(tmp_path))
    await process.start()
    yield process
    process.kill(signal.SIGTERM)
    assert await process.wait() == 0


async def queue(sandbox: Sandbox, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "smtp_oauth", "--config", str(sandbox.config_path), "queue", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def listed(sandbox: Sandbox, tmp_path: Path) -> list[dict[str, Any]]:
    code, out, err = await queue(sandbox, tmp_path, "list", "--json")
    assert code == 0, err
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


async def test_dead_message_is_listed_shown_and_retried(
    sandbox: Sandbox, relay: RelayProcess, tmp_path: Path
) -> None:
    """A rejected message shows up as dead with its reply; `retry ID` sends it once the cause is gone."""
    sandbox.inject("DATA", "554 5.6.0 Corrupt message content; STOREDRV.Submission.Exception")
    await asyncio.to_thread(send_legacy, relay.port, [make_message(sandbox.tenant.mailbox, 1)])
    entries: list[dict[str, Any]] = []

    async def dead() -> bool:
        entries[:] = await listed(sandbox, tmp_path)
        return bool(entries) and entries[0]["state"] == "dead"

    for _ in range(20):
        if await dead():
            break
    [entry] = entries
    assert entry["last_reply"].startswith("554 5.6.0")
    assert (entry["mail_from"], entry["rcpt_tos"], entry["attempts"]) == (
        sandbox.tenant.mailbox,
        ["someone@example.net"],
        1,
    )

    code, out, _ = await queue(sandbox, tmp_path, "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ID", "STATE", "TRIES"]
    assert entry["id"] in out

    code, out, _ = await queue(sandbox, tmp_path, "show", entry["id"])
    assert code == 0
    assert "state:        dead" in out
    assert "Subject: legacy message 1" in out

    code, _, _ = await queue(sandbox, tmp_path, "retry", entry["id"])
    assert code == 0
    await wait_until(lambda: len(sandbox.delivered()) == 1, what="delivery after retry")


async def test_deferred_message_can_be_deleted(sandbox: Sandbox, relay: RelayProcess, tmp_path: Path) -> None:
    """With Exchange down a message waits as deferred; `delete ID` removes it for good."""
    await sandbox.exchange.stop()
    await asyncio.to_thread(send_legacy, relay.port, [make_message(sandbox.tenant.mailbox, 2)])
    entries: list[dict[str, Any]] = []
    for _ in range(20):
        entries = await listed(sandbox, tmp_path)
        if entries and entries[0]["state"] == "deferred":
            break
    [entry] = entries
    assert entry["state"] == "deferred"

    code, _, err = await queue(sandbox, tmp_path, "delete", entry["id"])
    assert (code, err.strip()) == (0, f"deleted {entry['id']}")
    assert await listed(sandbox, tmp_path) == []


async def test_unknown_id_exits_1(sandbox: Sandbox, tmp_path: Path) -> None:
    """show, retry and delete of an id that is not queued exit 1 and say so (no relay, no spool yet)."""
    for action in ("show", "retry", "delete"):
        code, _, err = await queue(sandbox, tmp_path, action, "ffffffffffffffff")
        assert code == 1
        assert "ffffffffffffffff" in err


async def test_queue_works_without_the_credential_only_the_relay_gets(tmp_path: Path) -> None:
    """`queue list` needs no client secret: under systemd only the relay gets it (LoadCredential)."""
    spool = await SqliteSpool.open(tmp_path / "spool")
    try:
        queue_id = await spool.enqueue(
            Message(
                "fern", "box@contoso.com", "fern@contoso.com", ["a@example.net"], b"Subject: x\r\n\r\nx\r\n"
            )
        )
    finally:
        await spool.close()
    config = tmp_path / "config.toml"
    config.write_text(
        '[identity]\ntenant_id = "contoso.onmicrosoft.com"\n'
        'client_id = "11111111-2222-3333-4444-555555555555"\n'
        f'[smtp]\nusername = "box@contoso.com"\n[relay]\nspool_dir = "{tmp_path / "spool"}"\n'
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "smtp_oauth", "--config", str(config), "queue", "list", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert [entry["id"] for entry in json.loads(out)] == [queue_id]
