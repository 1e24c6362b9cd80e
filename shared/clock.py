"""The one clock: wall time in integer nanoseconds, monotonic seconds, sleeping, ISO-8601 text.

Every service and the simulator read time here (`now_ns()`, `monotonic()`, `sleep()`), never
from `time` directly, so one object decides what "now" is. The system clock is the default; a test
installs a `ManualClock` (`with use(clock):`, or passes it to what takes a `clock=`) and moves it
with `await clock.advance(seconds)`, so timing logic runs in simulated time without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall time: nanoseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards, for intervals and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks and the event loop's sleep."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(order=True)
class _Sleeper:
    deadline_ns: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)
    task: asyncio.Task[object] | None = field(compare=False)


class ManualClock:
    """A clock that moves only when `advance` is awaited; sleepers wake in deadline order.

    After waking a sleeper, `advance` lets its task run until it sleeps on this clock again or
    ends (at most `settle_s` of real time, for a task that waits on something else), so a loop
    such as the simulator's tick loop takes every step of an advance, in order.
    """

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9, settle_s: float = 2.0) -> None:
        self._start_ns = self._ns = start_ns
        self.settle_s = settle_s
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def now_ns(self) -> int:
        return self._ns

    def monotonic(self) -> float:
        return (self._ns - self._start_ns) / 1e9

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = _Sleeper(
            self._ns + round(seconds * 1e9), next(self._seq), future, asyncio.current_task()
        )
        heapq.heappush(self._sleepers, sleeper)
        self._changed.set()
        try:
            await future
        finally:
            if not future.done():  # cancelled: forget it
                future.cancel()

    @property
    def sleepers(self) -> int:
        return sum(1 for s in self._sleepers if not s.future.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline falls inside."""
        target = self._ns + round(seconds * 1e9)
        while self._sleepers and self._sleepers[0].deadline_ns <= target:
            sleeper = heapq.heappop(self._sleepers)
            self._ns = max(self._ns, sleeper.deadline_ns)
            if sleeper.future.done():
                continue
            sleeper.future.set_result(None)
            await self._settle(sleeper.task)
        self._ns = max(self._ns, target)

    async def _settle(self, task: asyncio.Task[object] | None) -> None:
        if task is None:
            await asyncio.sleep(0)
            return

        def asleep() -> bool:
            return any(s.task is task and not s.future.done() for s in self._sleepers)

        def ended(_: object) -> None:
            self._changed.set()

        task.add_done_callback(ended)
        try:
            async with asyncio.timeout(self.settle_s):
                await asyncio.sleep(0)
                while not task.done() and not asleep():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass  # the task waits on something else: let time move on
        finally:
            task.remove_done_callback(ended)


SYSTEM = SystemClock()
_current: Clock = SYSTEM


def current() -> Clock:
    """The clock in use (the system clock unless a test installed another)."""
    return _current


@contextlib.contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Install `clock` for the block: every `now_ns()`, `monotonic()` and `sleep()` reads it."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous


def now_ns() -> int:
    return _current.now_ns()


def monotonic() -> float:
    return _current.monotonic()


async def sleep(seconds: float) -> None:
    await _current.sleep(seconds)


async def sleep_until(deadline: float, clock: Clock | None = None) -> None:
    """Sleep until `monotonic()` reaches `deadline` (at once when it has passed)."""
    c = clock or _current
    await c.sleep(max(deadline - c.monotonic(), 0.0))


def iso(t_ns: int) -> str:
    """ISO-8601 UTC time with microseconds and a `+00:00` offset: the one text form of a time,
    for JSON readers that lose precision past 2^53 and for files people read."""
    return datetime.fromtimestamp(t_ns / 1e9, UTC).isoformat(timespec="microseconds")
