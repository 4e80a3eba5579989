"""Several relays sharing one PostgreSQL queue: real relay processes, a real PostgreSQL, the sandbox.

The relays run ``tests.relay.shared_relay_child`` (the relay with 4 s leases, so that a failover
takes seconds rather than the product's 20 s).
"""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from smtp_oauth.relay.service import RelayService
from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env
from tests.relay.postgres_server import PostgresServer, find_bin
from tests.relay.relay_harness import PASSWORD, PASSWORD_HASH, make_message, wait_until
from tests.relay.shared_relay_child import DELIVERY, LEASES

SCANNER = "scanner-app"
RATE = 1200  # messages per minute and mailbox: one every 50 ms, so 150 take about 8 s


class ChildRelay:
    """One relay process; its output goes to a log file."""

    def __init__(self, sandbox: Sandbox, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self.log = directory / "relay.log"
        self.env = clean_env(directory, XDG_RUNTIME_DIR=str(directory / "run"))
        self.config = sandbox.config_path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> int:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.relay.shared_relay_child", str(self.config),
                str(self.directory / "spool"), stdout=log, stderr=log, env=self.env,
            )  # fmt: skip
        pattern = re.compile(r"relay listening on 127\.0\.0\.1:(\d+)")

        def listening() -> bool:
            match = pattern.search(self.log.read_text(errors="replace"))
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"the relay exited:\n{self.log.read_text()}")
            if match:
                self.port = int(match.group(1))
            return bool(match)

        await wait_until(listening, within=90, what="the relay to listen")
        return self.port

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, within: float = 20) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), within)


def shared_config(sandbox: Sandbox, url: str, **relay: Any) -> None:
    """Two relay users, one per mailbox (sender@ and scanner@), and the shared queue."""
    tenant = sandbox.tenant
    sandbox.exchange.grant(tenant.app.client_id, tenant.second_user.upn, model="fullaccess")
    sandbox.write_config(
        relay={
            "listen": "127.0.0.1:0",
            "spool_url": url,
            "messages_per_minute": RATE,
            "shutdown_timeout": "3s",
            "upstream_idle_timeout": "1s",
            "users": [
                {"name": "app", "password_hash": PASSWORD_HASH, "mailbox": tenant.mailbox},
                {"name": SCANNER, "password_hash": PASSWORD_HASH, "mailbox": tenant.second_user.upn},
            ],
            **relay,
        }
    )


def submit(ports: list[int], client: int, count: int, sandbox: Sandbox, accepted: list[str]) -> None:
    """One client: ``count`` messages, spread over the relays, each tried on the next relay when one
    fails (as behind a load balancer); a message counts as accepted only after its 250."""
    user, sender = (
        ("app", sandbox.tenant.mailbox) if client % 2 else (SCANNER, sandbox.tenant.second_user.upn)
    )
    for n in range(count):
        message = make_message(sender, client * 1000 + n)
        for attempt in range(len(ports) * 3):
            port = ports[(client + n + attempt) % len(ports)]
            acknowledged = False
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    smtp.login(user, PASSWORD)
                    smtp.send_message(message)
                    acknowledged = True  # the 250 after DATA; a failed QUIT changes nothing
            except (OSError, smtplib.SMTPException):
                pass
            if acknowledged:
                accepted.append(str(message["Message-ID"]))
                break
            time.sleep(0.1)


