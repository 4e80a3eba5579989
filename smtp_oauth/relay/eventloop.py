"""The relay's event loop: uvloop when it is installed (``pip install 'smtp-oauth[uvloop]'``), else asyncio's.

uvloop (libuv) runs the same asyncio code with less CPU per callback; aiosmtpd works with it since
1.4.3 (its STARTTLS fix, https://github.com/aio-libs/aiosmtpd/pull/295). What it bought is in the
README's performance table (``bench/bench_relay_accept.py --loops``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

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
