"""The PostgreSQL spool's own behaviour: schema migrations, mailbox leases, claims by relay."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.eventloop import cancel_and_wait
from smtp_oauth.relay.spool.base import SpoolError
from smtp_oauth.relay.spool.postgres import PostgresSpool, migrate_database
from smtp_oauth.relay.spool.postgres_schema import SCHEMA_VERSION
from smtp_oauth.settings.loading import load_settings
from tests.cli.admin_cli import clean_env
from tests.relay.conftest import FAST_LEASES
from tests.relay.spool_helpers import MAILBOX, message


@asynccontextmanager
async def relay_spool(url: str, tmp_path: Path, name: str) -> AsyncIterator[PostgresSpool]:
    """The spool of one relay (its own id) sharing the queue at ``url``."""
    spool = await PostgresSpool.open(
        url, staging_dir=tmp_path / name, deliver=True, tuning=replace(FAST_LEASES, relay_id=name)
    )
    try:
        yield spool
    finally:
        await spool.close()


async def wait_for(predicate: object, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_migrations_are_idempotent_and_safe_when_relays_start_together(postgres_url: str) -> None:
    """Five migrations at once: one applies the schema, the others find nothing to do."""
    results = await asyncio.gather(*(migrate_database(postgres_url) for _ in range(5)))
    assert sorted(results) == [[], [], [], [], list(range(1, SCHEMA_VERSION + 1))]
    assert await migrate_database(postgres_url) == []


async def test_a_schema_newer_than_this_version_is_refused(postgres_url: str, tmp_path: Path) -> None:
    """A database migrated by a newer smtp-oauth is not touched: a clear, permanent error."""
    await migrate_database(postgres_url)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO smtp_oauth_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SpoolError, match="newer than this smtp-oauth") as caught:
        await PostgresSpool.open(postgres_url, staging_dir=tmp_path)
    assert not caught.value.temporary


async def test_an_unreachable_database_is_a_temporary_spool_error(tmp_path: Path) -> None:
    """No server at the URL: SpoolError, temporary, and the URL's password is not in it."""
    url = f"postgresql://relay:s3cret-pw@/queue?host={tmp_path}"
    with pytest.raises(SpoolError) as caught:
        await PostgresSpool.open(url, staging_dir=tmp_path, tuning=replace(FAST_LEASES, connect_timeout=1))
    assert caught.value.temporary
    assert "s3cret-pw" not in str(caught.value)


async def test_only_the_lease_holder_claims_a_mailbox(postgres_url: str, tmp_path: Path) -> None:
    """Two relays: the one that leased the mailbox claims its messages, the other gets none."""
    async with relay_spool(postgres_url, tmp_path, "a") as a, relay_spool(postgres_url, tmp_path, "b") as b:
        await a.enqueue(message())
        await a.enqueue(message())
        await wait_for(lambda: _owns_any(a, b))
        owner, other = (a, b) if MAILBOX in a.owned else (b, a)
        assert await other.claim_due(MAILBOX, 5) == []
        claimed = await owner.claim_due(MAILBOX, 5)
        assert len(claimed) == 2
        assert {entry.claimed_by for entry in claimed} == {owner.relay_id}


async def _owns_any(*spools: PostgresSpool) -> bool:
    return any(MAILBOX in spool.owned for spool in spools)


async def test_mailboxes_are_shared_out_between_relays(postgres_url: str, tmp_path: Path) -> None:
    """Two relays, two busy mailboxes: each relay leases one (its fair share)."""
    async with relay_spool(postgres_url, tmp_path, "a") as a, relay_spool(postgres_url, tmp_path, "b") as b:
        await a.enqueue(message())
        await a.enqueue(message(mailbox="other@example.com"))

        async def shared() -> bool:
            return len(a.owned) == 1 and len(b.owned) == 1

        await wait_for(shared)
        assert a.owned != b.owned


async def test_a_live_relays_claims_are_never_taken(postgres_url: str, tmp_path: Path) -> None:
    """recover() by another relay leaves a live relay's claims alone, however long they take."""
    async with relay_spool(postgres_url, tmp_path, "a") as a:
        queue_id = await a.enqueue(message())
        [claimed] = await a.claim_due(MAILBOX)
        async with relay_spool(postgres_url, tmp_path, "b") as b:
            await asyncio.sleep(3 * FAST_LEASES.lease_ttl)  # a keeps renewing meanwhile
            assert await b.recover() == 0
            assert await b.claim_due(MAILBOX) == []
        entry = await a.get(queue_id)
        assert entry is not None
        assert (entry.state, entry.claimed_by) == ("sending", "a")
        await a.mark_delivered(claimed.id, reply="250 ok")


async def test_a_dead_relays_claims_are_sent_again_by_the_next_owner(
    postgres_url: str, tmp_path: Path
) -> None:
    """A relay that stops renewing (killed) loses its lease; another takes the mailbox over and
    gets the message it had claimed back (at-least-once)."""
    dead = await PostgresSpool.open(
        postgres_url, staging_dir=tmp_path, deliver=True, tuning=replace(FAST_LEASES, relay_id="dead")
    )
    queue_id = await dead.enqueue(message())
    [claimed] = await dead.claim_due(MAILBOX)
    await cancel_and_wait(dead._tasks)  # what SIGKILL does: no more renewals, no release
    await dead._pool.close()
    async with relay_spool(postgres_url, tmp_path, "heir") as heir:

        async def taken_over() -> bool:
            return bool(await heir.claim_due(MAILBOX))

        started = time.monotonic()
        await wait_for(taken_over, within=5 * FAST_LEASES.lease_ttl)
        assert time.monotonic() - started < 3 * FAST_LEASES.lease_ttl
        entry = await heir.get(queue_id)
        assert entry is not None
        assert (entry.state, entry.claimed_by) == ("sending", "heir")
        assert claimed.id == queue_id
        await heir.mark_delivered(queue_id, reply="250 ok")


