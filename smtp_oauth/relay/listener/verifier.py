"""Password checks for AUTH on a bounded pool of threads, giving scrypt's memory back after a burst.

scrypt (``passwords.verify_password``) takes 128 * n * r bytes per check: 16 MiB at the default
cost. On asyncio's default executor ten concurrent logins are ten such buffers at once, and glibc's
malloc keeps them: after the first free of a big mmap'd block it raises its mmap threshold to that
size (mallopt(3), M_MMAP_THRESHOLD: "dynamic adjustment"), so the next buffers come from its arenas
and stay there once freed. A relay measured ~140 MiB resident after a 10-connection login burst.

Here at most ``threads`` checks run at once (scrypt is CPU-bound and releases the GIL: more threads
than cores only queue in the kernel instead of here), and when the last check of a burst ends,
``malloc_trim(0)`` hands the free memory of every arena back to the kernel. Trimming after each
check would cost a fresh 16 MiB of page faults per login (~12 ms); once per burst costs that once.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from smtp_oauth.relay.passwords import ScryptHash, verify_password

__all__ = ["VERIFY_THREADS", "PasswordVerifier", "release_free_memory"]

VERIFY_THREADS = 2  # concurrent scrypt checks (16 MiB each) per process


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None on a C library without it (musl, macOS): nothing to trim then."""
    try:
        # The symbols already loaded into this process (dlopen(NULL)): the C library's among them.
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()  # a function of the C library, looked up once: not state of ours


def release_free_memory() -> bool:
    """Give the C allocator's free memory back to the kernel (glibc); True if it released any."""
    return bool(_TRIM(0)) if _TRIM is not None else False


class PasswordVerifier:
    """``await verify(password, hashed)`` on at most ``threads`` threads; ``close()`` when done."""

    def __init__(self, *, threads: int = VERIFY_THREADS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scrypt")
        self._lock = threading.Lock()
        self._pending = 0  # checks submitted and not finished, queued ones included
        self.trims = 0  # bursts after which memory was handed back (tests)

    async def verify(self, password: bytes, hashed: ScryptHash) -> bool:
        """True when ``password`` matches ``hashed`` (constant-time); waits for a free thread."""
        with self._lock:
            self._pending += 1
        future = self._executor.submit(verify_password, password, hashed)
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, future: Future[bool]) -> None:
        """On the pool's thread once a check ran (or where it was cancelled, still queued)."""
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        # The burst is over: nobody is about to reuse the freed buffers. A check cancelled in the
        # queue is done on the event loop's thread, which must not wait for a trim.
        if last and not future.cancelled():
            release_free_memory()
            self.trims += 1

    def close(self) -> None:
        """Stop the threads; checks still queued are cancelled (their sessions are being closed)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
