"""The Sparkplug B sink: the site as one Sparkplug edge node, each flow one device.

Sparkplug 3.0 over MQTT 5 (clean start, no session: births replace sessions). On every
connect the will is an NDEATH with the next bdSeq (written to disk before the CONNECT, so a
restart never reuses it); then NBIRTH (seq 0, the same bdSeq) and a DBIRTH per known device.
Results and events become metric values; a DDATA carries only those that changed, by alias,
each stamped with its result's time (`is_historical` when older than the session). A new
metric (a flow seen for the first time, a new output, a new action) sends that device's DBIRTH
again. `NCMD` `Node Control/Rebirth` = true sends NBIRTH and every DBIRTH again (same bdSeq).
Metric names and how Ignition shows them: docs/sparkplug.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.forwarder import records
from services.forwarder.config import ForwarderConfig
from services.forwarder.config import SparkplugSink as SparkplugConfig
from services.forwarder.queue import Row
from services.forwarder.sinks import Loop, SinkError
from shared.clock import now_ns
from shared.errors import PayloadError
from shared.messages import Event, ResultBatch
from shared.mqtt import MqttConnection, NotConnected, Received, Will
from shared.sparkplug import BDSEQ, REBIRTH, BdSeqFile, Metric, Payload, next_seq, set_value
from shared.sparkplug import sparkplug_b_pb2 as pb
from shared.topics import SparkplugType, sparkplug

log = logging.getLogger(__name__)

Value = float | int | bool | str | None
Report = Callable[[str, Received], None]
NS_PER_MS = 1_000_000
SOFTWARE = "edgefleet"


@dataclass(slots=True)
class Update:
    name: str
    datatype: int
    value: Value
    t_ms: int


@dataclass(slots=True)
class MetricState:
    alias: int
    datatype: int
    value: Value
    t_ms: int


@dataclass
class Device:
    metrics: dict[str, MetricState] = field(default_factory=dict)
    born: bool = False  # its DBIRTH went out in this session


def _datatype(dtype: np.dtype[Any]) -> int:
    kind = dtype.kind
    if kind == "b":
        return pb.Boolean
    if kind == "f":
        return pb.Float if dtype.itemsize == 4 else pb.Double
    if kind == "i":
        return pb.Int64
    if kind == "u":
        return pb.UInt64
    return pb.String


def _same(a: Value, b: Value) -> bool:
    """Equal, NaN included (one metric keeps one type: its datatype is part of the state)."""
    return a == b or (a != a and b != b)  # x != x only for NaN


def node_metrics(site: str) -> list[tuple[str, int, Value]]:
    """The NBIRTH's metrics besides bdSeq: name, data type, value."""
    return [
        (REBIRTH, pb.Boolean, False),
        ("Properties/Software", pb.String, SOFTWARE),
        ("Properties/Site", pb.String, site),
    ]


def result_updates(batch: ResultBatch) -> list[list[Update]]:
    """Per result row: its metrics (outputs, model, latency), each stamped with its time."""
    columns: list[tuple[str, int, Any]] = []
    for name, column in batch.outputs.items():
        arr = np.asarray(column)
        if arr.ndim <= 1:
            columns.append((f"Outputs/{name}", _datatype(arr.dtype), arr.tolist()))
        else:  # one metric per element of a vector output
            flat = arr.reshape(arr.shape[0], -1)
            for j in range(flat.shape[1]):
                values = flat[:, j].tolist()
                columns.append((f"Outputs/{name}/{j}", _datatype(arr.dtype), values))
    latency = batch.latency_us.tolist()
    model = batch.model
    rows = []
    for i, t in enumerate(batch.t.tolist()):
        t_ms = t // NS_PER_MS
        row = [Update(name, dt, values[i], t_ms) for name, dt, values in columns]
        row.append(Update("Inference/Latency us", pb.Float, latency[i], t_ms))
        if i == 0:  # one model per batch: compared once
            row.append(Update("Model/Name", pb.String, model.name, t_ms))
            row.append(Update("Model/Version", pb.String, str(model.version), t_ms))
            row.append(Update("Model/SHA256", pb.String, model.sha256, t_ms))
        rows.append(row)
    return rows


def event_updates(event: Event) -> list[Update]:
    t_ms = event.t // NS_PER_MS
    base = f"Actions/{event.action}"
    return [
        Update(f"{base}/Decision", pb.String, event.decision, t_ms),
        Update(f"{base}/Reason", pb.String, event.reason, t_ms),
    ]


