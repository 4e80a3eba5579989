"""The listener under attack: smuggling after a failed write, connection floods, a full disk."""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from smtp_oauth.relay.listener.incoming import SPILL_AT
from smtp_oauth.relay.listener.server import ListenerTuning, RelayListener
from smtp_oauth.settings.models import RelaySettings
from tests.relay.test_listener import (
    DEFAULT_MAILBOX,
    FAST,
    RecordingStore,
    in_thread,
    read_reply,
    relay_settings,
)
from tests.relay.test_listener_limits import PLAIN_FERN

BIG = 10 * 1024 * 1024
LINE = b"y" * 76 + b"\r\n"
SMUGGLED = (
    b"RSET\r\nMAIL FROM:<fern@contoso.com>\r\nRCPT TO:<smuggled-victim@example.test>\r\nDATA\r\n"
    b"From: fern@contoso.com\r\nSubject: SMUGGLED\r\n\r\nhidden in the body of another one\r\n.\r\n"
)

AFTER_THE_REAL_END = [
    b'500 Error: command "TAIL" not recognized',
    b'500 Error: command "." not recognized',
    b"221 Bye",
]


@asynccontextmanager
async def listener_with_incoming(
    incoming: Path, relay: RelaySettings | None = None, *, tuning: ListenerTuning = FAST
) -> AsyncIterator[tuple[RelayListener, RecordingStore]]:
    store = RecordingStore()
    listener = RelayListener(
        relay or relay_settings(max_message_size=BIG),
        default_mailbox=DEFAULT_MAILBOX,
        store=store,
        tuning=tuning,
        incoming_dir=incoming,
    )
    await listener.start()
    try:
        yield listener, store
    finally:
        await listener.stop()


