"""One accept worker: ``python -m smtp_oauth.relay.workers.child CONTROL_FD LISTEN_FD...``.

Started by ``pool.WorkerPool`` with the relay's sockets and its end of a socketpair inherited; with
SO_REUSEPORT it listens on sockets of its own beside them (``sockets.py``).
It reads its ``Setup`` from the socketpair, opens the spool as a second writer (the main process
holds the spool's lock and delivers), accepts on the inherited sockets with the same listener as a
single-process relay, and after each commit tells the main process (``Queued``). Its connection,
login and disk limits are the main process's, asked over the same socketpair (``remote.py``). SIGTERM stops it
gracefully (sessions finish, every started commit completes); SIGINT and SIGHUP are the main
process's to handle (a terminal's ^C reaches the whole process group). If the main process goes
away (the socketpair closes), the worker stops too: nobody would deliver what it accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from smtp_oauth.relay import eventloop
from smtp_oauth.relay.listener.server import LISTEN_BACKLOG, Message, RelayListener, log_queued
from smtp_oauth.relay.spool import open_spool
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
from smtp_oauth.relay.workers.remote import RemoteLimits
from smtp_oauth.relay.workers.sockets import worker_sockets

__all__ = ["main", "serve"]

log = logging.getLogger("smtp_oauth.relay.workers")


async def serve(control_fd: int, listen_fds: list[int]) -> int:
    """Accept until SIGTERM or until the main process goes away; the exit status."""
    control = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control)
    setup = await read_frame(reader)
    if not isinstance(setup, Setup):
        return 70  # EX_SOFTWARE: started by something that is not the relay
    _configure_logging(setup)
    settings = setup.settings
    spool = await open_spool(settings.relay, spool_dir=setup.spool_dir, deliver=False)

    async def store(message: Message) -> str:
        queue_id = await spool.enqueue(message)
        log_queued(queue_id, message)
        # Committed: the 250 is owed even when the main process has just gone (its end closed).
        # The message waits in the spool for whichever relay delivers next; answering 4xx here
        # made the client send it again, and both copies were delivered.
        tell(writer, Queued(queue_id=queue_id, mailbox=message.mailbox))
        return queue_id

    def sessions_changed(count: int) -> None:
        tell(writer, Connections(open=count))

    limits = RemoteLimits(writer)
    listener = RelayListener(
        settings.relay,
        default_mailbox=setup.default_mailbox,
        profile_mailboxes=setup.profile_mailboxes,
        store=store,
        tuning=setup.tuning,
        incoming_dir=setup.incoming_dir,
        sessions_changed=sessions_changed,
        connections=limits,
        logins=limits,
        unfinished=limits,
    )
    inherited = [socket.socket(fileno=fd) for fd in listen_fds]
    for sock in inherited:
        sock.setblocking(False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    control_task: asyncio.Task[None] | None = None
    try:
        sockets = worker_sockets(inherited, reuse_port=setup.reuse_port, backlog=LISTEN_BACKLOG)
        await listener.start(sockets, shared=not setup.reuse_port)
        write_frame(writer, Ready(pid=os.getpid()))
        await writer.drain()
        control_task = asyncio.create_task(_follow(reader, listener, limits, stop))
        await stop.wait()
    finally:
        await listener.stop()  # the sessions finishing still ask the main process (logins, releases)
        if control_task is not None:
            control_task.cancel()
        await spool.close()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return 0


async def _follow(
    reader: asyncio.StreamReader, listener: RelayListener, limits: RemoteLimits, stop: asyncio.Event
) -> None:
    """Apply the main process's reloads, hand its answers to ``limits``; stop when it has gone."""
    while (frame := await read_frame(reader)) is not None:
        if isinstance(frame, Reload):
            listener.reload(frame.relay)
        else:
            limits.answer(frame)
    limits.close()  # from now on every connection and login is refused
    if not stop.is_set():
        log.error("the relay's main process has gone; this accept worker stops")
    stop.set()


def _configure_logging(setup: Setup) -> None:
    from smtp_oauth.logs import configure_logging

    configure_logging(setup.settings.log_level, setup.settings.log_format)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control_fd, *listen_fds = (int(arg) for arg in argv)
    return eventloop.run(serve(control_fd, listen_fds))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