async def lease_owners(url: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute("SELECT mailbox, owner FROM smtp_oauth_leases WHERE until > now()")
        return dict(await cursor.fetchall())


async def cut_off_messages(url: str, log: Path) -> set[str]:
    """The Message-IDs of the sends a relay cut off at its stop (its "send_cut_off" log lines)."""
    text = await asyncio.to_thread(log.read_text, errors="replace")
    queue_ids = sorted(set(re.findall(r"send_cut_off ([0-9a-f]{24})", text)))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT message_id FROM smtp_oauth_messages WHERE id = ANY(%s)", (queue_ids,)
        )
        return {str(row[0]) for row in await cursor.fetchall()}


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any ``window`` seconds."""
    times = sorted(times)
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_three_relays_share_one_queue_through_a_crash_and_a_stop(
    sandbox: Sandbox, postgres_url: str, tmp_path: Path
) -> None:
    """300 messages for two mailboxes from 10 clients over 3 relays; one relay is SIGKILLed
    mid-delivery, another stopped with SIGTERM: every accepted message arrives, duplicates are only
    of what the killed relay had claimed or the stopped one cut off at its stop, Exchange never sees
    more than 3 sessions or more than the paced rate per mailbox."""
    shared_config(sandbox, postgres_url)
    relays = [ChildRelay(sandbox, tmp_path / f"relay{n}") for n in range(3)]
    try:
        ports = await asyncio.gather(*(relay.start() for relay in relays))
        accepted: list[str] = []
        clients = [
            threading.Thread(target=submit, args=(ports, client, 30, sandbox, accepted))
            for client in range(10)
        ]
        for thread in clients:
            thread.start()
        await wait_until(lambda: len(sandbox.delivered()) >= 40, within=120, what="delivery to start")

        owners = await lease_owners(postgres_url)
        assert len(owners) == 2, owners
        assert len(set(owners.values())) == 2, owners  # one mailbox each
        by_id = {relay.process.pid: relay for relay in relays if relay.process is not None}

        def relay_of(owner: str) -> ChildRelay:
            return by_id[int(owner.split(":")[1])]

        killed = relay_of(owners[sandbox.tenant.mailbox])
        stopped = relay_of(owners[sandbox.tenant.second_user.upn])
        killed.signal(signal.SIGKILL)
        await killed.wait()
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            # What it had claimed and not recorded (sent or not): what may now be sent twice.
            cursor = await conn.execute(
                "SELECT message_id FROM smtp_oauth_messages WHERE state = 'sending' AND claimed_by LIKE %s",
                (f"%:{killed.process.pid if killed.process else 0}:%",),
            )
            claimed_by_killed = {str(row[0]) for row in await cursor.fetchall()}
        stopped.signal(signal.SIGTERM)
        assert await stopped.wait() == 0

        await asyncio.gather(*(asyncio.to_thread(thread.join, 120) for thread in clients))
        assert len(accepted) == 300, f"only {len(accepted)} accepted"
        wanted = set(accepted)

        def all_delivered() -> bool:
            return wanted <= {m.message_id for m in sandbox.delivered()}

        await wait_until(all_delivered, within=180, what="every accepted message delivered")
        counts = Counter(m.message_id for m in sandbox.delivered())
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        # The only two sources of a duplicate: what the killed relay had claimed and not recorded,
        # and the sends the stopped relay cut off when its grace period (shutdown_timeout) ran out
        # (Exchange may have taken them; each is one "send_cut_off" line). A duplicate of anything
        # else, or more of them than these could make, is a bug.
        cut_off = await cut_off_messages(postgres_url, stopped.log)
        may_repeat = claimed_by_killed | cut_off
        assert {mid for mid, n in counts.items() if n > 1} <= may_repeat, (counts, may_repeat)
        assert duplicates <= len(claimed_by_killed) + len(cut_off), (duplicates, claimed_by_killed, cut_off)
        assert all(peak <= 3 for peak in sandbox.exchange.sessions_peak.values()), (
            sandbox.exchange.sessions_peak
        )
        interval = 60 / RATE
        for mailbox in (sandbox.tenant.mailbox, sandbox.tenant.second_user.upn):
            times = [m.received_at.timestamp() for m in sandbox.delivered() if m.auth_user == mailbox]
            # Paced: one send slot every 50 ms, so never more than 100 in 5 s, plus one at the edge and
            # the 3 sessions' slots that a stalled (loaded) machine may send together late.
            assert max_in_window(times, 5.0) <= 5.0 / interval + 1 + 3, mailbox
        survivor = next(relay for relay in relays if relay not in (killed, stopped))
        survivor.signal(signal.SIGTERM)
        assert await survivor.wait() == 0

    finally:
        for relay in relays:
            if relay.process is not None and relay.process.returncode is None:
                relay.process.kill()
                await relay.process.wait()


async def test_a_database_restart_during_intake_gives_4xx_and_loses_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """PostgreSQL restarted while clients send: they get 4xx (never a 250 for a message not stored),
    /healthz fails meanwhile, and every message acknowledged with 250 is delivered."""
    bin_dir = find_bin()
    assert bin_dir is not None  # the postgres_server fixture would have skipped
    server = PostgresServer.start(bin_dir)  # its own: this test stops it
    try:
        url = server.create_database("restart")
        shared_config(sandbox, url)
        tuning = replace(LEASES, connect_timeout=1.0)
        service = RelayService(sandbox.settings(), delivery_tuning=DELIVERY, spool_tuning=tuning)
        ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(service.run(ready=ready.set_result))
        port = (await asyncio.wait_for(asyncio.shield(ready), 20))[0][1]
        replies: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            n = 0
            while not stop.is_set():
                message = make_message(sandbox.tenant.mailbox, 5000 + n)
                n += 1
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        smtp.login("app", PASSWORD)
                        smtp.send_message(message)
                    replies.append((250, str(message["Message-ID"])))
                except smtplib.SMTPResponseException as error:  # a reply to MAIL, RCPT or DATA
                    replies.append((error.smtp_code, str(message["Message-ID"])))
                except (OSError, smtplib.SMTPException):  # no reply at all: counted, and must not happen
                    replies.append((0, str(message["Message-ID"])))
                time.sleep(0.02)

        thread = threading.Thread(target=client)
        thread.start()
        await wait_until(lambda: len(replies) >= 10, within=90, what="intake to run")
        await asyncio.to_thread(server.pg_ctl_stop)
        before_outage = len(replies)
        await wait_until(lambda: len(replies) >= before_outage + 3, within=90, what="replies in the outage")
        assert not await service.healthy()
        await asyncio.to_thread(server.pg_ctl_start)
        after_restart = len(replies)
        await wait_until(
            lambda: sum(code == 250 for code, _ in replies[after_restart:]) >= 10,
            within=120,
            what="250s again",
        )
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        codes = Counter(code for code, _ in replies)
        assert all(code == 250 or 400 <= code < 500 for code in codes), codes  # 4xx, never 5xx or silence
        assert sum(n for code, n in codes.items() if code != 250) >= 1, codes
        accepted = {message_id for code, message_id in replies if code == 250}
        await wait_until(
            lambda: accepted <= {m.message_id for m in sandbox.delivered()},
            within=180,
            what="every acknowledged message delivered",
        )
        assert await service.healthy()
        service.stop()
        await asyncio.wait_for(task, 20)
    finally:
        server.close()
