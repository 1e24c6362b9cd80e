"""The one place for retries: capped exponential backoff with equal jitter, and the cancels
Python 3.11 can lose (checked for, and sent again)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Delays of `initial`·2ⁿ capped at `maximum`, each drawn uniformly from [delay/2, delay].

    This is "equal jitter" (AWS's backoff-and-jitter article), not full jitter's [0, delay]:
    the random half keeps a fleet of clients from reconnecting in lockstep after a broker
    restart, and the fixed half keeps the delay growing for a peer that stays down.
    """

    initial: float = 0.2
    maximum: float = 10.0
    _attempt: int = field(default=0, init=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return self._rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


def raise_if_cancelled() -> None:
    """Raise `CancelledError` if the current task was asked to stop; for retry loops, in the
    handler of the errors they retry on.

    Python 3.11's `asyncio.wait_for` (and the libraries that use it: asyncua, pymodbus) returns
    the inner call's error instead of the cancellation when a cancel lands just as that call
    fails (a refused OPC UA session, under load): the loop that retries on that error would
    then run for ever, and whoever cancelled it waits for ever. The task still counts the
    request (`Task.cancelling`), so the loop can honour it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, again_after_s: float) -> None:
    """Cancel `tasks` and return once all of them ended, cancelling again every
    `again_after_s` a task that is still running.

    One cancel is not always enough on Python 3.11: `asyncio.wait_for` (ours or a library's:
    pymodbus, asyncua) returns the inner result when a cancel lands just as that result comes,
    and a loop around it then runs on for ever (a Modbus poll loop never ended on its SIGTERM).
    The lost cancel lands at another moment the second time. A task that takes longer than
    `again_after_s` to clean up on purpose has its clean-up cut there."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=again_after_s)
        for task in pending:
            stack = task.get_stack(limit=1)
            where = f"{stack[0].f_code.co_filename}:{stack[0].f_lineno}" if stack else "?"
            log.warning(
                "task %s still runs %.1f s after its cancel (at %s): cancelling it again",
                task.get_name(), again_after_s, where,
            )  # fmt: skip
            task.cancel()
