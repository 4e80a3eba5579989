"""Failed logins limited per address and per user across connections; the real user still gets in."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from smtp_oauth.relay.listener.logins import LoginGuard, LoginLimits
from smtp_oauth.relay.listener.server import ListenerTuning
from tests.relay import login_clients
from tests.relay.login_clients import plain, user_under_attack_tuning
from tests.relay.test_listener import FERN_PASSWORD, in_thread, relay_settings, running_listener

WRONG = plain("fern", "wrong-guess")
RIGHT = plain("fern", FERN_PASSWORD)
guess_for = functools.partial(login_clients.guess_for, wrong=WRONG)
login = functools.partial(login_clients.login, right=RIGHT)
guesses_until_closed = functools.partial(login_clients.guesses_until_closed, wrong=WRONG)


async def test_parallel_connections_from_one_address_do_not_multiply_guesses() -> None:
    """30 connections from one address guess no faster than one: the failure delay is per address."""
    tuning = ListenerTuning(
        auth_failure_delay=0.2, auth_failure_delay_max=0.2, shutdown_grace=1.0, greet_pause=0.0
    )
    relay = relay_settings(max_connections_per_client=50)
    async with running_listener(relay, tuning=tuning) as (listener, _):
        address = listener.addresses[0]
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=30) as pool:
            counts = await asyncio.gather(
                *(loop.run_in_executor(pool, guess_for, address, 3.0) for _ in range(30))
            )
    assert sum(counts) <= 3.0 / 0.2 + 2  # one answer per delay, not 30


async def test_a_user_under_attack_from_many_addresses_is_slowed_but_its_owner_gets_in() -> None:
    """Many addresses guessing one user get 454 beyond its pace; the user's own address logs in at once."""
    async with running_listener(tuning=user_under_attack_tuning()) as (listener, _):
        address = listener.addresses[0]
        code, _ = await in_thread(lambda: login(address, source="127.0.0.2"))  # the printer's usual address
        assert code == 235
        sources = [f"127.0.1.{n}" for n in range(1, 21)]
        codes = [await in_thread(functools.partial(guesses_until_closed, address, source=s)) for s in sources]
        own_code, own_time = await in_thread(lambda: login(address, source="127.0.0.2"))
        new_code, _ = await in_thread(lambda: login(address, source="127.0.2.1"))
    assert sum(c.count(535) for c in codes) == 3 + 1  # the user's failure limit, then one new address
    assert (own_code, own_time < 1.0) == (235, True)
    assert new_code == 454  # a new address while the user is under attack: try again later


async def test_refusals_under_attack_count_toward_the_sessions_limit() -> None:
    """A 454 checks no password but is not free: the session is closed after its limit of tries."""
    tuning = user_under_attack_tuning(auth_user_failure_limit=1, auth_failures_per_session=3)
    async with running_listener(tuning=tuning) as (listener, _):
        address = listener.addresses[0]
        # The user is under attack after the first failure; the second takes the one new-address slot.
        first = await in_thread(lambda: guesses_until_closed(address, source="127.0.1.1"))
        codes = await in_thread(lambda: guesses_until_closed(address, source="127.0.1.2"))
    assert first == [535, 535, 454, 421]
    assert codes == [454, 454, 454, 421]  # the third try's 454 comes with the 421 and the close


def test_a_new_address_gets_its_turn_after_the_interval() -> None:
    """Under attack, a new address is refused (454) only until the user's next attempt slot."""
    now = [0.0]
    guard = LoginGuard(LoginLimits(user_failure_limit=2, user_attempt_interval=5.0), clock=lambda: now[0])
    guard.failed("fern", "203.0.113.1")
    guard.failed("fern", "203.0.113.2")
    assert not guard.refuse_untrusted("fern", "203.0.113.3")  # takes the slot
    assert guard.refuse_untrusted("fern", "198.51.100.7")
    now[0] = 5.0
    assert not guard.refuse_untrusted("fern", "198.51.100.7")
