"""The listening sockets and their accept loop, which pauses while the process is out of descriptors.

asyncio's own accept loop (``loop.create_server``) keeps calling ``accept()`` after EMFILE in
CPython 3.11 and schedules one retry per backlog slot, so a flood of idle connections turns into
an ever-growing storm of logged tracebacks (python/cpython#151615). Here the loop stops at the
first EMFILE/ENFILE/ENOBUFS/ENOMEM, stops watching the socket for ``retry_after`` seconds (the
waiting clients stay in the kernel's backlog) and says so in the log at most once per
``QuietLog`` interval, with the number of times it happened meanwhile.

Each accepted connection is first admitted (``admit``: the connection limits, which in an accept
worker are counted by the relay's main process); one refused gets its 421 on the bare socket and
is closed before any SMTP session exists for it. An admitted connection is released by its
session when it closes (or here, if it vanishes before its session is set up).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable

__all__ = ["Acceptor", "QuietLog", "bind", "listening_sibling"]

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


async def bind(
    host: str, port: int, *, backlog: int, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Listening, non-blocking sockets for ``host`` ("" = every interface) and ``port``.

    ``reuse_port``: with SO_REUSEPORT, so that more sockets can be bound to the same address (one
    per accept worker). ``listen=False``: bound only; such a socket holds the port for its owner
    and its SO_REUSEPORT siblings but joins no accept queue, so it is given no connections.
    """
    loop = asyncio.get_running_loop()
    infos: list[tuple[socket.AddressFamily, bool, tuple[object, ...]]]
    if not host:
        dualstack = socket.has_dualstack_ipv6()
        family = socket.AF_INET6 if dualstack else socket.AF_INET
        infos = [(family, dualstack, ("::" if dualstack else "0.0.0.0", port))]  # noqa: S104  # host "" asks for it
    else:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        infos = [(family, False, tuple(address)) for family, _, _, _, address in dict.fromkeys(found)]
    sockets: list[socket.socket] = []
    try:
        for family, dualstack, address in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # one socket for both families only for "every interface"
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)
            sock.bind(address)
            if port == 0:  # the first socket picked the port: the others (IPv4 and IPv6) take it too
                port = sock.getsockname()[1]
                infos = [(f, d, (a[0], port, *a[2:])) for f, d, a in infos]
            if listen:
                sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listening_sibling(bound: socket.socket, *, backlog: int) -> socket.socket:
    """A new SO_REUSEPORT socket listening on ``bound``'s address (bound with ``reuse_port``)."""
    sock = socket.socket(bound.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if bound.family == socket.AF_INET6:
            v6only = bound.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(bound.getsockname())
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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
        admit: Callable[[str], Awaitable[str | None]] | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        self.sockets = sockets
        self._admit = admit
        self._release = release
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
                conn, address = sock.accept()
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
            peer = str(address[0]) if isinstance(address, tuple) and address else ""
            task = self._loop.create_task(self._connect(conn, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket, peer: str) -> None:
        if self._admit is not None:
            refusal = await self._admit(peer)
            if refusal is not None:
                with contextlib.suppress(OSError):  # a few bytes into an empty send buffer
                    conn.send(f"{refusal}\r\n".encode("ascii"))
                conn.close()
                return
        try:
            await self._loop.connect_accepted_socket(self._factory, sock=conn)
        except OSError as exc:  # the client vanished before the transport was set up
            conn.close()
            if self._release is not None:
                self._release(peer)
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
