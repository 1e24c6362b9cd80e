"""The `sparkplug` source on a real mosquitto, fed by a test edge node that writes its payloads
with the schema compiled in the test: names and values from births and data by alias, a seq
gap and data before a birth ask for a rebirth, deaths mark signals bad, junk is reported."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.sparkplug.config import SparkplugSourceConfig
from services.sparkplug.service import main
from shared.config import validate
from shared.messages import Quality, ReadingBatch
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.sparkplug.conftest import Schema

GROUP = "plant"
T_MS = 1_700_000_000_000


class EdgeNode:
    """A Sparkplug edge node as a plant would run it, publishing through the probe."""

    def __init__(self, probe: Probe, spb: Schema, node: str = "edge1") -> None:
        self.probe, self.spb, self.node = probe, spb, node
        self.seq = 0

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"spBv1.0/{GROUP}/{kind}/{self.node}"
        return base if device is None else f"{base}/{device}"

    def payload(self, metrics: list[dict[str, Any]], seq: int | None) -> bytes:
        p = self.spb.Payload(timestamp=T_MS)
        if seq is not None:
            p.seq = seq
        for m in metrics:
            fields = {k: v for k, v in m.items() if k != "type"}
            if "type" in m:
                fields["datatype"] = self.spb.types[m["type"]]
            p.metrics.add(**fields)
        data: bytes = p.SerializeToString()
        return data

    async def send(
        self, kind: str, metrics: list[dict[str, Any]], device: str | None = None, seq: Any = ...
    ) -> None:
        if seq is ...:
            seq = self.seq
            self.seq = (self.seq + 1) % 256
        await self.probe.publish_raw(self.topic(kind, device), self.payload(metrics, seq), qos=1)

    async def nbirth(self, bdseq: int, metrics: list[dict[str, Any]]) -> None:
        self.seq = 0
        node = [{"name": "bdSeq", "type": "Int64", "long_value": bdseq}]
        control = {"name": "Node Control/Rebirth", "alias": 0, "type": "Boolean"}
        await self.send("NBIRTH", [*node, {**control, "boolean_value": False}, *metrics])

    async def ndeath(self, bdseq: int) -> None:  # what the broker sends as the node's will
        await self.send(
            "NDEATH", [{"name": "bdSeq", "type": "Int64", "long_value": bdseq}], seq=None
        )


@pytest.fixture
async def source(base_config: dict[str, Any], probe: Probe) -> AsyncIterator[Topics]:
    config = validate(
        SparkplugSourceConfig,
        {**base_config, "instance": "sparkplug-spb", "source": "spb", "group_id": GROUP},
        "test",
    )
    topics = Topics(config.site)
    await probe.subscribe(topics.status("sparkplug-spb"))
    await probe.subscribe(topics.raw("spb"))
    await probe.subscribe(topics.errors("sparkplug-spb"))
    await probe.subscribe(f"spBv1.0/{GROUP}/NCMD/+", qos=0)
    async with running(main(config)):
        await probe.wait_for(topics.status("sparkplug-spb"), lambda s: s["state"] == "online")
        yield topics


def readings(probe: Probe, topics: Topics) -> dict[str, list[tuple[int, float, int]]]:
    """Signal -> (t, value, quality) of every reading published, in order."""
    out: dict[str, list[tuple[int, float, int]]] = {}
    for wire in probe.decoded(topics.raw("spb")):
        b = ReadingBatch.from_wire(wire)
        for t, s, v, q in zip(
            b.t.tolist(), b.sig.tolist(), b.value.tolist(), b.q.tolist(), strict=True
        ):
            out.setdefault(b.signals[s], []).append((t, v, q))
    return out


async def until_reading(probe: Probe, topics: Topics, signal: str, count: int = 1) -> list[Any]:
    await probe.wait_until(lambda: len(readings(probe, topics).get(signal, [])) >= count)
    return readings(probe, topics)[signal]


def rebirths(probe: Probe, spb: Schema, node: str) -> list[Any]:
    return [spb.decode(m.payload) for m in probe.received(f"spBv1.0/{GROUP}/NCMD/{node}")]


async def test_births_name_signals_and_data_arrives_by_alias(
    source: Topics, probe: Probe, spb: Schema
) -> None:
    edge = EdgeNode(probe, spb)
    await edge.nbirth(
        7,
        [
            {"name": "Temperature", "alias": 1, "type": "Double", "double_value": 21.5},
            {"name": "Mode", "alias": 2, "type": "String", "string_value": "auto"},
        ],
    )
    assert await until_reading(probe, source, "edge1/Temperature") == [
        (T_MS * 1_000_000, 21.5, Quality.GOOD)
    ]
    await edge.send(
        "DBIRTH",
        [
            {"name": "Pressure", "alias": 3, "type": "Float", "float_value": 1.25},
            {"name": "Running", "alias": 4, "type": "Boolean", "boolean_value": True},
            {"name": "Count", "alias": 5, "type": "Int32", "int_value": (-3) & 0xFFFFFFFF},
        ],
        device="pump1",
    )
    assert (await until_reading(probe, source, "edge1/pump1/Count"))[0][1] == -3.0
    got = readings(probe, source)
    assert got["edge1/pump1/Pressure"][0][1] == 1.25
    assert got["edge1/pump1/Running"][0][1] == 1.0
    # data by alias only, with the metric's own timestamp; a null is a bad reading
    await edge.send(
        "DDATA", [{"alias": 3, "timestamp": T_MS + 5, "float_value": 2.5}], device="pump1"
    )
    await edge.send("NDATA", [{"alias": 1, "is_null": True}])
    assert (await until_reading(probe, source, "edge1/pump1/Pressure", 2))[1] == (
        (T_MS + 5) * 1_000_000,
        2.5,
        Quality.GOOD,
    )
    (_, value, q) = (await until_reading(probe, source, "edge1/Temperature", 2))[1]
    assert math.isnan(value) and q == Quality.BAD
    assert "edge1/Mode" not in readings(probe, source)  # text is no reading
    assert not rebirths(probe, spb, "edge1")  # every seq was in order


async def test_a_seq_gap_and_data_before_a_birth_ask_for_a_rebirth(
    source: Topics, probe: Probe, spb: Schema
) -> None:
    edge = EdgeNode(probe, spb)
    await edge.nbirth(0, [{"name": "Level", "alias": 1, "type": "Double", "double_value": 1.0}])
    await until_reading(probe, source, "edge1/Level")
    await edge.send("NDATA", [{"alias": 1, "double_value": 2.0}], seq=5)  # 1 … 4 were lost
    await probe.wait_until(lambda: bool(rebirths(probe, spb, "edge1")))
    (command,) = rebirths(probe, spb, "edge1")
    (metric,) = command.metrics
    assert metric.name == "Node Control/Rebirth" and metric.boolean_value is True
    assert metric.datatype == spb.types["Boolean"]
    assert (await until_reading(probe, source, "edge1/Level", 2))[1][1] == 2.0  # still read

    stranger = EdgeNode(probe, spb, "edge2")  # its birth came before the source started
    await stranger.send("NDATA", [{"alias": 1, "double_value": 3.0}], seq=9)
    await probe.wait_until(lambda: bool(rebirths(probe, spb, "edge2")))
    assert "edge2/Level" not in readings(probe, source)


async def test_deaths_mark_signals_bad_and_a_stale_will_is_ignored(
    source: Topics, probe: Probe, spb: Schema
) -> None:
    edge = EdgeNode(probe, spb)
    await edge.nbirth(3, [{"name": "Speed", "alias": 1, "type": "Double", "double_value": 9.0}])
    await edge.send(
        "DBIRTH", [{"name": "Flow", "alias": 2, "type": "Double", "double_value": 4.0}], "pump1"
    )
    await until_reading(probe, source, "edge1/pump1/Flow")
    await edge.send("DDEATH", [], device="pump1")
    (_, value, q) = (await until_reading(probe, source, "edge1/pump1/Flow", 2))[1]
    assert math.isnan(value) and q == Quality.BAD
    assert len(readings(probe, source)["edge1/Speed"]) == 1  # the node lives on

    await edge.ndeath(2)  # the will of an earlier session: not this one's death
    await edge.send("NDATA", [{"alias": 1, "double_value": 10.0}])
    assert (await until_reading(probe, source, "edge1/Speed", 2))[1][2] == Quality.GOOD
    await edge.ndeath(3)
    (_, value, q) = (await until_reading(probe, source, "edge1/Speed", 3))[2]
    assert math.isnan(value) and q == Quality.BAD
    assert readings(probe, source)["edge1/pump1/Flow"][-1][2] == Quality.BAD
    status = await probe.wait_for(
        source.status("sparkplug-spb"),
        lambda s: s["health"].get("sparkplug", {}).get("stale_deaths") == 1,
    )
    assert status[0]["health"]["sparkplug"]["nodes_online"] == 0


async def test_junk_is_reported_and_the_source_goes_on(
    source: Topics, probe: Probe, spb: Schema
) -> None:
    await probe.publish_raw(f"spBv1.0/{GROUP}/NDATA/edge1", b"\xff\xfe junk", qos=1)
    reports = await probe.wait_for(source.errors("sparkplug-spb"))
    assert "not a Sparkplug B payload" in reports[0]["reason"]
    edge = EdgeNode(probe, spb)
    await edge.nbirth(0, [{"name": "Ok", "alias": 1, "type": "Double", "double_value": 1.0}])
    await until_reading(probe, source, "edge1/Ok")
