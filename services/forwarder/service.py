"""forwarder: deliver results and events to IT systems through a durable queue per sink.

`edgefleet run forwarder --config FILE`. The site connection is a persistent session (fixed
client id, clean_start False, a session expiry) subscribed at QoS 1 with manual acks: a message
is acknowledged only after every sink's queue committed it, in one transaction per queue for
all that arrived meanwhile. Each sink has a sender loop: it reads a batch in delivery order
(events first), sends it, and deletes it only after the sink confirmed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from services.forwarder.config import FileSink as FileConfig
from services.forwarder.config import ForwarderConfig
from services.forwarder.config import HttpSink as HttpConfig
from services.forwarder.config import MqttSink as MqttConfig
from services.forwarder.config import SparkplugSink as SparkplugConfig
from services.forwarder.config import SqliteSink as SqliteConfig
from services.forwarder.queue import EVENT, RESULT, DurableQueue, Item, Row
from services.forwarder.sinks import HttpSink, MqttSink, Sink, SinkError
from services.forwarder.sparkplug import Report, SparkplugSink
from services.forwarder.stores import FileSink, SqliteSink
from shared import codec
from shared.errors import PayloadError
from shared.health import HealthModel
from shared.messages import Event, ResultBatch
from shared.mqtt import Received
from shared.retry import Backoff
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.topics import Kind

NAME = "forwarder"

log = logging.getLogger(__name__)


def make_sink(cfg: Any, config: ForwarderConfig, report: Report | None = None) -> Sink:
    """The sink of one config; `report` takes what a sink rejects of its own input (a
    malformed Sparkplug command) to the errors topic."""
    if isinstance(cfg, MqttConfig):
        return MqttSink(cfg, config)
    if isinstance(cfg, HttpConfig):
        return HttpSink(cfg, config)
    if isinstance(cfg, SqliteConfig):
        return SqliteSink(cfg, config)
    if isinstance(cfg, FileConfig):
        return FileSink(cfg, config)
    if isinstance(cfg, SparkplugConfig):
        return SparkplugSink(cfg, config, report)
    raise TypeError(f"unknown sink config {type(cfg).__name__}")


def to_item(message: Received) -> Item:
    """Check a message cheaply by decoding it; raise PayloadError for what no sink could take."""
    data = codec.decode(message.payload, message.content_type)
    if f"/{Kind.EVENTS.value}/" in message.topic:
        Event.from_wire(data)
        prio, n = EVENT, 1
    else:
        prio, n = RESULT, ResultBatch.rows(data)
    key = hashlib.blake2b(message.payload, digest_size=16).digest()
    return Item(key, prio, message.topic, message.payload, message.content_type, n)


class LaneHealth(HealthModel):
    """One sink's section (`sink_{name}`): its queue, then what the sink itself counts (kept
    as extra keys: they differ per kind of sink)."""

    queued: int
    queued_results: int
    queued_bytes: int
    oldest_age_s: float | None
    last_error: str | None


class Lane:
    """One sink, its queue and its sender."""

    def __init__(
        self, cfg: Any, config: ForwarderConfig, on_dead: DeadReport, report: Report | None = None
    ) -> None:
        self.cfg = cfg
        self.sink = make_sink(cfg, config, report)
        self.queue = DurableQueue(
            config.queue_dir / f"{cfg.name}.db",
            cfg.queue,
            dedupe_window=config.dedupe_window,
            suspect_head=cfg.batch_size,
        )
        self.backoff = Backoff(cfg.retry_initial_s, cfg.retry_max_s)
        self.last_error: str | None = None
        self.on_dead = on_dead
        # SQLite tells no other process of a change: an idle sender looks again this often, for
        # what `edgefleet forwarder dead-letters retry` put back
        self.idle_s = config.timings.status_interval_s
        self._attempts: dict[int, int] = {}  # refusals per queued message (seq)
        self._isolate_until: int | None = None  # send one by one up to this seq

    async def sender_loop(self) -> None:
        queue, sink = self.queue, self.sink
        while True:
            queue.wake.clear()
            # Ready first, then read: rows read before a long outage may be dropped from a full
            # queue meanwhile, and sending them after it would deliver what was counted dropped.
            await sink.ready()
            rows = await queue.peek(1 if self._isolate_until is not None else self.cfg.batch_size)
            if not rows:
                # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that lands as the
                # wake comes, and this loop would run on after its stop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_s):
                        await queue.wake.wait()
                continue
            try:
                await sink.send(rows)
            except SinkError as exc:
                if not await self._refused(rows, exc):
                    await asyncio.sleep(self.backoff.next_delay())
                continue
            await queue.remove(rows)
            self._delivered(rows)

    async def _refused(self, rows: list[Row], exc: SinkError) -> bool:
        """Account for a failed send; True when the lane may go on at once (a refused message
        left the way), False when it must back off (the receiver is away or may change)."""
        queue = self.queue
        if exc.confirmed:
            await queue.remove(rows[: exc.confirmed])
        rest = rows[exc.confirmed :]
        queue.failed(rest)
        self._report(str(exc))
        if not (exc.refused and rest):
            return False
        if exc.whole_batch and len(rest) > 1:  # refused, but which one? one at a time
            self._isolate_until = rest[-1].seq
            return True
        head = rest[0]
        attempts = self._attempts[head.seq] = self._attempts.get(head.seq, 0) + 1
        if not (exc.permanent or attempts >= self.cfg.max_attempts):
            return False
        await queue.dead_letter(head, str(exc), attempts)
        del self._attempts[head.seq]
        self.on_dead(self, head, str(exc), attempts)
        return True

    def _delivered(self, rows: list[Row]) -> None:
        last = rows[-1].seq
        if self._isolate_until is not None and last >= self._isolate_until:
            self._isolate_until = None
        if self._attempts:
            self._attempts = {seq: n for seq, n in self._attempts.items() if seq > last}
        if self.last_error is not None:
            log.info("sink %s delivers again", self.cfg.name)
        self.backoff.reset()
        self.last_error = None

    def _report(self, reason: str) -> None:
        if self.last_error is None:  # once per outage, not once per retry
            log.warning(
                "sink %s: %s; %d message(s) queued", self.cfg.name, reason, self.queue.messages
            )
        self.last_error = reason

    def status(self) -> LaneHealth:
        return LaneHealth.model_validate(
            {**self.queue.status(), **self.sink.status(), "last_error": self.last_error}
        )


DeadReport = Callable[[Lane, Row, str, int], None]


class ForwarderService(Service[ForwarderConfig]):
    def __init__(self, rt: Runtime, config: ForwarderConfig) -> None:
        super().__init__(rt, config)
        self.lanes = [Lane(cfg, config, self.on_dead, rt.errors.report) for cfg in config.sinks]
        self._pending: list[tuple[Received, Item | None]] = []
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        for lane in self.lanes:
            await lane.queue.open()
            await lane.sink.start()
            self.rt.add_health(f"sink_{lane.cfg.name}", lane.status)
        topics = self.rt.topics
        flows = self.config.flows
        filters = (
            [topics.all_of(Kind.EVENTS), topics.all_of(Kind.RESULTS)]
            if flows is None
            else [t for f in flows for t in (topics.events(f), topics.results(f))]
        )
        for topic_filter in filters:
            await self.rt.subscribe(topic_filter, self.on_message, qos=1, acks=True)

    async def close(self) -> None:
        for lane in self.lanes:
            await lane.sink.close()
            await lane.queue.close()

    async def on_message(self, message: Received) -> None:
        """Keep the message for the next commit; malformed ones are reported, then acked."""
        try:
            item: Item | None = to_item(message)
        except PayloadError as exc:
            self.rt.reject(str(exc), message)
            item = None
        self._pending.append((message, item))
        self._arrived.set()

    def on_dead(self, lane: Lane, row: Row, reason: str, attempts: int) -> None:
        """A message left a sink's queue for its dead-letter table: report it as a rejection
        (errors topic, with the message's topic and an excerpt), counted in the sink's section."""
        message = Received(row.topic, row.payload, row.content_type, qos=1, retain=False, mid=0)
        self.rt.errors.report(
            f"sink {lane.cfg.name}: dead-lettered after {attempts} attempt(s): {reason}", message
        )

    async def commit_loop(self) -> None:
        """Commit what arrived to every queue (one transaction each), then ack it in order."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            pending, self._pending = self._pending, []
            items = [item for _, item in pending if item is not None]
            if items:
                await asyncio.gather(*(lane.queue.put(items) for lane in self.lanes))
            for message, _ in pending:
                self.rt.ack(message)

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {"commit_loop": self.commit_loop}
        for lane in self.lanes:
            loops.update(lane.sink.loops())
            loops[f"{lane.cfg.name}_sender_loop"] = lane.sender_loop
        return loops


async def main(config: ForwarderConfig) -> None:
    await run(NAME, config, lambda rt: ForwarderService(rt, config), manual_ack=True)


SPEC = ServiceSpec(NAME, ForwarderConfig, main, service=ForwarderService)
