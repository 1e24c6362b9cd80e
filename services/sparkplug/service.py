"""sparkplug: read Sparkplug B edge nodes and devices, publish their metrics as reading batches.

`edgefleet run sparkplug --config FILE`, or a `kind: sparkplug` source of site.yaml. A
Sparkplug host application (not the primary one: it sends no STATE) on `server` (default: the
site broker): births give names, types and aliases; what NDATA/DDATA carry (by alias) is
gathered into one ReadingBatch per `coalesce_ms` tick on `ef/{site}/raw/{source}`;
NDEATH/DDEATH publish every signal of the node/device as a bad reading (NaN, quality bad), as
the other adapters do for a lost device. A seq gap, data
before a birth or an unknown alias sends `NCMD` `Node Control/Rebirth`, at most once per
`rebirth_interval_s` per node. What cannot be read is counted and reported on the errors topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from services.sparkplug.config import SparkplugSourceConfig
from services.sparkplug.nodes import Outcome, Tracker
from shared import clock
from shared.coalesce import Coalescer
from shared.errors import PayloadError, TopicError
from shared.health import HealthModel
from shared.messages import ReadingBatch
from shared.mqtt import MqttConnection, Received
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.sparkplug import REBIRTH, Metric, Payload, set_value
from shared.sparkplug import sparkplug_b_pb2 as pb
from shared.topics import (
    SparkplugTopic,
    SparkplugType,
    parse_sparkplug,
    sparkplug,
    sparkplug_filter,
)

NAME = "sparkplug"
MAX_PUBLISHING = 100  # reading batches published and not yet acknowledged
MAX_TOPICS = 100_000  # parsed topics remembered

log = logging.getLogger(__name__)


class SparkplugHealth(HealthModel):
    readings: int
    batches: int
    nodes_online: int
    births: int
    deaths: int
    seq_gaps: int
    rebirths_requested: int
    stale_deaths: int
    non_numeric: int


def rebirth_command() -> bytes:
    metric = Metric(name=REBIRTH, timestamp=clock.now_ns() // 1_000_000)
    set_value(metric, pb.Boolean, True)
    payload = Payload(timestamp=metric.timestamp)
    payload.metrics.append(metric)
    data: bytes = payload.SerializeToString()
    return data


class SparkplugService(Service[SparkplugSourceConfig]):
    health_section = "sparkplug"

    def __init__(self, rt: Runtime, config: SparkplugSourceConfig) -> None:
        super().__init__(rt, config)
        self.tracker = Tracker()
        self.raw_topic = rt.topics.raw(config.source)
        self.counts = dict.fromkeys(
            ("readings", "batches", "births", "deaths", "seq_gaps", "rebirths_requested"), 0
        )
        self.counts.update(stale_deaths=0, non_numeric=0)
        self._asked: dict[str, float] = {}  # node -> when a rebirth was last asked (monotonic)
        self._publishing: set[asyncio.Task[Any]] = set()
        self._topics: dict[str, SparkplugTopic] = {}
        self._pending: list[tuple[str, int, float, int]] = []  # readings of the next batch
        self._first_arrival = 0
        self._coalescer = Coalescer(config.coalesce_ms / 1000)
        # a broker of its own for the edge nodes, or the site's connection
        self.own: MqttConnection | None = None
        if config.server is not None:
            self.own = MqttConnection(
                config.server.settings(
                    config.client_id or f"{config.site}-{config.instance}-spb", config.timings
                ),
                self._own_dispatch,
            )

    async def start(self) -> None:
        for node in self.config.edge_nodes or ["+"]:
            topic_filter = sparkplug_filter(self.config.group_id, node)
            if self.own is not None:
                await self.own.subscribe(topic_filter, qos=1)  # NDEATH is a QoS 1 will
            else:
                await self.rt.subscribe(topic_filter, self.on_message, qos=1)
        self.rt.on_stop(self.drain)

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {}
        if self.config.coalesce_ms > 0:
            loops["coalesce_loop"] = self.coalesce_loop
        if self.own is not None:
            loops["sparkplug_mqtt_loop"] = self.own.run
        return loops

    def health(self) -> SparkplugHealth:
        online = sum(1 for n in self.tracker.nodes.values() if n.alive)
        return SparkplugHealth(nodes_online=online, **self.counts)

    async def _own_dispatch(self, message: Received) -> None:
        try:
            await self.on_message(message)
        except PayloadError as exc:
            self.rt.reject(str(exc), message)

    async def on_message(self, message: Received) -> None:
        arrival = clock.now_ns()
        topic = self._topics.get(message.topic)
        if topic is None:
            try:
                topic = parse_sparkplug(message.topic)
            except TopicError as exc:
                raise PayloadError(str(exc)) from None
            if len(self._topics) < MAX_TOPICS:  # parsed once per node and device
                self._topics[message.topic] = topic
        if topic.type in (SparkplugType.NCMD, SparkplugType.DCMD):
            return  # commands to the nodes (ours among them), not data
        try:
            payload = Payload.FromString(message.payload)
        except Exception as exc:  # protobuf's DecodeError, and whatever a fuzzed input raises
            raise PayloadError(f"not a Sparkplug B payload: {exc}") from None
        outcome = self.tracker.handle(topic, payload, arrival)
        self._count(topic.type, outcome)
        for problem in outcome.problems:
            self.rt.reject(problem, message)
        if outcome.readings:
            if not self._pending:
                self._first_arrival = arrival
            self._pending.extend(outcome.readings)
            if self.config.coalesce_ms == 0:
                await self.flush()
            else:
                self._coalescer.mark()
        if outcome.rebirth is not None and self.config.rebirth_on_gap:
            await self.ask_rebirth(topic.node, outcome.rebirth)

    def _count(self, kind: SparkplugType, outcome: Outcome) -> None:
        c = self.counts
        if kind in (SparkplugType.NBIRTH, SparkplugType.DBIRTH):
            c["births"] += 1
        elif kind in (SparkplugType.NDEATH, SparkplugType.DDEATH) and not outcome.stale_death:
            c["deaths"] += 1
        c["seq_gaps"] += outcome.gap
        c["stale_deaths"] += outcome.stale_death
        c["non_numeric"] += outcome.non_numeric

    async def coalesce_loop(self) -> None:
        """Wait for a first reading, let the tick fill up, publish one batch."""
        await self._coalescer.run(self.flush)

    async def flush(self) -> None:
        """Publish the readings gathered since the last flush as one ReadingBatch. The PUBACK
        is not awaited here: the next Sparkplug message must not wait for it."""
        self._coalescer.clear()
        readings, self._pending = self._pending, []
        if not readings:
            return
        index: dict[str, int] = {}
        sig = [index.setdefault(s, len(index)) for s, _, _, _ in readings]
        n = len(sig)
        batch = ReadingBatch.from_columns(
            self.config.source,
            list(index),
            np.fromiter((r[1] for r in readings), np.int64, n),
            np.asarray(sig, np.uint16),
            np.fromiter((r[2] for r in readings), np.float64, n),
            np.fromiter((r[3] for r in readings), np.uint8, n),
            received_ns=self._first_arrival,
        )
        publish = self.rt.publish(self.raw_topic, batch.to_wire(), qos=self.config.publish_qos)
        task = asyncio.get_running_loop().create_task(publish)
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        self.counts["readings"] += n
        self.counts["batches"] += 1
        if len(self._publishing) > MAX_PUBLISHING:  # the site broker is slow: so are we
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)

    async def ask_rebirth(self, node: str, why: str) -> None:
        now = time.monotonic()
        last = self._asked.get(node)
        if last is not None and now - last < self.config.rebirth_interval_s:
            return
        self._asked[node] = now
        log.warning("asking %s for a rebirth: %s", node, why)
        topic = sparkplug(self.config.group_id, SparkplugType.NCMD, node)
        connection = self.own if self.own is not None else self.rt.mqtt
        await connection.publish(topic, rebirth_command(), qos=0)
        self.counts["rebirths_requested"] += 1

    async def drain(self) -> None:
        """On stop: what was read goes out before the connection closes."""
        await self.flush()
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=2.0)


async def main(config: SparkplugSourceConfig) -> None:
    await run(NAME, config, lambda rt: SparkplugService(rt, config))


SPEC = ServiceSpec(NAME, SparkplugSourceConfig, main)
