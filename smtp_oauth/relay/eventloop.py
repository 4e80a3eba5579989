"""The relay's event loop: uvloop when it is installed (``pip install 'smtp-oauth[uvloop]'``), else asyncio's;
and how the relay's long-running tasks wait with a timeout (``wait_event``) and are stopped
(``cancel_and_wait``).

uvloop (libuv) runs the same asyncio code with less CPU per callback; aiosmtpd works with it since
1.4.3 (its STARTTLS fix, https://github.com/aio-libs/aiosmtpd/pull/295). What it bought is in the
README's performance table (``bench/bench_relay_accept.py --loops``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "loop_factory", "run", "wait_event"]

T = TypeVar("T")


def loop_factory(*, uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` if wanted and installed; None means asyncio's default loop."""
    if not uvloop:
        return None
    try:
        import uvloop as installed  # optional: imported only where it is used
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = installed.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, uvloop: bool = True) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed (and ``uvloop``)."""
    with asyncio.Runner(loop_factory=loop_factory(uvloop=uvloop)) as runner:
        return runner.run(main)


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass (None: no limit); True if it was set.

    Not ``asyncio.wait_for``: before Python 3.12 it returns normally when its task is cancelled in
    the same loop iteration as the awaited event is set, swallowing the cancellation
    (https://github.com/python/cpython/issues/86296), so a loop waiting with it can outlive its
    ``cancel()`` and hang whoever awaits the task at shutdown. ``asyncio.timeout`` tells its own
    expiry from a cancellation (it counts ``Task.uncancel``), so a cancellation always propagates.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[Any]], *, within: float = 10.0
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they end, cancelling again any that go on; the tasks still
    running after ``within`` seconds (for the caller to log).

    One ``cancel()`` is not always enough: code a task awaits may swallow a cancellation (Python
    3.11's ``asyncio.wait_for`` does when what it awaits completes at the same moment, gh-86296,
    and libraries such as psycopg_pool wait with it), and a shutdown that awaits such a task with
    ``gather`` hangs for good. Each task's outcome is retrieved, so none is reported as "never
    retrieved".
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = {task for task in tasks if not task.done()}
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    return pending
