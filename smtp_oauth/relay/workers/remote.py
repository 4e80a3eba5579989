"""An accept worker's connection, login and disk limits: asked of the relay's main process (``authority.py``).

One process counts for all workers, so the limits hold exactly as in a single-process relay: one
client holds at most ``relay.max_connections_per_client`` connections across the workers, the
failed-login delay and the per-user limit see every worker's attempts, and the disk one client's
unfinished transfers hold is one allowance, not one per worker. The price is one round trip over
the control socketpair per connection, per AUTH and per part of a big body written to disk (tens of
microseconds).

When the main process cannot be asked (its end closed: it died, and this worker is stopping; or
it does not answer an admission within ``admit_timeout``), ``LimitsUnavailable`` is raised and the
listener refuses: 421 for the connection, 454 for the login, 451 for the body. A limit is never
waived.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from smtp_oauth.relay.listener.limits import LimitsUnavailable
from smtp_oauth.relay.listener.logins import LoginAttempt
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

__all__ = ["ADMIT_TIMEOUT", "RemoteLimits"]

# The main process answers from memory at once; this long without an answer, it is stuck.
ADMIT_TIMEOUT = 10.0


class RemoteLimits:
    """``ConnectionCounter``, ``LoginCounter`` and ``ByteCounter`` over the control channel ``writer``.

    ``answer`` is fed the main process's frames (the worker's reader loop), ``close`` once the
    channel has closed.
    """

    def __init__(self, writer: asyncio.StreamWriter, *, admit_timeout: float = ADMIT_TIMEOUT) -> None:
        self._writer = writer
        self._admit_timeout = admit_timeout
        self._tickets = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[object]] = {}
        # Questions whose asker went away (or timed out) before the answer: if the answer grants,
        # what it granted is given back at once with this frame (a Release, a GiveBack).
        self._abandoned: dict[int, Release | GiveBack] = {}
        self._closed = False

    def answer(self, frame: object) -> bool:
        """Hand the main process's ``frame`` to whoever waits for it; False if it is not an answer."""
        if not isinstance(frame, Admission | Reserved | LoginTurn | LoginDelay):
            return False
        if isinstance(frame, Admission | Reserved) and frame.ticket in self._abandoned:
            undo = self._abandoned.pop(frame.ticket)
            if frame.refusal is None:
                self._send(undo)
            return True
        future = self._waiting.pop(frame.ticket, None)
        if future is not None and not future.done():
            future.set_result(frame)
        return True

    def close(self) -> None:
        """The main process has gone: everything waiting, and everything asked from now on, fails."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LimitsUnavailable("the relay's main process has gone"))

    def _send(self, frame: object) -> bool:
        return not self._closed and tell(self._writer, frame)

    def _ask(self, make: Callable[[int], object]) -> tuple[int, asyncio.Future[object]]:
        """Send ``make(ticket)``; the ticket and the future its answer will complete."""
        ticket = next(self._tickets)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if not self._send(make(ticket)):
            raise LimitsUnavailable("the relay's main process has gone")
        self._waiting[ticket] = future
        return ticket, future

    # ConnectionCounter

    async def admit(self, peer: str) -> str | None:
        ticket, future = self._ask(lambda ticket: Admit(ticket=ticket, peer=peer))
        answer = await self._answer(ticket, future, undo=Release(peer=peer))
        assert isinstance(answer, Admission)  # answer() completes admissions with admissions
        return answer.refusal

    async def _answer(
        self, ticket: int, future: asyncio.Future[object], *, undo: Release | GiveBack
    ) -> object:
        """The answer to ``ticket`` within ``admit_timeout``; if it never comes, ``undo`` what it grants."""
        try:
            async with asyncio.timeout(self._admit_timeout):
                return await future
        except TimeoutError:
            self._abandon(ticket, undo)
            raise LimitsUnavailable(
                f"the relay's main process did not answer within {self._admit_timeout:.0f} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(ticket, undo)
            raise

    def _abandon(self, ticket: int, undo: Release | GiveBack) -> None:
        if self._waiting.pop(ticket, None) is not None:  # not answered yet: give it back when it is
            self._abandoned[ticket] = undo

    def release(self, peer: str) -> None:
        self._send(Release(peer=peer))

    # ByteCounter

    async def reserve(self, peer: str, size: int) -> None:
        try:
            ticket, future = self._ask(lambda ticket: Reserve(ticket=ticket, peer=peer, size=size))
            answer = await self._answer(ticket, future, undo=GiveBack(peer=peer, size=size))
        except LimitsUnavailable as unavailable:
            reason = f"the disk allowance of {peer} cannot be counted: {unavailable}"
            raise OSError(errno.EAGAIN, reason) from None
        assert isinstance(answer, Reserved)
        if answer.refusal is not None:
            raise OSError(errno.EDQUOT, answer.refusal)

    def give_back(self, peer: str, size: int) -> None:
        self._send(GiveBack(peer=peer, size=size))

    # LoginCounter

    @asynccontextmanager
    async def attempt(self, login: str, address: str) -> AsyncIterator[LoginAttempt]:
        ticket, future = self._ask(lambda ticket: LoginBegin(ticket=ticket, login=login, address=address))
        try:
            # No timeout: the address's turn may rightly be minutes away (its other connections'
            # failure delays come first).
            turn = await future
            assert isinstance(turn, LoginTurn)
            yield _RemoteAttempt(self, ticket, refused=turn.refused)
        finally:
            self._waiting.pop(ticket, None)
            self._send(LoginEnd(ticket=ticket))  # the turn is given back (the main process knows it)

    async def login_failed(self, ticket: int) -> tuple[int, float]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if not self._send(LoginFailed(ticket=ticket)):
            raise LimitsUnavailable("the relay's main process has gone")
        self._waiting[ticket] = future
        delay = await future
        assert isinstance(delay, LoginDelay)
        return delay.failures, delay.delay

    def login_succeeded(self, ticket: int, user: str) -> None:
        self._send(LoginSucceeded(ticket=ticket, user=user))


@dataclass(frozen=True)
class _RemoteAttempt:
    limits: RemoteLimits
    ticket: int
    refused: bool

    async def succeeded(self, user: str) -> None:
        self.limits.login_succeeded(self.ticket, user)

    async def failed(self) -> tuple[int, float]:
        return await self.limits.login_failed(self.ticket)
