"""The forwarder's durable queue: one SQLite file per sink (WAL, synchronous FULL).

A message is acknowledged to the site broker only after `put` committed it, and leaves the queue
only after the sink confirmed it (`remove`). Events (priority 0) are read ahead of results
(priority 1); within a priority, in arrival order. When a bound is passed (messages, bytes,
age), the oldest results are dropped first and events only when no result is left; each drop is
counted in the file, with the other counters, so they survive restarts.

A message the receiver refuses (not the receiver being away) leaves the queue for the file's
dead-letter table after a bounded number of attempts, with the reason, so it never blocks what
follows it; `edgefleet forwarder dead-letters` lists, retries or drops them from another process.

All SQLite work runs in one thread per queue, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from services.forwarder.config import QueueLimits
from shared import clock

log = logging.getLogger(__name__)

EVENT, RESULT = 0, 1  # priorities: events (alarms) go ahead of bulk results
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS q (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT,
    n INTEGER NOT NULL,
    enq_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS q_order ON q (prio, seq);
CREATE INDEX IF NOT EXISTS q_age ON q (enq_ns);
CREATE TABLE IF NOT EXISTS seen (seq INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    prio INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT,
    n INTEGER NOT NULL,
    enq_ns INTEGER NOT NULL,
    dead_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""
BUSY_TIMEOUT_MS = 10_000  # the dead-letters command may hold the file for a moment


class Transaction:
    """`with Transaction(db):` one write transaction, taken at once (BEGIN IMMEDIATE)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


@dataclass(frozen=True)
class Item:
    """One incoming message, as the intake hands it to every queue."""

    key: bytes  # a digest of the payload: a redelivered message is recognized by it
    prio: int
    topic: str
    payload: bytes
    content_type: str | None
    n: int  # results it holds (1 for an event)


@dataclass(frozen=True)
class Row:
    seq: int
    prio: int
    topic: str
    payload: bytes
    content_type: str | None
    n: int
    enq_ns: int
    suspect: bool  # sent before without a confirmation: the receiver may get it twice


