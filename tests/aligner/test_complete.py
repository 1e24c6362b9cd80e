"""Early emission with a slow held signal: the Modbus adapter says "complete up to t" in each
batch, so the aligner need not wait for the slow poll or `max_delay`. Two aligners on the same
raw stream, one taking the marks and one not, give the latency before and after in one run."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.sim.plant import PlantSimulator
from services.aligner.config import AlignerConfig
from services.aligner.service import main as aligner_main
from services.modbus.config import ModbusConfig
from services.modbus.service import main as modbus_main
from shared import codec
from shared.config import validate
from shared.messages import ReadingBatch, SampleBatch
from shared.topics import Topics
from tests.helpers import Probe, running

MS = 1_000_000
MAX_DELAY_MS = 1500


def aligner(base: dict[str, Any], flow: str, use_complete: bool) -> AlignerConfig:
    features = [
        {"signal": "plc1/lamp", "fill": "hold", "max_age_ms": 5000},  # polled every 100 ms
        {"signal": "plc1/speed", "fill": "hold", "max_age_ms": 5000},  # polled every 2 s
    ]
    spec = {"period_ms": 100, "max_delay_ms": MAX_DELAY_MS, "features": features}
    data = {**base, "instance": f"aligner-{flow}", "flow": {"name": flow, "align": spec}}
    return validate(AlignerConfig, {**data, "use_complete": use_complete}, "test")


def modbus(base: dict[str, Any], port: int) -> ModbusConfig:
    blocks = [
        {
            "table": "coil",
            "poll_ms": 100,
            "points": [{"name": "lamp", "address": 0, "type": "bool"}],
        },
        {"table": "holding", "poll_ms": 2000, "points": [{"name": "speed", "address": 0}]},
    ]
    data = {**base, "instance": "modbus-plc1", "source": "plc1", "device": {"port": port}}
    return validate(ModbusConfig, {**data, "blocks": blocks}, "test")


def latencies_ms(probe: Probe, topic: str) -> np.ndarray[Any, Any]:
    """Per sample after the first two messages: its arrival on the local clock minus its
    sample time."""
    out: list[float] = []
    pairs = [(at, m) for at, m in zip(probe.arrived_ns, probe.messages, strict=True)]
    for arrived, message in [(at, m) for at, m in pairs if m.topic == topic][2:]:
        batch = SampleBatch.from_wire(codec.decode(message.payload, message.content_type))
        out.extend(((arrived - batch.t) / MS).tolist())
    return np.asarray(out)


async def test_complete_marks_let_samples_out_without_waiting_for_the_slow_signal(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with (
        PlantSimulator(opcua=False) as sim,
        running(aligner_main(aligner(base_config, "after", True))),
        running(aligner_main(aligner(base_config, "before", False))),
    ):
        for flow in ("after", "before"):
            await probe.wait_for(topics.status(f"aligner-{flow}"), lambda s: s["state"] == "online")
        async with running(modbus_main(modbus(base_config, sim.modbus_port or 0))):
            await probe.wait_for(topics.samples("before"), timeout=15)
            # three slow polls: batches that carry the 2 s group's register (signal 1)
            await probe.wait_for(
                topics.raw("plc1"), lambda b: 1 in b["sig"].tolist(), count=4, timeout=15
            )
    raw = [ReadingBatch.from_wire(d) for d in probe.decoded(topics.raw("plc1"))]
    raw_arrivals = [
        at
        for at, m in zip(probe.arrived_ns, probe.messages, strict=True)
        if m.topic == topics.raw("plc1")
    ]
    assert raw and all(b.complete_ns is not None for b in raw)
    # never past the publish: the mark is a promise about what was sent, not about the future
    assert all((b.complete_ns or 0) <= at for b, at in zip(raw, raw_arrivals, strict=True))
    after = latencies_ms(probe, topics.samples("after"))
    before = latencies_ms(probe, topics.samples("before"))
    p50_a, p99_a = np.percentile(after, [50, 99])
    p50_b, p99_b = np.percentile(before, [50, 99])
    print(
        f"sample latency (arrival - sample time), 100 ms and 2 s polls, max_delay "
        f"{MAX_DELAY_MS} ms: with complete marks p50 {p50_a:.1f} ms p99 {p99_a:.1f} ms "
        f"({len(after)} samples); without p50 {p50_b:.1f} ms p99 {p99_b:.1f} ms ({len(before)})"
    )
    # without the marks, samples after a slow poll wait for max_delay (p50 ~0.9 s, p99 1.5 s)
    assert p50_b > 500 and p99_b > 1300
    # with them, about one fast poll: compared with the run without, and never held for
    # max_delay (a loaded machine stretches both runs alike, so no absolute figure here)
    assert p50_a * 3 < p50_b and p99_a < MAX_DELAY_MS
