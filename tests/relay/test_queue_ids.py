"""Queue ids: made by every accept worker of every relay sharing a queue, with no coordination."""

from __future__ import annotations

from smtp_oauth.relay.spool.base import new_queue_id


def test_ids_made_in_a_tight_loop_never_clash() -> None:
    """100,000 ids, hundreds in each millisecond, are all different (20 random bits clashed)."""
    ids = [new_queue_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)


def test_ids_sort_by_arrival_to_the_millisecond() -> None:
    """The leading digits are the time, so an id made later never sorts before an earlier one's
    millisecond."""
    ids = [new_queue_id() for _ in range(10_000)]
    millis = [int(queue_id[:11], 16) for queue_id in ids]
    assert millis == sorted(millis)
    assert all(len(queue_id) == 24 and int(queue_id, 16) >= 0 for queue_id in ids)
