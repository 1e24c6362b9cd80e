"""The durable queue alone: delivery order, the full-queue policy, what survives a reopen."""

from __future__ import annotations

from pathlib import Path

from services.forwarder.config import QueueLimits
from services.forwarder.queue import EVENT, RESULT, DurableQueue, Item


def item(i: int, prio: int = RESULT, n: int = 2) -> Item:
    return Item(f"k{i}".encode(), prio, f"ef/s/results/f{i % 2}", b"x" * 10, None, n)


def queue(path: Path, **limits: float) -> DurableQueue:
    return DurableQueue(path, QueueLimits.model_validate(limits), dedupe_window=100, suspect_head=3)


async def test_events_first_then_arrival_order_and_redeliveries_queued_once(
    tmp_path: Path,
) -> None:
    q = queue(tmp_path / "q.db")
    await q.open()
    assert await q.put([item(0), item(1), item(2, EVENT, 1), item(3)]) == 4
    assert await q.put([item(1), item(4)]) == 1  # item 1 again: a redelivery
    rows = await q.peek(10)
    assert [r.payload for r in rows] and [r.prio for r in rows] == [EVENT] + [RESULT] * 4
    assert [r.topic for r in rows][1:] == [item(i).topic for i in (0, 1, 3, 4)]
    await q.remove(rows[:2])
    assert q.counters.sent == 3 and q.counters.duplicates_suppressed == 2
    assert q.messages == 3 and q.results == 6
    await q.close()


async def test_full_queue_drops_oldest_results_before_any_event(tmp_path: Path) -> None:
    q = queue(tmp_path / "q.db", max_messages=3)
    await q.open()
    await q.put([item(0, EVENT, 1), item(1), item(2), item(3), item(4)])
    assert q.messages == 3 and q.counters.dropped_messages == 2 and q.counters.dropped == 4
    rows = await q.peek(10)
    assert [r.prio for r in rows] == [EVENT, RESULT, RESULT]
    await q.put([item(5, EVENT, 1), item(6, EVENT, 1), item(7, EVENT, 1)])
    rows = await q.peek(10)
    assert [r.prio for r in rows] == [EVENT, EVENT, EVENT]  # results went first
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    await q.close()


async def test_counters_and_messages_survive_a_reopen_and_a_kill_marks_the_head_suspect(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    q = queue(path)
    await q.open()
    await q.put([item(i) for i in range(5)])
    await q.remove(await q.peek(1))
    # no close(): as if killed
    q._pool.shutdown()
    again = queue(path)
    await again.open()
    assert again.messages == 4 and again.counters.sent == 2
    rows = await again.peek(10)
    assert [r.suspect for r in rows] == [True, True, True, False]
    await again.remove(rows)
    assert again.counters.duplicates_suspected == 6
    await again.close()
    clean = queue(path)
    await clean.open()
    await clean.put([item(9)])
    assert not (await clean.peek(1))[0].suspect  # closed cleanly: nothing was in flight
    await clean.close()
