"""The main process's side of the workers' limits: one count of connections and logins for all of them.

The records are the main process's own listener's (``RelayListener.connection_limits`` and
``login_guard``): a reload's new limits apply here at once. Each worker's channel is accounted for
separately, so when a worker dies its connections are given back and its logins' turns end
(a failure's delay is still served: dying does not shorten it).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from smtp_oauth.relay.eventloop import cancel_and_wait
from smtp_oauth.relay.listener.limits import ConnectionLimits
from smtp_oauth.relay.listener.logins import LoginGuard
from smtp_oauth.relay.workers.frames import (
    Admission,
    Admit,
    LoginBegin,
    LoginDelay,
    LoginEnd,
    LoginFailed,
    LoginSucceeded,
    LoginTurn,
    Release,
    tell,
)

__all__ = ["LimitsAuthority"]

_LoginStep = LoginSucceeded | LoginFailed | LoginEnd


class LimitsAuthority:
    """Answers ``remote.RemoteLimits`` for every worker channel, from ``connections`` and ``logins``."""

    def __init__(self, connections: ConnectionLimits, logins: LoginGuard) -> None:
        self._connections = connections
        self._guard = logins
        self._held: dict[asyncio.StreamWriter, Counter[str]] = {}
        self._logins: dict[tuple[asyncio.StreamWriter, int], asyncio.Queue[_LoginStep]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, channel: asyncio.StreamWriter, frame: object) -> bool:
        """Answer ``frame`` from the worker on ``channel``; False if it is not about the limits."""
        if isinstance(frame, Admit):
            refusal = self._connections.take(frame.peer)
            if refusal is None:
                self._held.setdefault(channel, Counter())[frame.peer] += 1
            tell(channel, Admission(ticket=frame.ticket, refusal=refusal))
        elif isinstance(frame, Release):
            held = self._held.get(channel)
            if held is not None and held[frame.peer] > 0:
                held[frame.peer] -= 1
                if not held[frame.peer]:
                    del held[frame.peer]
                self._connections.release(frame.peer)
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
        """The worker on ``channel`` has gone: its connections are closed, its attempts over."""
        for peer, count in self._held.pop(channel, Counter()).items():
            for _ in range(count):
                self._connections.release(peer)
        for (owner, ticket), steps in list(self._logins.items()):
            if owner is channel:
                steps.put_nowait(LoginEnd(ticket=ticket))

    async def close(self) -> None:
        """Stop answering (the relay is stopping)."""
        await cancel_and_wait(self._tasks)
