"""AUTH's password checks: a bounded pool, and scrypt's memory handed back after a burst of logins."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator

import pytest

from smtp_oauth.relay.listener.verifier import PasswordVerifier, release_free_memory
from smtp_oauth.relay.passwords import hash_password, parse_hash

CHEAP = parse_hash(hash_password("right", log2_n=4))
DEFAULT_COST = parse_hash(hash_password("right"))  # ln=14: 16 MiB and ~50 ms per check


@pytest.fixture
async def verifier() -> AsyncIterator[PasswordVerifier]:
    pool = PasswordVerifier(threads=2)
    yield pool
    pool.close()


async def test_right_password_is_accepted(verifier: PasswordVerifier) -> None:
    """The password the hash was made from verifies."""
    assert await verifier.verify(b"right", CHEAP)


async def test_wrong_password_is_refused(verifier: PasswordVerifier) -> None:
    """Any other password does not."""
    assert not await verifier.verify(b"wrong", CHEAP)


async def test_a_burst_runs_on_at_most_the_pool_threads(verifier: PasswordVerifier) -> None:
    """Ten concurrent logins use two threads, not ten (each would hold 16 MiB at once)."""
    results = await asyncio.gather(*(verifier.verify(b"right", DEFAULT_COST) for _ in range(10)))
    assert all(results)
    scrypt_threads = [t for t in threading.enumerate() if t.name.startswith("scrypt")]
    assert 1 <= len(scrypt_threads) <= 2


async def test_memory_is_trimmed_once_per_burst(verifier: PasswordVerifier) -> None:
    """Ten concurrent checks end in one trim (not one per check, which costs a fresh 16 MiB each)."""
    await asyncio.gather(*(verifier.verify(b"right", DEFAULT_COST) for _ in range(10)))
    assert verifier.trims == 1


_BURST = """
import asyncio, json, re
from smtp_oauth.relay.listener.verifier import PasswordVerifier
from smtp_oauth.relay.passwords import hash_password, parse_hash

def rss_kib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

async def main():
    hashed = parse_hash(hash_password("right"))
    pool = PasswordVerifier(threads=2)
    await pool.verify(b"right", hashed)  # threads and first buffers made: the baseline
    before = rss_kib()
    for _ in range(3):
        await asyncio.gather(*(pool.verify(b"right", hashed) for _ in range(10)))
    print(json.dumps({"before": before, "after": rss_kib()}))
    pool.close()

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS is read from /proc")
def test_resident_memory_returns_after_a_burst_of_logins() -> None:
    """After 3 bursts of 10 default-cost logins the process holds < 8 MiB more than before them."""
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")  # e.g. musl: frees differently anyway
    out = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["after"] - figures["before"] < 8 * 1024, figures
