"""The listening sockets of the accept workers: one SO_REUSEPORT socket each, or one shared by all.

With SO_REUSEPORT (Linux >= 3.9, the BSDs) every worker gets a listening socket of its own on
relay.listen, and the kernel spreads new connections over them by a hash of their addresses and
ports (https://lwn.net/Articles/542629/). On one shared socket Linux wakes the waiter that went to
sleep last, so one worker may take every connection while another idles; that is what remains
where SO_REUSEPORT is missing (``reuse_port_available``).

The main process keeps the address only *bound* (no ``listen``): it holds the port while workers
come and go, and no connection is ever queued on it, since the kernel spreads connections only
over listening sockets. A worker inherits the bound socket and makes its own listening sibling
(``worker_sockets``) once it is ready to accept, so no connection waits on a worker still
starting; when a worker dies, its socket dies with it and the kernel stops sending it
connections. The few connections queued on it at that moment and not yet accepted are reset
(the kernel migrates them to a sibling instead when the administrator sets
``net.ipv4.tcp_migrate_req = 1``, Linux >= 5.14); their clients see a refused connection and try
again, as SMTP clients do, and nothing acknowledged is lost.
"""

from __future__ import annotations

import errno
import socket

from smtp_oauth.relay.listener.accept import listening_sibling

__all__ = ["reuse_port_available", "worker_sockets"]


def reuse_port_available() -> bool:
    """Whether this system has SO_REUSEPORT for TCP listeners."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:  # ENOPROTOOPT: the constant exists but the kernel does not know it
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                return False
            raise
    return True


def worker_sockets(inherited: list[socket.socket], *, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """What a worker accepts on: its own listening siblings of the ``inherited`` bound sockets
    (which it closes then), or with ``reuse_port`` False, the inherited listening ones themselves."""
    if not reuse_port:
        return inherited
    made: list[socket.socket] = []
    try:
        for sock in inherited:
            made.append(listening_sibling(sock, backlog=backlog))
    except OSError:
        for sock in made:
            sock.close()
        raise
    for sock in inherited:
        sock.close()
    return made