def smuggling_attempt(address: tuple[str, int]) -> list[bytes]:
    """The security report's F1: a body past the spill point, then commands, then the real end."""
    with socket.create_connection(address, timeout=10) as sock:
        read_reply(sock)
        replies = []
        for command in (
            b"EHLO x\r\n",
            f"AUTH PLAIN {PLAIN_FERN}\r\n".encode(),
            b"MAIL FROM:<fern@contoso.com>\r\n",
        ):
            sock.sendall(command)
            replies.append(read_reply(sock))
        for command in (b"RCPT TO:<legit@example.test>\r\n", b"DATA\r\n"):
            sock.sendall(command)
            replies.append(read_reply(sock))
        body = b"From: fern@contoso.com\r\nSubject: carrier\r\n\r\n"
        while len(body) < SPILL_AT + 4096:
            body += LINE
        sock.sendall(body + SMUGGLED + b"tail of the carrier\r\n.\r\n")
        sock.sendall(b"QUIT\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    return [*replies, *rest.splitlines()]


async def test_failed_body_write_drains_to_the_final_dot(tmp_path: Path) -> None:
    """A body that cannot be written gets one 451 after the final dot; text after the failure stays data."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")  # incoming/ below a regular file: every write fails (like EIO)
    async with listener_with_incoming(blocker / "incoming") as (listener, store):
        replies = await in_thread(lambda: smuggling_attempt(listener.addresses[0]))
    # The smuggled transaction's dot is the real end of DATA; only what follows it is commands.
    assert replies[5].startswith(b"451 4.3.0")
    assert replies[6:] == AFTER_THE_REAL_END
    assert store.messages == []


async def test_client_share_of_the_disk_is_bounded(tmp_path: Path) -> None:
    """Past its share of unfinished transfers a client gets 452 4.3.1 after the final dot, no smuggling."""
    tuning = ListenerTuning(auth_failure_delay=0.01, unfinished_bytes_per_client=SPILL_AT // 2)
    async with listener_with_incoming(tmp_path / "incoming", tuning=tuning) as (listener, store):
        replies = await in_thread(lambda: smuggling_attempt(listener.addresses[0]))
    assert replies[5:] == [b"452 4.3.1 Insufficient system storage", *AFTER_THE_REAL_END]
    assert store.messages == []


async def test_stalled_transfers_of_one_client_cannot_pin_more_than_its_share(tmp_path: Path) -> None:
    """Unfinished DATA transfers of one address together hold at most unfinished_bytes_per_client on disk."""
    share = 3 * SPILL_AT
    tuning = ListenerTuning(auth_failure_delay=0.01, unfinished_bytes_per_client=share)
    incoming = tmp_path / "incoming"

    def stall(address: tuple[str, int]) -> socket.socket:
        sock = socket.create_connection(address, timeout=10)
        read_reply(sock)
        for command in (b"EHLO x\r\n", f"AUTH PLAIN {PLAIN_FERN}\r\n".encode()):
            sock.sendall(command)
            read_reply(sock)
        sock.sendall(b"MAIL FROM:<fern@contoso.com>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
        while b"354" not in read_reply(sock):
            pass
        sock.sendall(LINE * ((SPILL_AT * 2) // len(LINE)))  # two spills each, never finished
        return sock

    async with listener_with_incoming(incoming, tuning=tuning) as (listener, _):
        sockets = [await in_thread(lambda: stall(listener.addresses[0])) for _ in range(6)]
        await asyncio.sleep(1.0)
        on_disk = sum(path.stat().st_size for path in incoming.iterdir())
        for sock in sockets:
            sock.close()
    assert 0 < on_disk <= share


def greeting(address: tuple[str, int], *, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
    return sock, read_reply(sock)


async def test_connections_beyond_the_per_client_limit_get_421() -> None:
    """Over relay.max_connections_per_client an address gets '421 4.7.0' and is closed; others get in."""
    relay = relay_settings(max_connections_per_client=3, max_message_size=BIG)
    async with listener_with_incoming(Path("/nonexistent"), relay) as (listener, _):
        address = listener.addresses[0]
        held = [await in_thread(lambda: greeting(address)) for _ in range(3)]
        refused, refusal = await in_thread(lambda: greeting(address))
        closed = await in_thread(lambda: refused.recv(100))
        _, other = await in_thread(lambda: greeting(address, source="127.0.0.2"))
        held[0][0].close()
        await asyncio.sleep(0.2)
        _, again = await in_thread(lambda: greeting(address))
    assert [reply[:4] for _, reply in held] == [b"220 "] * 3
    assert refusal.startswith(b"421 4.7.0 ")
    assert closed == b""
    assert other.startswith(b"220 ")
    assert again.startswith(b"220 ")


async def test_connections_beyond_the_total_limit_get_421() -> None:
    """Over relay.max_connections every new client gets '421 4.7.0', whatever its address."""
    relay = relay_settings(max_connections=2, max_message_size=BIG)
    async with listener_with_incoming(Path("/nonexistent"), relay) as (listener, _):
        address = listener.addresses[0]
        _held = [
            await in_thread(functools.partial(greeting, address, source=f"127.0.0.{n + 2}")) for n in range(2)
        ]
        _, refusal = await in_thread(lambda: greeting(address, source="127.0.0.9"))
    assert refusal.startswith(b"421 4.7.0 ")


EMFILE_LISTENER = textwrap.dedent(
    """
    import asyncio, logging, resource, sys
    from smtp_oauth.relay.listener.server import RelayListener
    from smtp_oauth.settings.models import RelaySettings

    async def main():
        relay = RelaySettings(listen="127.0.0.1:0", max_connections=10000, max_connections_per_client=10000)
        async def store(message):
            return "Q1"
        listener = RelayListener(relay, default_mailbox="a@contoso.com", store=store)
        await listener.start()
        print("PORT", listener.addresses[0][1], flush=True)
        await asyncio.sleep(3600)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
    asyncio.run(main())
    """
)


async def test_out_of_descriptors_pauses_accepting_and_logs_once(tmp_path: Path) -> None:
    """At the fd limit the listener stops accepting (no log storm) and serves again once connections close."""
    log = tmp_path / "listener.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", EMFILE_LISTENER, "64",
            stdout=asyncio.subprocess.PIPE, stderr=sink,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        address = ("127.0.0.1", int(line.split()[1]))

        def flood(count: int) -> list[socket.socket]:
            held = []
            for _ in range(count):
                sock = socket.socket()
                sock.settimeout(5)
                sock.connect(address)  # completes in the kernel backlog even when not accepted
                held.append(sock)
            return held

        held = await in_thread(lambda: flood(150))
        await asyncio.sleep(3.0)
        text = log.read_text(errors="replace")  # a small file, once
        for sock in held:
            sock.close()
        start = time.monotonic()
        _, banner = await in_thread(lambda: greeting(address))
        served_after = time.monotonic() - start
    finally:
        process.kill()
        await process.wait()
    assert text.count("cannot accept connections") == 1
    assert "Traceback" not in text
    assert len(text) < 200_000
    assert banner.startswith(b"220 ")
    assert served_after < 5
