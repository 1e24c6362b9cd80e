"""Local sinks: a SQLite history (sqlite-utils) and rotated JSON-lines files.

Each writes from one thread of its own; `send` returns after the commit (SQLite) or the fsync
(file). SQLite rows are keyed by the result id, so a re-sent result is ignored and counted.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import sqlite_utils

from services.forwarder import records
from services.forwarder.config import FileSink as FileConfig
from services.forwarder.config import SqliteSink as SqliteConfig
from services.forwarder.queue import Row
from services.forwarder.sinks import Loop
from shared import codec
from shared.codec import Encoding
from shared.config import ServiceConfig
from shared.messages import Event

RESULT_COLUMNS = {"id": str, "flow": str, "t": int, "time": str, "model": str, "outputs": str}
EVENT_COLUMNS = {
    "id": str,
    "flow": str,
    "t": int,
    "time": str,
    "action": str,
    "decision": str,
    "reason": str,
    "result_id": str,
    "write": str,
}


class _Threaded:
    """Runs every call of a sink in one thread, the one that opened its file."""

    name: str

    def _init_pool(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"sink-{self.name}")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def ready(self) -> None:
        pass

    def loops(self) -> dict[str, Loop]:
        return {}

    async def start(self) -> None:
        await self._run(self._open)

    async def send(self, rows: list[Row]) -> None:
        await self._run(self._write, rows)

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown()

    # each sink: open its file, write a batch and commit it durably, close
    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class SqliteSink(_Threaded):
    def __init__(self, cfg: SqliteConfig, service: ServiceConfig) -> None:
        self.name = cfg.name
        self.path = cfg.path
        self.duplicates = 0  # rows already present: re-sent results, dropped by id
        self._db: sqlite_utils.Database | None = None
        self._init_pool()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite_utils.Database(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        results, events = db.table("results"), db.table("events")
        if not results.exists():
            results.create(RESULT_COLUMNS, pk="id")
            results.create_index(["flow", "t"])
        if not events.exists():
            events.create(EVENT_COLUMNS, pk="id")
            events.create_index(["flow", "t"])
        self._db = db

    def _write(self, rows: list[Row]) -> None:
        assert self._db is not None
        results: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for row in rows:
            message = records.decode(row)
            if isinstance(message, Event):
                events.append(records.event_row(message))
            else:
                results.extend(records.result_rows(message))
        conn = self._db.conn
        before = conn.total_changes
        with conn:  # one transaction, committed (synchronous FULL) before we return
            if results:
                self._db.table("results").insert_all(results, ignore=True, batch_size=1000)
            if events:
                self._db.table("events").insert_all(events, ignore=True)
        self.duplicates += len(results) + len(events) - (conn.total_changes - before)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def status(self) -> dict[str, Any]:
        return {"duplicates_ignored": self.duplicates}


class FileSink(_Threaded):
    """One JSON line per result (`"kind": "result"`) or event; fsync before confirming."""

    def __init__(self, cfg: FileConfig, service: ServiceConfig) -> None:
        self.name = cfg.name
        self.path = cfg.path
        self.max_bytes = cfg.max_bytes
        self.keep = cfg.keep
        self.rotations = 0
        self._file: TextIO | None = None
        self._init_pool()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()

    def _lines(self, row: Row) -> list[dict[str, Any]]:
        message = records.decode(row)
        if isinstance(message, Event):
            return [{"kind": "event", **records.event_row(message)}]
        return [
            {"kind": "result", **r} for r in records.result_rows(message, outputs_as_text=False)
        ]

    def _write(self, rows: list[Row]) -> None:
        assert self._file is not None
        if self._file.tell() >= self.max_bytes:
            self._rotate()
        lines = [
            codec.encode(line, Encoding.JSON)[0].decode() for r in rows for line in self._lines(r)
        ]
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def status(self) -> dict[str, Any]:
        return {"file": str(self.path), "rotations": self.rotations}
