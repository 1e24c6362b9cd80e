"""What a Sparkplug host keeps per edge node, and how each message changes it (no I/O).

Births define the metrics (name, alias, data type) and carry their values; data messages name
metrics by alias (or name); a death marks every signal of the node, or of the device, bad. The
seq of each message is checked against the last one: a gap, data before a birth, or an alias no
birth defined asks for a rebirth (the caller sends the NCMD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.messages import Quality
from shared.sparkplug import BDSEQ, Metric, Payload, next_seq, number
from shared.topics import SparkplugTopic, SparkplugType

NS_PER_MS = 1_000_000
CONTROL = "Node Control/"  # commands a host writes, not readings
QUALITY = "Quality"  # the metric property Ignition and others use (OPC quality codes)


@dataclass(frozen=True)
class Definition:
    signal: str
    datatype: int


@dataclass
class Node:
    bdseq: int | None = None
    seq: int | None = None
    alive: bool = False
    aliases: dict[int, Definition] = field(default_factory=dict)
    names: dict[tuple[str | None, str], Definition] = field(default_factory=dict)
    signals: dict[str | None, set[str]] = field(default_factory=dict)  # device -> signals


@dataclass
class Outcome:
    """The readings a message gives (signal, t ns, value, quality) and what it asks for."""

    readings: list[tuple[str, int, float, int]] = field(default_factory=list)
    rebirth: str | None = None  # why a rebirth should be asked for
    problems: list[str] = field(default_factory=list)  # input that could not be read
    gap: bool = False
    stale_death: bool = False
    non_numeric: int = 0


def signal_name(node: str, device: str | None, metric: str) -> str:
    return f"{node}/{metric}" if device is None else f"{node}/{device}/{metric}"


def quality(metric: Metric) -> int:
    """GOOD unless the metric has a `Quality` property: OPC codes, 192 good, 64-127 uncertain."""
    props = metric.properties
    if QUALITY not in props.keys:
        return Quality.GOOD
    value = props.values[list(props.keys).index(QUALITY)]
    code = value.int_value if value.WhichOneof("value") == "int_value" else value.long_value
    code &= 0xFF  # OPC DA: the quality bits; limits and vendor bits above are not ours
    if code >= 192:
        return Quality.GOOD
    return Quality.UNCERTAIN if code >= 64 else Quality.BAD


class Tracker:
    """Every edge node seen, by id; `handle` applies one message."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def handle(self, topic: SparkplugTopic, payload: Payload, arrival_ns: int) -> Outcome:
        out = Outcome()
        kind = topic.type
        if kind is SparkplugType.NBIRTH:
            self._nbirth(topic.node, payload, arrival_ns, out)
            return out
        node = self.nodes.get(topic.node)
        if kind is SparkplugType.NDEATH:
            self._ndeath(topic.node, node, payload, arrival_ns, out)
            return out
        if node is None or not node.alive:
            out.rebirth = f"{kind.value} from {topic.node} before its NBIRTH"
            return out
        self._check_seq(node, payload, out, topic.node)
        if kind is SparkplugType.DBIRTH:
            self._define(topic.node, topic.device, node, payload, arrival_ns, out)
        elif kind is SparkplugType.DDEATH:
            t = _time(payload, None, arrival_ns)
            out.readings.extend(
                (s, t, math.nan, Quality.BAD) for s in sorted(node.signals.get(topic.device, ()))
            )
        elif kind in (SparkplugType.NDATA, SparkplugType.DDATA):
            self._data(topic.node, topic.device, node, payload, arrival_ns, out)
        return out

    def _check_seq(self, node: Node, payload: Payload, out: Outcome, name: str) -> None:
        if not payload.HasField("seq"):
            out.problems.append(f"message from {name} has no seq")
            return
        if node.seq is not None and payload.seq != next_seq(node.seq):
            out.gap = True
            out.rebirth = f"seq gap from {name}: {payload.seq} after {node.seq}"
        node.seq = payload.seq

    def _nbirth(self, name: str, payload: Payload, arrival_ns: int, out: Outcome) -> None:
        node = self.nodes[name] = Node(alive=True)
        node.seq = payload.seq if payload.HasField("seq") else None
        for metric in payload.metrics:
            if metric.name == BDSEQ:
                node.bdseq = int(metric.long_value)
        if node.bdseq is None:
            out.problems.append(f"NBIRTH of {name} has no bdSeq metric")
        self._define(name, None, node, payload, arrival_ns, out)

    def _ndeath(
        self, name: str, node: Node | None, payload: Payload, arrival_ns: int, out: Outcome
    ) -> None:
        bdseq = next((int(m.long_value) for m in payload.metrics if m.name == BDSEQ), None)
        if node is None or not node.alive or (node.bdseq is not None and bdseq != node.bdseq):
            out.stale_death = True  # the will of an older session: the node lives on
            return
        node.alive = False
        t = _time(payload, None, arrival_ns)
        for signals in node.signals.values():
            out.readings.extend((s, t, math.nan, Quality.BAD) for s in sorted(signals))

    def _define(
        self,
        name: str,
        device: str | None,
        node: Node,
        payload: Payload,
        arrival_ns: int,
        out: Outcome,
    ) -> None:
        node.signals[device] = set()
        for metric in payload.metrics:
            if not metric.name:
                out.problems.append(f"a birth of {name} has a metric without a name")
                continue
            if metric.name == BDSEQ:
                continue
            definition = Definition(signal_name(name, device, metric.name), metric.datatype)
            node.names[(device, metric.name)] = definition
            if metric.HasField("alias"):
                node.aliases[metric.alias] = definition
            if not metric.name.startswith(CONTROL):
                node.signals[device].add(definition.signal)
                self._reading(definition, metric, payload, arrival_ns, out)

    def _data(
        self,
        name: str,
        device: str | None,
        node: Node,
        payload: Payload,
        arrival_ns: int,
        out: Outcome,
    ) -> None:
        for metric in payload.metrics:
            if metric.HasField("alias") and not metric.name:
                definition = node.aliases.get(metric.alias)
            else:
                definition = node.names.get((device, metric.name))
            if definition is None:
                which = metric.name or f"alias {metric.alias}"
                out.problems.append(f"{name}: metric {which} was not in a birth")
                out.rebirth = f"unknown metric {which} from {name}"
                continue
            if not metric.name.startswith(CONTROL):
                self._reading(definition, metric, payload, arrival_ns, out)

    def _reading(
        self,
        definition: Definition,
        metric: Metric,
        payload: Payload,
        arrival_ns: int,
        out: Outcome,
    ) -> None:
        datatype = metric.datatype if metric.HasField("datatype") else definition.datatype
        t = _time(payload, metric, arrival_ns)
        if metric.is_null:
            out.readings.append((definition.signal, t, math.nan, Quality.BAD))
            return
        value = number(metric, datatype)
        if value is None:
            out.non_numeric += 1  # strings, data sets, templates: not a reading
            return
        out.readings.append((definition.signal, t, value, quality(metric)))


def _time(payload: Payload, metric: Metric | None, arrival_ns: int) -> int:
    if metric is not None and metric.HasField("timestamp"):
        return int(metric.timestamp) * NS_PER_MS
    if payload.HasField("timestamp"):
        return int(payload.timestamp) * NS_PER_MS
    return arrival_ns
