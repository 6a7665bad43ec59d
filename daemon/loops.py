"""One shape for every background loop, and one backoff.

``Loop`` is a task with a ``run`` coroutine and one convention: ``start()`` creates the task, ``stop()``
asks it to end (``stopping`` turns true and any ``pause`` returns at once), ``wake()`` ends the current
pause early, ``join()`` waits for the end, ``cancel()`` ends it now. The view buffer's drain, the
flusher, the consumer's poll loop, the event publisher and the Redis helpers are all Loops.

``Backoff`` is the retry delay every loop and retrying call uses: ``base_s`` after a success, doubled
after each failure up to ``ceiling_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Backoff:
    def __init__(self, base_s: float, ceiling_s: float) -> None:
        self.base_s = base_s
        self.ceiling_s = max(base_s, ceiling_s)
        self.delay = base_s

    def next(self) -> float:
        """The delay to wait now; the one after it is doubled (up to the ceiling)."""
        delay = self.delay
        self.delay = min(delay * 2, self.ceiling_s)
        return delay

    def reset(self) -> float:
        """After a success: back to ``base_s`` (returned)."""
        self.delay = self.base_s
        return self.delay


class Loop:
    """A background task; subclasses implement ``run``, which returns once ``stopping`` is true."""

    name = "loop"

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken or stopped."""
        if not self._wake.is_set() and seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        if not self._stop.is_set():
            self._wake.clear()

    async def join(self) -> None:
        """Wait for the task to end (after ``stop``)."""
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def cancel(self) -> None:
        """End the task now. Stopped first: a cancellation that lands in a Redis call can come out of
        redis-py as a connection error, which a step catches and logs; the loop then ends at its next
        check instead of pausing for another interval (a flusher's SIGTERM waited on a 60 s pause)."""
        if self._task is not None:
            task, self._task = self._task, None
            self.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Every(Loop):
    """``step()`` every ``interval_s`` until stopped; a step that raises is logged by the caller's step."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        super().__init__()
        self.name = name
        self.interval_s = interval_s
        self._step = step

    async def run(self) -> None:
        while not self.stopping:
            await self._step()
            await self.pause(self.interval_s)