class SparkplugSink:
    """A forwarder sink (`kind: sparkplug`); `send` returns once every DDATA and DBIRTH of the
    rows was written to the connection (QoS 0, as Sparkplug has them)."""

    def __init__(
        self, cfg: SparkplugConfig, service: ForwarderConfig, report: Report | None = None
    ) -> None:
        self.name = cfg.name
        self.group, self.node = cfg.group_id, cfg.edge_node_id or service.site
        self.site = service.site
        self.report = report
        self.bdseq = BdSeqFile(service.queue_dir / f"{cfg.name}.sparkplug.json")
        self.connection = MqttConnection(
            cfg.broker.settings(
                cfg.client_id or f"{service.site}-{service.instance}-{cfg.name}",
                service.timings,
                clean_start=True,  # Sparkplug 3.0: no persistent session; births restate all
                session_expiry_s=None,
            ),
            self.on_message,
            will=self.will,
            will_on_close=True,  # a stopped node is dead to its hosts as much as a lost one
        )
        self.connection.on_connect(self.on_connect)
        self.lock = asyncio.Lock()  # births and DDATA never interleave
        self.seq = 0
        self.session_ms = 0
        self._aliases = 0
        self.node_metrics: dict[str, MetricState] = {}
        for name, datatype, value in node_metrics(self.site):
            self.node_metrics[name] = MetricState(self._alias(), datatype, value, 0)
        self.devices: dict[str, Device] = {}
        self._topics: dict[tuple[SparkplugType, str | None], str] = {}
        self.counts = {"births": 0, "ddata": 0, "rebirths": 0, "metrics": 0, "commands": 0}

    def _alias(self) -> int:
        self._aliases += 1
        return self._aliases - 1

    def topic(self, kind: SparkplugType, device: str | None = None) -> str:
        key = (kind, device)
        topic = self._topics.get(key)
        if topic is None:  # built and checked once per device
            topic = self._topics[key] = sparkplug(self.group, kind, self.node, device)
        return topic

    # ---------------------------------------------------------------- the Sink interface

    async def start(self) -> None:
        await self.connection.subscribe(self.topic(SparkplugType.NCMD), qos=0)

    async def ready(self) -> None:
        await self.connection.wait_connected()

    def loops(self) -> dict[str, Loop]:
        return {f"{self.name}_sparkplug_loop": self.connection.run}

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connection.connected,
            "reconnects": self.connection.stats.reconnects,
            "bdseq": self.bdseq.current,
            "seq": self.seq,
            "devices": len(self.devices),
            **self.counts,
        }

    async def send(self, rows: list[Row]) -> None:
        async with self.lock:
            pending: dict[str, list[Metric]] = {}
            for i, row in enumerate(rows):
                try:
                    message = records.decode(row)
                except PayloadError as exc:
                    await self._flush(pending, i)
                    raise SinkError(
                        f"{self.name}: {exc}", i, refused=True, permanent=True
                    ) from None
                if isinstance(message, ResultBatch):
                    for updates in result_updates(message):
                        await self._apply(message.flow, updates, pending, i)
                else:
                    await self._apply(message.flow, event_updates(message), pending, i)
            await self._flush(pending, 0)

    # ---------------------------------------------------------------- values → messages

    async def _apply(
        self, flow: str, updates: list[Update], pending: dict[str, list[Metric]], row: int
    ) -> None:
        device = self.devices.setdefault(flow, Device())
        known = device.metrics
        rebirth = not device.born
        changed: list[tuple[Update, MetricState]] = []
        for u in updates:
            state = known.get(u.name)
            if state is None or state.datatype != u.datatype:  # a new definition: DBIRTH
                known[u.name] = MetricState(
                    state.alias if state else self._alias(), u.datatype, u.value, u.t_ms
                )
                rebirth = True
            elif not _same(state.value, u.value):
                state.value, state.t_ms = u.value, u.t_ms
                changed.append((u, state))
        if rebirth:
            for u, state in changed:
                state.value, state.t_ms = u.value, u.t_ms
            await self._flush({flow: pending.pop(flow, [])}, row)
            await self._publish(SparkplugType.DBIRTH, flow, self._birth_metrics(known), row)
            device.born = True
            return
        metrics = pending.setdefault(flow, [])
        for u, state in changed:
            metric = Metric(alias=state.alias, timestamp=u.t_ms)
            if u.t_ms < self.session_ms:  # queued during an outage: history, not the present
                metric.is_historical = True
            set_value(metric, u.datatype, u.value)
            metrics.append(metric)

    async def _flush(self, pending: dict[str, list[Metric]], row: int) -> None:
        for device, metrics in pending.items():
            if metrics:
                await self._publish(SparkplugType.DDATA, device, metrics, row)
        pending.clear()

    def _birth_metrics(self, metrics: dict[str, MetricState]) -> list[Metric]:
        out = []
        for name, state in metrics.items():
            metric = Metric(name=name, alias=state.alias)
            if state.t_ms:
                metric.timestamp = state.t_ms
            set_value(metric, state.datatype, state.value)
            out.append(metric)
        return out

    async def _publish(
        self,
        kind: SparkplugType,
        device: str | None,
        metrics: list[Metric],
        row: int = 0,
        *,
        priority: bool = False,
    ) -> None:
        payload = Payload(timestamp=now_ns() // NS_PER_MS, seq=self.seq)
        payload.metrics.extend(metrics)
        self.seq = next_seq(self.seq)
        try:
            await self.connection.publish(
                self.topic(kind, device),
                payload.SerializeToString(),
                qos=0,
                buffer=False,
                priority=priority,
            )
        except NotConnected as exc:
            if priority:
                raise
            raise SinkError(f"{self.name}: {exc}", row) from None
        if kind is SparkplugType.DDATA:
            self.counts["ddata"] += 1
            self.counts["metrics"] += len(metrics)
        else:
            self.counts["births"] += 1

    # ---------------------------------------------------------------- session and rebirth

    def will(self) -> Will:
        """The NDEATH of the connection about to be made, with its own bdSeq."""
        metric = Metric(name=BDSEQ, timestamp=now_ns() // NS_PER_MS)
        set_value(metric, pb.Int64, self.bdseq.next())
        payload = Payload(timestamp=metric.timestamp)
        payload.metrics.append(metric)
        return Will(
            self.topic(SparkplugType.NDEATH), payload.SerializeToString(), qos=1, retain=False
        )

    async def on_connect(self) -> None:
        self.session_ms = now_ns() // NS_PER_MS
        async with self.lock:
            await self._births(priority=True)

    async def _births(self, *, priority: bool) -> None:
        """NBIRTH (seq 0, the connection's bdSeq) and every device's DBIRTH."""
        self.seq = 0
        bdseq = Metric(name=BDSEQ)
        set_value(bdseq, pb.Int64, self.bdseq.current or 0)
        node = [bdseq, *self._birth_metrics(self.node_metrics)]
        await self._publish(SparkplugType.NBIRTH, None, node, priority=priority)
        for name, device in self.devices.items():
            await self._publish(
                SparkplugType.DBIRTH, name, self._birth_metrics(device.metrics), priority=priority
            )
            device.born = True

    async def on_message(self, message: Received) -> None:
        """An NCMD for this node: `Node Control/Rebirth` true sends every birth again."""
        self.counts["commands"] += 1
        try:
            payload = Payload.FromString(message.payload)
        except Exception as exc:  # protobuf's DecodeError, and whatever a fuzzed input raises
            self._reject(f"NCMD is not a Sparkplug B payload: {exc}", message)
            return
        alias = self.node_metrics[REBIRTH].alias
        for metric in payload.metrics:
            named = metric.name == REBIRTH or (not metric.name and metric.alias == alias)
            if named and metric.WhichOneof("value") == "boolean_value" and metric.boolean_value:
                log.info("sink %s: rebirth asked on %s", self.name, message.topic)
                async with self.lock:
                    try:
                        await self._births(priority=False)
                    except SinkError as exc:  # the connection went: its reconnect births anyway
                        log.warning("sink %s: rebirth failed: %s", self.name, exc)
                        return
                self.counts["rebirths"] += 1
                return
        self._reject("NCMD names no known command (expected Node Control/Rebirth = true)", message)

    def _reject(self, reason: str, message: Received) -> None:
        log.warning("sink %s: %s (%s)", self.name, reason, message.topic)
        if self.report is not None:
            self.report(f"sink {self.name}: {reason}", message)