async def test_closing_gives_back_what_is_still_sending(postgres_url: str, tmp_path: Path) -> None:
    """A relay's close (delivery stopped) queues its unfinished claims for the next owner at once,
    instead of leaving them until its lease expires."""
    leaving = await PostgresSpool.open(
        postgres_url, staging_dir=tmp_path, deliver=True, tuning=replace(FAST_LEASES, relay_id="leaving")
    )
    queue_id = await leaving.enqueue(message())
    [claimed] = await leaving.claim_due(MAILBOX)  # alone, so the lease is surely its own
    assert claimed.id == queue_id
    async with relay_spool(postgres_url, tmp_path, "stays") as stays:
        await leaving.close()
        entry = await stays.get(queue_id)
        assert entry is not None
        assert (entry.state, entry.claimed_by) == ("queued", "")


async def test_a_graceful_stop_hands_the_lease_over_promptly(postgres_url: str, tmp_path: Path) -> None:
    """A relay closing its spool gives its leases up; the other relay takes them at once."""
    # The leaving relay takes the lease before the other one starts: two live relays race for
    # a new mailbox's lease (the NOTIFY of the enqueue wakes both), which this test is not about.
    leaving = await PostgresSpool.open(
        postgres_url, staging_dir=tmp_path, deliver=True, tuning=replace(FAST_LEASES, relay_id="leaving")
    )
    await leaving.enqueue(message())
    await leaving.claim_due(MAILBOX)  # takes the lease
    assert MAILBOX in leaving.owned
    async with relay_spool(postgres_url, tmp_path, "stays") as stays:
        [entry] = await leaving.list()
        await leaving.release(entry.id)
        await leaving.close()

        async def taken() -> bool:
            return bool(await stays.claim_due(MAILBOX))

        await wait_for(taken, within=FAST_LEASES.lease_ttl)


async def test_a_mark_from_a_relay_that_lost_the_claim_changes_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    """Outcomes are recorded only by the relay holding the claim."""
    async with relay_spool(postgres_url, tmp_path, "a") as a, relay_spool(postgres_url, tmp_path, "b") as b:
        queue_id = await a.enqueue(message())
        await wait_for(lambda: _owns_any(a, b))
        owner, other = (a, b) if MAILBOX in a.owned else (b, a)
        [_] = await owner.claim_due(MAILBOX)
        await other.mark_dead(queue_id, reply="550 not mine to say")
        entry = await a.get(queue_id)
        assert entry is not None
        assert (entry.state, entry.claimed_by) == ("sending", owner.relay_id)


async def test_notify_wakes_the_owner_when_another_relay_takes_mail(
    postgres_url: str, tmp_path: Path
) -> None:
    """A message accepted by one relay wakes the mailbox's owner, the other relay, through NOTIFY."""
    async with relay_spool(postgres_url, tmp_path, "a") as a, relay_spool(postgres_url, tmp_path, "b") as b:
        await a.enqueue(message())
        await wait_for(lambda: _owns_any(a, b))
        owner, other = (a, b) if MAILBOX in a.owned else (b, a)
        woken = asyncio.Event()
        owner.watch(woken.set)
        await asyncio.sleep(0.3)
        woken.clear()
        await other.enqueue(message())
        await asyncio.wait_for(woken.wait(), FAST_LEASES.lease_renew * 3)


IDENTITY = (
    '[identity]\ntenant_id = "contoso.onmicrosoft.com"\nclient_id = "11111111-2222-3333-4444-555555555555"\n'
)


def test_a_spool_url_that_is_not_postgresql_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """relay.spool_url must be postgresql://; the error never repeats the value (it may hold a password)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f"{IDENTITY}"
        'client_secret = "x"\n[smtp]\nusername = "box@contoso.com"\n'
        '[relay]\nspool_url = "mysql://user:hunter2pw@db/x"\n'
    )
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert "relay.spool_url" in str(caught.value)
    assert "hunter2pw" not in str(caught.value)


async def test_the_queue_command_works_against_the_shared_queue(postgres_url: str, tmp_path: Path) -> None:
    """`smtp-oauth queue migrate`, `list` and `retry` against relay.spool_url, as from another host."""
    spool = await PostgresSpool.open(postgres_url, staging_dir=tmp_path)
    try:
        queue_id = await spool.enqueue(message())
    finally:
        await spool.close()
    config = tmp_path / "config.toml"
    config.write_text(
        f'{IDENTITY}[smtp]\nusername = "box@contoso.com"\n[relay]\nspool_url = "{postgres_url}"\n'
    )

    async def queue(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smtp_oauth", "--config", str(config), "queue", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(tmp_path),
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, _, err = await queue("migrate")
    assert (code, "already at version" in err) == (0, True), err
    code, out, err = await queue("list", "--json")
    assert code == 0, err
    assert [entry["id"] for entry in json.loads(out)] == [queue_id]
    code, out, err = await queue("show", queue_id)
    assert code == 0, err
    assert "Subject: hi" in out
    code, _, err = await queue("delete", queue_id)
    assert code == 0, err
