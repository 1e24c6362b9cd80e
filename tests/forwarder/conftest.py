"""Fixtures of the forwarder tests: a cloud broker, an HTTP endpoint, result batches."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.broker import LocalBroker
from shared.messages import Event, ModelRef, ResultBatch, result_id

T0 = 1_700_000_000_000_000_000


def results(flow: str, first: int, n: int) -> dict[str, Any]:
    """Results `first` … `first + n - 1` of a flow, one every millisecond."""
    t = T0 + (np.arange(first, first + n, dtype=np.int64) * 1_000_000)
    batch = ResultBatch(
        flow,
        ModelRef("pump-ae", "3", "ab" * 32),
        t,
        {"score": np.arange(first, first + n, dtype=np.float32) / 100},
        np.full(n, 42.0, np.float32),
    )
    return batch.to_wire()


def result_ids(flow: str, first: int, n: int) -> list[str]:
    return [result_id(flow, T0 + i * 1_000_000) for i in range(first, first + n)]


def event(flow: str, i: int) -> dict[str, Any]:
    return Event(
        flow=flow, action="stop-pump", decision="acted", reason=f"score high {i}", t=T0 + i
    ).to_wire()


def unique(ids: list[str]) -> list[str]:
    """First occurrences, in order: what a receiver keeps after dropping duplicates by id."""
    return list(dict.fromkeys(ids))


async def wait_all(got: Callable[[], list[str]], expected: list[str], timeout: float) -> list[str]:
    """Wait until every expected id arrived (duplicates allowed); return all ids that did."""
    deadline = time.monotonic() + timeout
    while set(got()) != set(expected):
        assert time.monotonic() < deadline, f"{len(set(got()))} of {len(expected)} arrived"
        await asyncio.sleep(0.1)  # poll interval: ids arrive on several paths, with no one event
    return got()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(tmp_path / "cloud").start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Endpoint:
    """A real HTTP server on a free port that answers 503 while `failing` is set."""

    failing: threading.Event = field(default_factory=threading.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    url: str = ""
    refuse_topic: str | None = None  # a batch holding a message of this topic gets a 400

    def ids(self) -> list[str]:
        return [
            i
            for b in self.bodies
            for m in b["messages"]
            if m["body"]["kind"] == "results"
            for i in m["body"]["id"]
        ]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            topics = {m["topic"] for m in json.loads(body)["messages"]}
            if state.failing.is_set():
                state.refused += 1
                self.send_response(503)
            elif state.refuse_topic in topics:
                state.refused += 1
                self.send_response(400)
            else:
                state.bodies.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/ingest"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
