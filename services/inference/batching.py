"""Micro-batching: what queued while the last batch ran goes into the next `session.run`.

There is no timer: a batch never waits for more samples. An idle service runs each message as it
comes (lowest latency); a busy one runs everything that piled up, up to `max_batch` samples,
which is where onnxruntime's per-call overhead is paid once for many samples.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.messages import I64, SampleBatch


@dataclass(frozen=True)
class Pending:
    """One decoded sample message and when it arrived (local clock, ns), for latency."""

    batch: SampleBatch
    received_ns: int


@dataclass(frozen=True)
class Rows:
    """Samples of one run: only what inference needs (state and age stay behind)."""

    t: I64
    x: np.ndarray[Any, Any]
    received_ns: I64

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, keep: np.ndarray[Any, Any]) -> Rows:
        return Rows(self.t[keep], self.x[keep], self.received_ns[keep])


def rows_of(items: list[Pending]) -> Rows:
    """Concatenate messages into one batch; a single message is used without copying."""
    if len(items) == 1:
        b = items[0].batch
        return Rows(b.t, b.x, np.full(len(b), items[0].received_ns, np.int64))
    return Rows(
        np.concatenate([p.batch.t for p in items]),
        np.concatenate([p.batch.x for p in items]),
        np.concatenate([np.full(len(p.batch), p.received_ns, np.int64) for p in items]),
    )


def split(item: Pending, n: int) -> tuple[Pending, Pending]:
    """The first n samples of a message, and the rest."""
    b = item.batch

    def part(sl: slice) -> Pending:
        return Pending(
            SampleBatch(b.flow, b.features, b.t[sl], b.x[sl], b.state[sl], b.age_ms[sl]),
            item.received_ns,
        )

    return part(slice(0, n)), part(slice(n, None))


class MicroBatcher:
    """A bounded queue of sample messages that hands them out as batches of whole samples."""

    def __init__(self, max_batch: int, max_queue: int, settle_yields: int = 3) -> None:
        self.max_batch = max_batch
        self.settle_yields = settle_yields
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(max_queue)
        self._carry: Pending | None = None  # the rest of a message larger than max_batch

    async def put(self, item: Pending) -> None:
        """Wait while the queue is full, so a slow model slows reading instead of eating memory."""
        await self._queue.put(item)

    def put_nowait(self, item: Pending) -> None:
        self._queue.put_nowait(item)

    def qsize(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def next(self) -> Rows:
        """Wait for at least one sample; return everything queued, up to max_batch samples."""
        first = self._carry if self._carry is not None else await self._queue.get()
        await self._settle(len(first.batch))
        return self._collect(first)

    async def _settle(self, have: int) -> None:
        """Yield to the event loop until no new message arrives for `settle_yields` passes.

        The MQTT client reads one packet per event-loop pass, so under load the backlog sits in
        the socket, not in this queue; without yielding, every run would hold one message.
        A few passes cost tens of µs when idle, no timer is involved.
        """
        quiet, size = 0, self._queue.qsize()
        while quiet < self.settle_yields and have + size < self.max_batch:
            await asyncio.sleep(0)
            now = self._queue.qsize()
            quiet, size = (quiet + 1, size) if now == size else (0, now)
            if self._queue.full():
                break

    def drain(self) -> list[Rows]:
        """Everything still queued, in batches, without waiting (for a clean stop)."""
        out = []
        while self.qsize():
            first = self._carry if self._carry is not None else self._queue.get_nowait()
            out.append(self._collect(first))
        return out

    def _collect(self, first: Pending) -> Rows:
        self._carry = None
        items, count = [first], len(first.batch)
        while count < self.max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            count += len(item.batch)
        if count > self.max_batch:
            last = items.pop()
            head, self._carry = split(last, self.max_batch - (count - len(last.batch)))
            if len(head.batch):
                items.append(head)
        return rows_of(items)
