"""`Runtime.on_config`: retained config updates against a real mosquitto."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import ServiceConfig, validate
from shared.messages import ConfigUpdate
from shared.runtime import Runtime
from shared.topics import Topics
from tests.helpers import Probe


async def test_newer_revisions_only_reach_the_service(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    topics = Topics(site)
    config = validate(ServiceConfig, {**base_config, "instance": "svc", "revision": 2}, "test")
    rt = Runtime("test", config)
    got: list[tuple[dict[str, Any], int]] = []
    arrived = asyncio.Event()

    async def apply(new: dict[str, Any], revision: int) -> None:
        got.append((new, revision))
        rt.revision = revision  # applied: the status names it
        arrived.set()

    await probe.subscribe(topics.everything())
    topic = topics.config("svc")
    # Retained before the service starts: an older revision, then the topic's last word.
    await probe.publish(
        topic, ConfigUpdate(instance="svc", revision=1, config={}).to_wire(), qos=1, retain=True
    )
    await rt.on_config(apply)
    server = asyncio.create_task(rt.serve())
    try:
        await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "online")
        await probe.publish(topic, {"kind": "config", "v": 1, "instance": "svc"}, qos=1)
        await probe.publish(
            topic, ConfigUpdate(instance="other", revision=9, config={}).to_wire(), qos=1
        )
        await probe.wait_for(topics.errors("svc"), count=2)
        await probe.publish(
            topic,
            ConfigUpdate(instance="svc", revision=3, config={"a": 1}).to_wire(),
            qos=1,
            retain=True,
        )
        await asyncio.wait_for(arrived.wait(), 10)
        await probe.publish(  # the same revision again (a reconnect): ignored
            topic, ConfigUpdate(instance="svc", revision=3, config={"a": 2}).to_wire(), qos=1
        )
        await probe.wait_for(topics.status("svc"), lambda s: s["health"].get("revision") == 3)
    finally:
        rt.stop.set()
        await asyncio.wait_for(server, 10)
    assert got == [({"a": 1}, 3)] and rt.revision == 3
    reasons = " | ".join(e["reason"] for e in probe.decoded(topics.errors("svc")))
    assert "revision" in reasons and "'other'" in reasons
