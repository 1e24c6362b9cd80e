"""The one clock: the manual clock a test advances, and the simulator driven by it."""

from __future__ import annotations

import asyncio

from edgefleet.sim.plant import PlantSimulator
from shared import clock
from shared.clock import ManualClock


async def test_sleepers_wake_in_deadline_order_at_their_time() -> None:
    c = ManualClock(start_ns=5_000_000_000)
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await c.sleep(seconds)
        woke.append((name, c.now_ns()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 0.2), ("a", 0.1), ("c", 5))]
    await asyncio.sleep(0)
    await c.advance(0.15)
    assert woke == [("a", 5_100_000_000)] and c.monotonic() == 0.15
    await c.advance(0.1)
    assert woke == [("a", 5_100_000_000), ("b", 5_200_000_000)] and c.sleepers == 1
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.advance(10)
    assert len(woke) == 2 and c.now_ns() == 15_250_000_000


async def test_a_loop_takes_every_step_of_one_advance() -> None:
    c = ManualClock()
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await c.sleep(0.1)
            ticks.append(round(c.monotonic(), 3))

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await c.advance(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert ticks == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_use_installs_a_clock_for_the_block_only() -> None:
    manual = ManualClock(start_ns=42)
    with clock.use(manual):
        assert clock.now_ns() == 42 and clock.current() is manual
    assert clock.current() is clock.SYSTEM and clock.now_ns() > 42


def test_one_iso_form() -> None:
    assert clock.iso(1_700_000_000_000_000_000) == "2023-11-14T22:13:20.000000+00:00"
    assert clock.iso(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123457+00:00"


async def test_the_simulator_ticks_in_simulated_time() -> None:
    c = ManualClock(settle_s=0.1)  # a paused simulator waits on its resume, not on the clock
    async with PlantSimulator(seed=1, modbus=False, opcua=False, clock=c) as sim:
        await asyncio.sleep(0)
        assert sim.start_ns == c.now_ns() // 100_000_000 * 100_000_000
        first = sim.state.tick
        await c.advance(1.0)
        assert sim.state.tick == first + 10  # one tick per 100 ms, none skipped
        sim.pause()
        await c.advance(1.0)
        assert sim.state.tick == first + 10
        sim.resume()
        await asyncio.sleep(0)  # after a pause it steps over the missed ticks without serving them
        assert sim.state.tick >= first + 20
