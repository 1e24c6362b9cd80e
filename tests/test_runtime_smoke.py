from __future__ import annotations

from typing import Any

from services.mqtt_ingest.service import IngestConfig, main
from shared.config import validate
from shared.topics import Topics
from tests.helpers import Probe, running


async def test_ingest_publishes_readings(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    cfg = validate(
        IngestConfig,
        {
            **base_config,
            "instance": "ingest1",
            "inputs": [
                {
                    "topic": f"{site}-ext/+/telemetry",
                    "source": "gw",
                    "timestamp": {"path": "ts"},
                    "signals": [{"name": "temp", "path": "temp"}],
                }
            ],
        },
        "test",
    )
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with running(main(cfg)):
        await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
        await probe.publish(f"{site}-ext/p1/telemetry", {"ts": 1700000000000, "temp": 21.5}, "json")
        [raw] = await probe.wait_for(topics.raw("gw"))
        assert raw["value"].tolist() == [21.5]