@dataclass
class Counters:
    """Persisted in the queue file. Result counts, except where `_messages` says otherwise."""

    sent: int = 0
    sent_messages: int = 0
    dropped: int = 0
    dropped_messages: int = 0
    duplicates_suppressed: int = 0  # redelivered by the site broker, queued once
    duplicates_suspected: int = 0  # re-sent after an unconfirmed attempt
    failed: int = 0  # send attempts that failed
    dead_lettered: int = 0  # refused by the receiver, moved to the dead-letter table
    dead_lettered_messages: int = 0

    def rows(self) -> list[tuple[str, int]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


class DurableQueue:
    def __init__(
        self, path: Path, limits: QueueLimits, *, dedupe_window: int, suspect_head: int
    ) -> None:
        self.path = path
        self.limits = limits
        self.dedupe_window = dedupe_window
        self.suspect_head = suspect_head
        self.counters = Counters()
        self.messages = 0
        self.results = 0
        self.bytes = 0
        self.oldest_ns: int | None = None
        self.dead = 0  # messages in the dead-letter table
        self._version = 0  # PRAGMA data_version: changes when another process wrote the file
        self.wake = asyncio.Event()  # set when something was queued
        self._attempted: set[int] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"queue-{path.stem}")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._run(self._open)
        if self.messages:
            self.wake.set()

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path)
        self._db = db
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        for f in fields(Counters):
            setattr(self.counters, f.name, int(meta.get(f.name, 0)))
        if not meta.get("clean", 1):  # killed last time: the head may have been in flight
            head = db.execute("SELECT seq FROM q ORDER BY prio, seq LIMIT ?", (self.suspect_head,))
            self._attempted.update(seq for (seq,) in head)
        with Transaction(db):
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', 0)")
        self._refresh(db)
        log.info(
            "queue %s: %d message(s), %d result(s) waiting", self.path, self.messages, self.results
        )

    def _close(self) -> None:
        if self._db is not None:
            with Transaction(self._db):
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', 1)")
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"queue {self.path} is not open")
        return self._db

    def _refresh(self, db: sqlite3.Connection) -> None:
        count, results, size, oldest = db.execute(
            "SELECT count(*), total(n), total(length(payload)), min(enq_ns) FROM q"
        ).fetchone()
        self.messages, self.results, self.bytes = int(count), int(results), int(size)
        self.oldest_ns = oldest
        self.dead = int(db.execute("SELECT count(*) FROM dead").fetchone()[0])
        self._version = int(db.execute("PRAGMA data_version").fetchone()[0])

    def _notice_others(self, db: sqlite3.Connection) -> None:
        """Re-read the totals when another process (the dead-letters command) changed them."""
        if int(db.execute("PRAGMA data_version").fetchone()[0]) != self._version:
            self._refresh(db)

    def _save_counters(self, db: sqlite3.Connection) -> None:
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.counters.rows())

    # ------------------------------------------------------------------ intake

    async def put(self, items: list[Item]) -> int:
        """Commit `items` (one transaction); return how many were new (not redeliveries)."""
        accepted: int = await self._run(self._put, items, clock.now_ns())
        if accepted:
            self.wake.set()
        return accepted

    def _put(self, items: list[Item], now: int) -> int:
        db = self._conn()
        self._notice_others(db)
        accepted = 0
        with Transaction(db):
            for it in items:
                if self.dedupe_window:
                    cur = db.execute("INSERT OR IGNORE INTO seen (key) VALUES (?)", (it.key,))
                    if cur.rowcount == 0:
                        self.counters.duplicates_suppressed += it.n
                        continue
                db.execute(
                    "INSERT INTO q (prio, topic, payload, content_type, n, enq_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (it.prio, it.topic, it.payload, it.content_type, it.n, now),
                )
                accepted += 1
                self.messages += 1
                self.results += it.n
                self.bytes += len(it.payload)
            if self.dedupe_window:
                last = db.execute("SELECT max(seq) FROM seen").fetchone()[0] or 0
                db.execute("DELETE FROM seen WHERE seq <= ?", (last - self.dedupe_window,))
            self._trim(db, now)
            self._save_counters(db)
        if self.oldest_ns is None and self.messages:
            self.oldest_ns = now
        return accepted

    def _trim(self, db: sqlite3.Connection, now: int) -> None:
        """Apply the bounds: too old first, then the oldest results, then the oldest events."""
        limits = self.limits
        victims: list[tuple[int, int, int]] = db.execute(
            "SELECT seq, n, length(payload) FROM q WHERE enq_ns < ?",
            (now - int(limits.max_age_s * 1e9),),
        ).fetchall()
        self._drop(db, victims)
        for prio in (RESULT, EVENT):
            if self.messages <= limits.max_messages and self.bytes <= limits.max_bytes:
                return
            victims = []
            messages, size = self.messages, self.bytes
            cur = db.execute(
                "SELECT seq, n, length(payload) FROM q WHERE prio = ? ORDER BY seq", (prio,)
            )
            for seq, n, length in cur:
                if messages <= limits.max_messages and size <= limits.max_bytes:
                    break
                victims.append((seq, n, length))
                messages, size = messages - 1, size - length
            cur.close()
            self._drop(db, victims)

    def _drop(self, db: sqlite3.Connection, victims: list[tuple[int, int, int]]) -> None:
        if not victims:
            return
        db.executemany("DELETE FROM q WHERE seq = ?", [(seq,) for seq, _, _ in victims])
        results = sum(n for _, n, _ in victims)
        self.messages -= len(victims)
        self.results -= results
        self.bytes -= sum(length for _, _, length in victims)
        self.counters.dropped += results
        self.counters.dropped_messages += len(victims)
        self._attempted.difference_update(seq for seq, _, _ in victims)
        self.oldest_ns = db.execute("SELECT min(enq_ns) FROM q").fetchone()[0]
        log.warning(
            "queue %s full: dropped the %d oldest message(s) (%d result(s))",
            self.path,
            len(victims),
            results,
        )

    # ------------------------------------------------------------------ delivery

    async def peek(self, limit: int) -> list[Row]:
        """The next `limit` messages in delivery order, left in the queue."""
        rows: list[Row] = await self._run(self._peek, limit, clock.now_ns())
        return rows

    def _peek(self, limit: int, now: int) -> list[Row]:
        db = self._conn()
        self._notice_others(db)
        if self.oldest_ns is not None and now - self.oldest_ns > self.limits.max_age_s * 1e9:
            with Transaction(db):
                self._trim(db, now)
                self._save_counters(db)
        cur = db.execute(
            "SELECT seq, prio, topic, payload, content_type, n, enq_ns FROM q"
            " ORDER BY prio, seq LIMIT ?",
            (limit,),
        )
        return [
            Row(seq, prio, topic, payload, ctype, n, enq_ns, seq in self._attempted)
            for seq, prio, topic, payload, ctype, n, enq_ns in cur
        ]

    async def remove(self, rows: list[Row]) -> None:
        """The sink confirmed `rows`: delete them (one transaction) and count them sent."""
        await self._run(self._remove, rows)

    def _remove(self, rows: list[Row]) -> None:
        db = self._conn()
        gone: list[Row] = []
        with Transaction(db):
            for r in rows:  # one by one: a row may have been dropped since it was read
                if db.execute("DELETE FROM q WHERE seq = ?", (r.seq,)).rowcount:
                    gone.append(r)
            results = sum(r.n for r in gone)
            self.counters.sent += results
            self.counters.sent_messages += len(gone)
            self.counters.duplicates_suspected += sum(r.n for r in gone if r.suspect)
            self._save_counters(db)
        self._attempted.difference_update(r.seq for r in rows)
        self.messages -= len(gone)
        self.results -= results
        self.bytes -= sum(len(r.payload) for r in gone)
        self.oldest_ns = db.execute("SELECT min(enq_ns) FROM q").fetchone()[0]

    def failed(self, rows: list[Row]) -> None:
        """An attempt to send `rows` failed: they may have arrived, so a resend is suspect."""
        self.counters.failed += 1
        self._attempted.update(r.seq for r in rows)

    async def dead_letter(self, row: Row, reason: str, attempts: int) -> None:
        """Move `row` to the dead-letter table (one transaction), with why and how often."""
        await self._run(self._dead_letter, row, reason, attempts, clock.now_ns())

    def _dead_letter(self, row: Row, reason: str, attempts: int, now: int) -> None:
        db = self._conn()
        with Transaction(db):
            moved = db.execute(
                "INSERT INTO dead SELECT seq, prio, topic, payload, content_type, n, enq_ns,"
                " ?, ?, ? FROM q WHERE seq = ?",
                (now, attempts, reason, row.seq),
            ).rowcount
            if not moved:  # dropped by the full-queue policy meanwhile
                return
            db.execute("DELETE FROM q WHERE seq = ?", (row.seq,))
            self.counters.dead_lettered += row.n
            self.counters.dead_lettered_messages += 1
            self._save_counters(db)
        self._attempted.discard(row.seq)
        self.messages -= 1
        self.results -= row.n
        self.bytes -= len(row.payload)
        self.dead += 1
        self.oldest_ns = db.execute("SELECT min(enq_ns) FROM q").fetchone()[0]

    def oldest_age_s(self) -> float:
        if self.oldest_ns is None or not self.messages:
            return 0.0
        return round(max(0.0, (clock.now_ns() - self.oldest_ns) / 1e9), 3)

    def status(self) -> dict[str, Any]:
        return {
            "queued": self.messages,
            "queued_results": self.results,
            "queued_bytes": self.bytes,
            "oldest_age_s": self.oldest_age_s(),
            "dead_letters": self.dead,
            **dict(self.counters.rows()),
        }


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) a queue file: WAL, synchronous FULL, the schema."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db
