"""daemon/loops.py: the one backoff and the one shape of every background loop."""

from __future__ import annotations

import asyncio

from daemon.errors import MemoryFull, PurgeIncomplete, Unavailable, is_unavailable
from daemon.loops import Backoff, Every, Loop


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.reset() == 0.1
    assert backoff.next() == 0.1
    assert Backoff(2.0, 1.0).ceiling_s == 2.0  # a ceiling below the base is the base


class Counting(Loop):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0
        self.paused = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping:
            self.passes += 1
            self.paused.set()
            await self.pause(3600)


async def test_stop_ends_a_pause_at_once_and_join_waits_for_the_end() -> None:
    loop = Counting()
    loop.start()
    await asyncio.wait_for(loop.paused.wait(), 5)
    loop.stop()
    await asyncio.wait_for(loop.join(), 5)  # not an hour
    assert loop.passes == 1 and loop.stopping


async def test_wake_ends_one_pause_and_the_loop_goes_on() -> None:
    loop = Counting()
    loop.start()
    await asyncio.wait_for(loop.paused.wait(), 5)
    loop.paused.clear()
    loop.wake()
    await asyncio.wait_for(loop.paused.wait(), 5)
    assert loop.passes == 2 and not loop.stopping
    await loop.cancel()


async def test_every_runs_its_step_until_cancelled() -> None:
    steps: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        steps.append(len(steps))
        if len(steps) == 3:
            third.set()

    every = Every("test", 0.001, step)
    every.start()
    await asyncio.wait_for(third.wait(), 5)
    await every.cancel()  # returns once the task has ended: no step can run after it
    assert every._task is None and len(steps) >= 3


def test_unavailable_means_a_server_could_not_be_reached() -> None:
    assert is_unavailable(ConnectionRefusedError())
    assert not is_unavailable(ValueError("a bug"))
    memory = MemoryFull(1)
    assert is_unavailable(memory)  # raised without a cause: Redis at maxmemory
    failed = Unavailable("down", 1)
    failed.__cause__ = KeyError("a bug behind it")
    assert not is_unavailable(failed)
    assert is_unavailable(PurgeIncomplete({}, ["likes"], [TimeoutError()]))
    assert not is_unavailable(PurgeIncomplete({}, ["likes", "history"], [TimeoutError(), KeyError()]))


async def test_cancel_ends_a_loop_whose_step_swallowed_the_cancellation() -> None:
    """redis-py can turn a cancellation into a connection error, which a step catches: the loop must
    still end at once, not after its next pause (the flusher's SIGTERM once waited on a 60 s one)."""
    entered = asyncio.Event()

    async def step() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # as a step that caught the error a cancelled Redis call raised

    helper = Every("swallows", 60.0, step)
    helper.start()
    await asyncio.wait_for(entered.wait(), 5)
    cancelling = asyncio.ensure_future(helper.cancel())
    done, _ = await asyncio.wait({cancelling}, timeout=5)
    assert done, "cancel() waited for the loop's next pause"
