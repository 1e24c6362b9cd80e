"""Micro-batching: what queued is run together, up to max_batch, without waiting for more."""

from __future__ import annotations

import asyncio

import numpy as np

from services.inference.batching import MicroBatcher, Pending
from tests.inference.helpers import T0, samples


def pending(n: int, start: int, received: int = 0) -> Pending:
    x = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(4, 1)
    return Pending(samples(x, t0=T0 + start), received)


async def test_queued_messages_run_together() -> None:
    b = MicroBatcher(max_batch=100, max_queue=10)
    for i, n in enumerate((3, 5, 2)):
        b.put_nowait(pending(n, i * 10, received=i))
    rows = await b.next()
    assert len(rows) == 10 and b.qsize() == 0
    np.testing.assert_array_equal(rows.received_ns, [0] * 3 + [1] * 5 + [2] * 2)
    np.testing.assert_array_equal(rows.x[:, 0], [0, 1, 2, 10, 11, 12, 13, 14, 20, 21])


async def test_max_batch_splits_and_keeps_the_rest() -> None:
    b = MicroBatcher(max_batch=4, max_queue=10)
    b.put_nowait(pending(3, 0))
    b.put_nowait(pending(7, 100))
    sizes, firsts = [], []
    while b.qsize():
        rows = await b.next()
        sizes.append(len(rows))
        firsts.append(float(rows.x[0, 0]))
    assert sizes == [4, 4, 2] and firsts == [0, 101, 105]


async def test_next_waits_for_a_sample_without_polling() -> None:
    b = MicroBatcher(max_batch=8, max_queue=2)
    task = asyncio.create_task(b.next())
    await asyncio.sleep(0)
    assert not task.done()
    await b.put(pending(2, 0))
    assert len(await asyncio.wait_for(task, 1)) == 2


def test_drain_returns_everything_in_batches() -> None:
    b = MicroBatcher(max_batch=5, max_queue=10)
    for i in range(4):
        b.put_nowait(pending(3, i * 10))
    assert [len(r) for r in b.drain()] == [5, 5, 2] and b.qsize() == 0
