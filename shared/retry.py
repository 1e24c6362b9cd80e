"""The one place for retries: capped exponential backoff with equal jitter."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


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
