"""The main process's side of the workers' limits: one count of connections, logins and disk for all.

The records are the main process's own listener's (``RelayListener.connection_limits``,
``login_guard`` and ``client_bytes``): a reload's new limits apply here at once. Each worker's
channel is accounted for separately, so when a worker dies its connections and the disk its
unfinished transfers held are given back and its logins' turns end (a failure's delay is still
served: dying does not shorten it).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from smtp_oauth.relay.eventloop import cancel_and_wait
from smtp_oauth.relay.listener.limits import ClientBytes, ConnectionLimits
from smtp_oauth.relay.listener.logins import LoginGuard
from smtp_oauth.relay.workers.frames import (
    Admission,
    Admit,
    GiveBack,
    LoginBegin,
    LoginDelay,
    LoginEnd,
    LoginFailed,
    LoginSucceeded,
    LoginTurn,
    Release,
    Reserve,
    Reserved,
    tell,
)

__all__ = ["LimitsAuthority"]

_LoginStep = LoginSucceeded | LoginFailed | LoginEnd


class LimitsAuthority:
    """Answers ``remote.RemoteLimits`` for every worker channel from ``connections``, ``logins``, ``disk``."""

    def __init__(self, connections: ConnectionLimits, logins: LoginGuard, disk: ClientBytes) -> None:
        self._connections = connections
        self._guard = logins
        self._disk = disk
        self._held: dict[asyncio.StreamWriter, Counter[str]] = {}
        self._bytes: dict[asyncio.StreamWriter, Counter[str]] = {}
        self._logins: dict[tuple[asyncio.StreamWriter, int], asyncio.Queue[_LoginStep]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, channel: asyncio.StreamWriter, frame: object) -> bool:
        """Answer ``frame`` from the worker on ``channel``; False if it is not about the limits."""
        if isinstance(frame, Admit | Release):
            self._connection(channel, frame)
        elif isinstance(frame, Reserve | GiveBack):
            self._transfer(channel, frame)
        elif isinstance(frame, LoginBegin):
            steps: asyncio.Queue[_LoginStep] = asyncio.Queue()
            self._logins[(channel, frame.ticket)] = steps
            task = asyncio.create_task(self._login(channel, frame, steps))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(frame, _LoginStep):
            steps_of = self._logins.get((channel, frame.ticket))
            if steps_of is not None:  # else that attempt is over already (after its result)
                steps_of.put_nowait(frame)
        else:
            return False
        return True

    def _connection(self, channel: asyncio.StreamWriter, frame: Admit | Release) -> None:
        if isinstance(frame, Admit):
            refusal = self._connections.take(frame.peer)
            if refusal is None:
                self._held.setdefault(channel, Counter())[frame.peer] += 1
            tell(channel, Admission(ticket=frame.ticket, refusal=refusal))
            return
        held = self._held.get(channel)
        if held is not None and held[frame.peer] > 0:
            held[frame.peer] -= 1
            if not held[frame.peer]:
                del held[frame.peer]
            self._connections.release(frame.peer)

    def _transfer(self, channel: asyncio.StreamWriter, frame: Reserve | GiveBack) -> None:
        charged = self._bytes.setdefault(channel, Counter())
        if isinstance(frame, Reserve):
            try:
                self._disk.take(frame.peer, frame.size)
            except OSError as refused:
                tell(channel, Reserved(ticket=frame.ticket, refusal=str(refused.strerror)))
                return
            charged[frame.peer] += frame.size
            tell(channel, Reserved(ticket=frame.ticket, refusal=None))
            return
        size = min(frame.size, charged[frame.peer])  # never more than this channel was charged
        charged[frame.peer] -= size
        if charged[frame.peer] <= 0:
            del charged[frame.peer]
        self._disk.give_back(frame.peer, size)

    async def _login(
        self, channel: asyncio.StreamWriter, begin: LoginBegin, steps: asyncio.Queue[_LoginStep]
    ) -> None:
        """One attempt: hold the address's turn until the worker says how it went (or is gone)."""
        try:
            async with self._guard.attempt(begin.login, begin.address) as attempt:
                tell(channel, LoginTurn(ticket=begin.ticket, refused=attempt.refused))
                step = await steps.get()
                if isinstance(step, LoginSucceeded):
                    await attempt.succeeded(step.user)
                elif isinstance(step, LoginFailed):
                    failures, delay = await attempt.failed()
                    tell(channel, LoginDelay(ticket=begin.ticket, failures=failures, delay=delay))
                    await asyncio.sleep(delay)  # the turn is held through the delay, as in one process
        finally:
            self._logins.pop((channel, begin.ticket), None)

    def forget(self, channel: asyncio.StreamWriter) -> None:
        """The worker on ``channel`` has gone: its connections are closed, its transfers and attempts over."""
        for peer, count in self._held.pop(channel, Counter()).items():
            for _ in range(count):
                self._connections.release(peer)
        for peer, size in self._bytes.pop(channel, Counter()).items():
            self._disk.give_back(peer, size)
        for (owner, ticket), steps in list(self._logins.items()):
            if owner is channel:
                steps.put_nowait(LoginEnd(ticket=ticket))

    async def close(self) -> None:
        """Stop answering (the relay is stopping)."""
        await cancel_and_wait(self._tasks)
