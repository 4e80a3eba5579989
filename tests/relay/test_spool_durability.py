"""The spool loses nothing it acknowledged, even when its process is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from smtp_oauth.relay.spool.sqlite import SqliteSpool
from tests.relay.spool_helpers import body_of

# Enqueues forever, 8 at a time, small and large bodies mixed; prints each id once it is committed.
WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from smtp_oauth.relay.spool.base import Message
    from smtp_oauth.relay.spool.sqlite import SqliteSpool

    async def one(spool, n):
        size = 300_000 if n % 5 == 0 else 2_000
        msg = Message("u", "box@example.com", "a@example.com", ["b@example.net"], b"x" * size)
        queue_id = await spool.enqueue(msg)
        print(queue_id, flush=True)

    async def main():
        spool = await SqliteSpool.open(Path(sys.argv[1]), exclusive=True)
        n = 0
        while True:
            await asyncio.gather(*(one(spool, n + i) for i in range(8)))
            n += 8

    asyncio.run(main())
    """
)


def test_kill_9_during_enqueues_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Every id printed (acknowledged) before a kill -9 is in the spool after reopening."""
    directory = tmp_path / "spool"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    acknowledged: list[str] = []
    while len(acknowledged) < 150:
        line = process.stdout.readline()
        assert line, "the writer died on its own"
        acknowledged.append(line.strip())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()

    asyncio.run(assert_all_present(directory, acknowledged))


async def assert_all_present(directory: Path, acknowledged: list[str]) -> None:
    spool = await SqliteSpool.open(directory, exclusive=True)
    try:
        await spool.recover()
        for queue_id in acknowledged:
            entry = await spool.get(queue_id)
            assert entry is not None, queue_id
            assert len(await body_of(spool, queue_id)) == entry.size
    finally:
        await spool.close()
