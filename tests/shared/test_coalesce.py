"""shared/coalesce.py: one flush per tick, nothing while idle (in simulated time)."""

from __future__ import annotations

import asyncio

from shared.clock import ManualClock, use
from shared.coalesce import Coalescer
from tests.helpers import until


async def test_arrivals_within_a_tick_make_one_flush_and_idle_costs_no_timer() -> None:
    clock = ManualClock(settle_s=0.05)
    coalescer = Coalescer(0.1)
    flushes: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    arrived = 0

    async def flush() -> None:
        nonlocal arrived
        coalescer.clear()
        await flushes.put((clock.monotonic(), arrived))
        arrived = 0

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        coalescer.mark()

    with use(clock):
        task = asyncio.create_task(coalescer.run(flush))
        try:
            await asyncio.sleep(0)
            assert clock.sleepers == 0  # idle: waiting on the event, no timer
            arrive()
            await until(lambda: clock.sleepers == 1)  # the first arrival starts the tick
            arrive()
            await clock.advance(0.05)
            arrive()
            assert flushes.empty()
            await clock.advance(0.05)
            assert await asyncio.wait_for(flushes.get(), 5) == (0.1, 3)
            await clock.advance(1.0)
            assert flushes.empty() and clock.sleepers == 0  # nothing came: no flush, no timer
            arrive()
            await until(lambda: clock.sleepers == 1)
            await clock.advance(0.1)
            assert await asyncio.wait_for(flushes.get(), 5) == (1.2, 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_flush_outside_the_loop_clears_what_was_due() -> None:
    clock = ManualClock(settle_s=0.05)
    coalescer = Coalescer(0.1)
    flushed: list[float] = []

    async def flush() -> None:
        coalescer.clear()
        flushed.append(clock.monotonic())

    with use(clock):
        task = asyncio.create_task(coalescer.run(flush))
        try:
            coalescer.mark()
            await until(lambda: clock.sleepers == 1)
            await flush()  # e.g. a drain on stop took everything
            await clock.advance(0.1)  # the tick ends: the loop flushes once more (as before)
            await until(lambda: len(flushed) == 2)
            await clock.advance(1.0)
            assert len(flushed) == 2 and clock.sleepers == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
