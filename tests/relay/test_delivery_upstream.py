"""A suspended mailbox's probe: after the upstream's Retry-After, not pushed out by sends in flight."""

from __future__ import annotations

import asyncio
import time

from smtp_oauth.errors import SmtpOAuthError, TemporaryDeliveryError
from smtp_oauth.relay.delivery.upstream import RETRY_AFTER_MAX, UpstreamHealth
from smtp_oauth.relay.spool.sqlite import SqliteSpool
from tests.relay.test_delivery import FakeUpstream, incoming, running, wait_for_state


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def suspended_health(clock: Clock) -> UpstreamHealth:
    return UpstreamHealth(3, probe_first=5.0, probe_max=30.0, clock=clock)


def test_the_probe_comes_after_the_upstreams_retry_after() -> None:
    """A failure that says when to come back (Retry-After 2 s) sets the probe then, not after probe_first."""
    clock = Clock()
    health = suspended_health(clock)
    assert health.suspend("429 throttled", retry_after=2.0)
    assert health.seconds_to_probe() == 2.0


def test_sends_failing_after_the_suspension_do_not_push_the_probe_out() -> None:
    """The sends that were under way when the mailbox was suspended fail too; the probe stays due
    when the first failure said (no doubling per failure)."""
    clock = Clock()
    health = suspended_health(clock)
    health.suspend("421 going away")
    for _ in range(3):
        assert not health.suspend("421 going away")
    assert health.seconds_to_probe() == 5.0
    assert not health.suspend("429 throttled", retry_after=8.0)  # asked for longer: then it waits
    assert health.seconds_to_probe() == 8.0


def test_a_failed_probe_waits_longer_and_a_huge_retry_after_is_bounded() -> None:
    """A failed probe doubles the wait; a Retry-After of a day is honoured up to RETRY_AFTER_MAX."""
    clock = Clock()
    health = suspended_health(clock)
    health.suspend("421 going away")
    clock.now += 5.0
    health.start_probe()
    health.suspend("421 going away")
    assert health.seconds_to_probe() == 10.0
    clock.now += 10.0
    health.start_probe()
    health.suspend("429 throttled", retry_after=86400.0)
    assert health.seconds_to_probe() == RETRY_AFTER_MAX


async def test_a_throttled_mailbox_drains_right_after_the_retry_after(spool: SqliteSpool) -> None:
    """Three sends throttled together with Retry-After 1 s: nothing is sent before it, and the whole
    queue goes out right after it (not after probe_first, 10 s here)."""
    throttled: list[SmtpOAuthError] = [
        TemporaryDeliveryError("429 throttled", retry_after=1.0) for _ in range(3)
    ]
    upstream = FakeUpstream(failures=throttled, delay=0.2)
    ids = [await spool.enqueue(incoming(n)) for n in range(9)]
    async with running(spool, upstream, upstream_connections=3, probe_first=10.0, probe_max=30.0):
        started = time.monotonic()
        await asyncio.gather(*(wait_for_state(spool, queue_id, "delivered", within=8.0) for queue_id in ids))
        drained = time.monotonic() - started
    assert len(upstream.sent) == 9
    failed_at = sorted(upstream.send_times)[2] + 0.2  # the third throttled send's answer
    first_after = min(t for t in upstream.send_times if t > failed_at)
    assert first_after - failed_at >= 0.95  # not before the Retry-After
    assert drained < 5.0, drained
