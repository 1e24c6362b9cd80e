"""A plant that already speaks Sparkplug feeds a flow with no glue: a Sparkplug edge node →
the `sparkplug` source → the aligner's samples, the signal named `{source}/{node}/{device}/
{metric}` as the flow file writes it."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.aligner.config import AlignerConfig
from services.aligner.service import main as aligner_main
from services.sparkplug.config import SparkplugSourceConfig
from services.sparkplug.service import main as source_main
from shared.config import validate
from shared.messages import SampleBatch, now_ns
from shared.topics import Kind, Topics
from tests.helpers import Probe, running
from tests.sparkplug.conftest import Schema

GROUP = "plant"


async def test_a_sparkplug_device_metric_is_a_flow_feature(
    base_config: dict[str, Any], probe: Probe, spb: Schema
) -> None:
    source = validate(
        SparkplugSourceConfig,
        {**base_config, "instance": "sparkplug-spb", "source": "spb", "group_id": GROUP},
        "test",
    )
    flow = {
        "name": "f",
        "align": {
            "period_ms": 100,
            "max_delay_ms": 200,
            "features": [
                {"signal": "spb/edge1/pump1/Pressure", "fill": "hold", "max_age_ms": 60_000}
            ],
        },
    }
    aligner = validate(AlignerConfig, {**base_config, "instance": "aligner-f", "flow": flow}, "t")
    topics = Topics(source.site)
    await probe.subscribe(topics.samples("f"))
    await probe.subscribe(topics.all_of(Kind.STATUS))
    async with running(source_main(source)), running(aligner_main(aligner)):
        for instance in ("sparkplug-spb", "aligner-f"):
            await probe.wait_for(topics.status(instance), lambda s: s["state"] == "online")
        t_ms = now_ns() // 1_000_000
        birth = spb.Payload(timestamp=t_ms, seq=0)
        birth.metrics.add(name="bdSeq", datatype=spb.types["Int64"], long_value=0)
        await probe.publish_raw(f"spBv1.0/{GROUP}/NBIRTH/edge1", birth.SerializeToString())
        dbirth = spb.Payload(timestamp=t_ms, seq=1)
        dbirth.metrics.add(name="Pressure", alias=1, datatype=spb.types["Double"], double_value=3.5)
        await probe.publish_raw(f"spBv1.0/{GROUP}/DBIRTH/edge1/pump1", dbirth.SerializeToString())
        samples = await probe.wait_for(
            topics.samples("f"),
            lambda d: bool(np.any(SampleBatch.from_wire(d).x[:, 0] == 3.5)),
            timeout=20,
        )
        assert SampleBatch.from_wire(samples[0]).features == ["spb/edge1/pump1/Pressure"]
