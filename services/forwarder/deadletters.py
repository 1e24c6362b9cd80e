"""The dead-letter table of a sink's queue file, as the `edgefleet forwarder dead-letters`
command reads and changes it, from another process than the forwarder (SQLite, WAL, waits
for the forwarder's transactions).

`retry` moves messages back into the queue at their old place (the head: they were the oldest),
with a fresh enqueue time so the age bound does not drop them at once; the forwarder notices the
change at its next read of the file. `drop` deletes them for good.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.forwarder.queue import Transaction, connect
from shared import clock
from shared.messages import iso


@dataclass(frozen=True)
class DeadLetter:
    sink: str
    id: int  # the message's sequence number in its queue
    topic: str
    results: int
    bytes: int
    queued: str  # ISO times
    dead: str
    attempts: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise FileNotFoundError(f"no queue file {path}")
    db = connect(path)
    try:
        yield db
    finally:
        db.close()


def listed(sink: str, path: Path) -> list[DeadLetter]:
    with opened(path) as db:
        rows = db.execute(
            "SELECT seq, topic, n, length(payload), enq_ns, dead_ns, attempts, reason"
            " FROM dead ORDER BY seq"
        ).fetchall()
    return [
        DeadLetter(sink, seq, topic, n, size, iso(enq), iso(dead), attempts, reason)
        for seq, topic, n, size, enq, dead, attempts, reason in rows
    ]


def _chosen(db: sqlite3.Connection, ids: list[int] | None) -> list[int]:
    """The ids asked for that are in the table (all of them when `ids` is None)."""
    present = [seq for (seq,) in db.execute("SELECT seq FROM dead ORDER BY seq")]
    return present if ids is None else [seq for seq in present if seq in set(ids)]


def retry(path: Path, ids: list[int] | None) -> list[int]:
    """Put dead letters back in the queue; return the ids moved."""
    with opened(path) as db, Transaction(db):
        chosen = _chosen(db, ids)
        now = clock.now_ns()
        for seq in chosen:
            db.execute(
                "INSERT INTO q (seq, prio, topic, payload, content_type, n, enq_ns)"
                " SELECT seq, prio, topic, payload, content_type, n, ? FROM dead WHERE seq = ?",
                (now, seq),
            )
            db.execute("DELETE FROM dead WHERE seq = ?", (seq,))
    return chosen


def drop(path: Path, ids: list[int] | None) -> list[int]:
    """Delete dead letters for good; return the ids deleted."""
    with opened(path) as db, Transaction(db):
        chosen = _chosen(db, ids)
        db.executemany("DELETE FROM dead WHERE seq = ?", [(seq,) for seq in chosen])
    return chosen
