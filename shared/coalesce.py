"""One flush per tick for readings that arrive one by one.

The first arrival after a flush starts a tick; what arrives during it goes out with it in one
flush. An idle source costs nothing (the loop waits on an event, not a timer), and a busy one
publishes at most once per tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shared import clock


class Coalescer:
    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._dirty = asyncio.Event()

    def mark(self) -> None:
        """Something arrived: a flush is due at the end of the current (or a new) tick."""
        self._dirty.set()

    def clear(self) -> None:
        """A flush is taking what arrived: nothing is due until the next `mark`."""
        self._dirty.clear()

    async def run(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait for a first arrival, let the tick fill up, flush (which calls `clear`)."""
        while True:
            await self._dirty.wait()
            await clock.sleep(self.tick_s)
            await flush()
