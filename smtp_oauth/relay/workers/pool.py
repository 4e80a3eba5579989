"""The accept workers, seen from the main process: start, watch, restart, reload, stop.

Where the system has SO_REUSEPORT, the main process only binds relay.listen (holding the port, no
accept queue) and each worker listens on a socket of its own beside it, over which the kernel
spreads new connections; elsewhere all workers accept on the main process's listening sockets
(``sockets.py`` says why and what a dying worker's queued connections become). Either way the
main process keeps its sockets open, so the port never closes while the relay runs.

The connection and login limits of all workers are counted here (``authority.LimitsAuthority``).

A worker that dies (killed, out of memory, a bug) loses only the connections it was serving, none
of their acknowledged messages (each 250 came after the spool's commit); it is started again after
``restart_delay`` seconds, doubling up to ``MAX_RESTART_DELAY`` while it keeps dying young.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.relay.eventloop import cancel_and_wait
from smtp_oauth.relay.workers.authority import LimitsAuthority
from smtp_oauth.relay.workers.frames import (
    Connections,
    Queued,
    Ready,
    Reload,
    Setup,
    read_frame,
    tell,
    write_frame,
)
from smtp_oauth.settings.models import RelaySettings

__all__ = ["WorkerPool"]

log = logging.getLogger("smtp_oauth.relay.workers")

START_TIMEOUT = 60.0  # seconds for a worker to import, open the spool and accept
MAX_RESTART_DELAY = 30.0
HEALTHY_AFTER = 60.0  # a worker that ran this long died "old": its restart delay starts afresh


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    delay: float = 0.0
    connections: int = 0


class WorkerPool:
    """``count`` accept processes on ``sockets``; ``queued`` is called for each message they commit."""

    def __init__(
        self,
        count: int,
        *,
        setup: Callable[[int], Setup],
        sockets: list[socket.socket],
        queued: Callable[[Queued], None],
        authority: LimitsAuthority,
        restart_delay: float = 1.0,
    ) -> None:
        self._setup = setup
        self._authority = authority  # the connection and login limits, counted for all workers
        self._sockets = sockets
        self._queued = queued
        self._restart_delay = restart_delay
        self._workers = [_Worker(index) for index in range(1, count + 1)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    @property
    def alive(self) -> int:
        """Workers accepting now."""
        return sum(1 for worker in self._workers if worker.ready.is_set())

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None and w.ready.is_set()]

    def connections(self) -> dict[int, int]:
        """Open SMTP sessions per running worker (by index)."""
        return {w.index: w.connections for w in self._workers if w.ready.is_set()}

    async def start(self) -> None:
        """Start every worker and wait until each accepts; ConfigurationError if one cannot."""
        self._tasks = [
            asyncio.create_task(self._keep(worker), name=f"relay-worker-{worker.index}")
            for worker in self._workers
        ]
        if not await self._all_ready():
            await self.stop(grace=1.0)
            raise ConfigurationError(
                "the relay's accept workers did not start (see the lines above)",
                key="relay.workers",
                hint="Fix what they report, or set relay.workers = 1 to accept in the main process.",
            )
        log.info("%d accept workers running (pids %s)", len(self._workers), ", ".join(map(str, self.pids)))

    async def _all_ready(self) -> bool:
        """Until every worker accepts (True), or one gives up or START_TIMEOUT passes (False)."""
        waiting = {asyncio.create_task(worker.ready.wait()) for worker in self._workers}
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while waiting:
                    done, _ = await asyncio.wait(
                        waiting | set(self._tasks), return_when=asyncio.FIRST_COMPLETED
                    )
                    if any(task in done for task in self._tasks):  # a worker gave up before accepting
                        return False
                    waiting -= done
        except TimeoutError:
            return False
        finally:
            for wait in waiting:
                wait.cancel()
        return True

    async def _keep(self, worker: _Worker) -> None:
        """Run ``worker``, and again whenever it dies, until the pool stops."""
        while not self._stopping:
            code = await self._run_once(worker)
            if self._stopping:
                return
            if not worker.started_at:  # it never accepted: start-up is broken, not the worker
                log.error("relay accept worker %d exited with status %s before accepting", worker.index, code)
                return
            lived = time.monotonic() - worker.started_at
            worker.delay = (
                self._restart_delay
                if lived >= HEALTHY_AFTER or not worker.delay
                else min(worker.delay * 2, MAX_RESTART_DELAY)
            )
            log.error(
                "relay accept worker %d exited with status %s after %.0f s; starting it again in %.0f s "
                "(the connections it was serving were cut; what it acknowledged is in the spool)",
                worker.index,
                code,
                lived,
                worker.delay,
            )
            await asyncio.sleep(worker.delay)
            self.restarts += 1

    async def _run_once(self, worker: _Worker) -> int | None:
        """Start the worker process, follow its frames until it ends; its exit status."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), *(sock.fileno() for sock in self._sockets)]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smtp_oauth.relay.workers.child",
                *map(str, fds),
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        worker.process = process
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker.writer = writer
        write_frame(writer, self._setup(worker.index))  # the current settings, reloads included
        try:
            while (frame := await read_frame(reader)) is not None:
                if isinstance(frame, Queued):
                    self._queued(frame)
                elif isinstance(frame, Connections):
                    worker.connections = frame.open
                elif isinstance(frame, Ready):
                    worker.started_at = time.monotonic()
                    worker.ready.set()
                else:
                    self._authority.handle(writer, frame)
        finally:
            self._authority.forget(writer)  # its connections are gone, its logins over
            worker.ready.clear()
            worker.connections = 0
            worker.writer = None
            writer.close()
        return await process.wait()

    def reload(self, relay: RelaySettings) -> None:
        """Hand a reloaded configuration to every running worker (``setup`` gives it to new ones)."""
        for worker in self._workers:
            if worker.writer is not None:
                tell(worker.writer, Reload(relay=relay))

    async def stop(self, *, grace: float) -> None:
        """SIGTERM every worker; those still running after ``grace`` (+ 2 s) are killed."""
        self._stopping = True
        running = [w.process for w in self._workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            _, late = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in running], timeout=grace + 2.0
            )
            for process in running:
                if process.returncode is None:
                    log.warning("relay accept worker pid %d did not stop in time; killing it", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)
        await cancel_and_wait(self._tasks)
        await self._authority.close()
