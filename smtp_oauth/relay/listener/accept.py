"""The listening sockets and their accept loop, which pauses while the process is out of descriptors.

asyncio's own accept loop (``loop.create_server``) keeps calling ``accept()`` after EMFILE in
CPython 3.11 and schedules one retry per backlog slot, so a flood of idle connections turns into
an ever-growing storm of logged tracebacks (python/cpython#151615). Here the loop stops at the
first EMFILE/ENFILE/ENOBUFS/ENOMEM, stops watching the socket for ``retry_after`` seconds (the
waiting clients stay in the kernel's backlog) and says so in the log at most once per
``QuietLog`` interval, with the number of times it happened meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable

__all__ = ["Acceptor", "QuietLog", "bind"]

log = logging.getLogger("smtp_oauth.relay.listener")

ACCEPT_BATCH = 64  # connections taken per wake-up, so one busy socket cannot starve the loop
RETRY_AFTER = 1.0  # seconds without accept() after running out of descriptors
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class QuietLog:
    """Logs a recurring condition at most once per ``interval`` seconds, counting the rest."""

    def __init__(self, logger: logging.Logger, *, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            message += " (%d more times since the last report)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args)
        return True


async def bind(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening, non-blocking sockets for ``host`` ("" = every interface) and ``port``."""
    loop = asyncio.get_running_loop()
    if not host:
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        sock = socket.create_server(
            ("", port), family=family, backlog=backlog, dualstack_ipv6=family == socket.AF_INET6
        )
        sock.setblocking(False)
        return [sock]
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts connections on ``sockets`` and hands each to ``protocol_factory``'s protocol."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        retry_after: float = RETRY_AFTER,
        quiet: QuietLog | None = None,
        batch: int = ACCEPT_BATCH,
    ) -> None:
        self.sockets = sockets
        self._batch = batch
        self._factory = protocol_factory
        self._retry_after = retry_after
        self._quiet = quiet or QuietLog(log)
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        self._paused: dict[int, asyncio.TimerHandle] = {}
        self._closed = False
        self.pauses = 0  # how often accepting paused for lack of resources (tests, metrics)

    def start(self) -> None:
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while in the backlog
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(sock, exc)
                else:
                    self._quiet.log(logging.ERROR, f"accept-{exc.errno}", "accept() failed: %s", exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, sock=conn)
        except OSError as exc:  # the client vanished before the transport was set up
            conn.close()
            log.debug("connection dropped before it was set up: %s", exc)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        self.pauses += 1
        fd = sock.fileno()
        self._loop.remove_reader(fd)
        self._quiet.log(
            logging.ERROR,
            f"accept-{exc.errno}",
            "cannot accept connections: %s; not accepting for %.0f s (raise LimitNOFILE, or lower "
            "relay.max_connections)",
            exc.strerror or exc,
            self._retry_after,
        )
        self._paused[fd] = self._loop.call_later(self._retry_after, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.pop(sock.fileno(), None)
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets; connections already made stay open."""
        if self._closed:
            return
        self._closed = True
        for handle in self._paused.values():
            handle.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """Until the connections accepted just before ``close`` have their protocols."""
        if self._pending:
            await asyncio.wait(set(self._pending))
