"""wait_event and cancel_and_wait: the relay's timed wait and its stop, which a cancellation
always ends."""

from __future__ import annotations

import asyncio
import contextlib

from smtp_oauth.relay.eventloop import cancel_and_wait, wait_event


async def _wait_forever(event: asyncio.Event) -> None:
    """A long-running task as the relay's loops are: wait, clear, wait again."""
    while True:
        await wait_event(event, 10)
        event.clear()


async def test_a_cancel_arriving_with_the_event_stops_the_loop() -> None:
    """Cancelled in the iteration its event is set, the task ends (3.11's asyncio.wait_for goes on)."""
    event = asyncio.Event()
    task = asyncio.create_task(_wait_forever(event))
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done
    assert task.cancelled()


async def test_an_event_already_set_is_true_at_once() -> None:
    """wait_event returns True for a set event without waiting."""
    event = asyncio.Event()
    event.set()
    assert await wait_event(event, 0) is True


async def test_a_timeout_is_false() -> None:
    """wait_event returns False when the time passes with the event unset."""
    assert await wait_event(asyncio.Event(), 0.01) is False


async def _swallow_one_cancel(stopped: list[bool]) -> None:
    """What a library that loses one cancellation does: catch it and carry on."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    try:
        await asyncio.sleep(10)
    finally:
        stopped.append(True)


async def test_a_task_that_swallows_a_cancel_is_cancelled_again() -> None:
    """cancel_and_wait stops a task that survived its first cancel()."""
    stopped: list[bool] = []
    task = asyncio.create_task(_swallow_one_cancel(stopped))
    await asyncio.sleep(0.01)
    assert await cancel_and_wait([task], within=5) == set()
    assert stopped == [True]


async def test_a_task_that_never_stops_is_given_back() -> None:
    """After ``within`` seconds, the tasks still running are returned, not waited for."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)
    assert await cancel_and_wait([task], within=0.3) == {task}
    release.set()
    await task
