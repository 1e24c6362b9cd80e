"""OPC UA adapter: data-change subscriptions gathered into reading batches, a supervised session
that rebuilds itself, write requests served through the same session.

`edgefleet run opcua --config FILE`. Readings go to `ef/{site}/raw/{source}` (one batch per
publish), write requests are served on `ef/{site}/cmd/{source}`, session trouble is reported on
`ef/{site}/errors/{instance}` and in the status under `opcua`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.opcua.config import OpcUaConfig
from services.opcua.session import Session
from services.opcua.writes import Writer
from shared.messages import ErrorReport, Quality, ReadingBatch
from shared.runtime import Runtime

NAME = "opcua"
Config = OpcUaConfig


class OpcuaService:
    def __init__(self, rt: Runtime, config: OpcUaConfig) -> None:
        self.rt, self.config = rt, config
        self.topic = rt.topics.raw(config.source)
        self.session = Session(config, self.publish, self.report)
        self.writer = Writer(rt, config, self.session)

    async def publish(self, batch: ReadingBatch) -> None:
        good = batch.q == Quality.GOOD
        if batch.received_ns is not None and good.any():  # server clock vs ours, for the status
            self.rt.health.note_clock(
                self.config.source, int(batch.t[good].max()), batch.received_ns
            )
        await self.rt.publish(self.topic, batch.to_wire(), qos=self.config.publish_qos)

    async def report(self, reason: str) -> None:
        report = ErrorReport(instance=self.rt.instance, reason=reason)
        await self.rt.publish(self.rt.topics.errors(self.rt.instance), report)

    def health(self) -> dict[str, Any]:
        h = self.session.health
        return {
            "endpoint": self.config.endpoint,
            "security": f"{self.config.security.policy}/{self.config.security.mode}",
            "connected": h.connected,
            "state": h.state,
            "sessions": h.sessions,
            "last_reason": h.last_reason,
            "readings": h.readings,
            "bad": h.bad,
            "publishes": h.publishes,
            "keepalives": h.keepalives,
            "stalls": h.stalls,
            "failed_nodes": dict(h.failed_nodes),
            "revised": dict(h.revised),
            "texts": dict(self.session.gatherer.texts),
            "duplicates": self.session.gatherer.duplicates,
            "writes": self.writer.count,
        }

    async def session_loop(self) -> None:
        try:
            await self.session.run()
        finally:
            await asyncio.shield(self.session.close())


async def main(config: OpcUaConfig) -> None:
    async with Runtime(NAME, config) as rt:
        adapter = OpcuaService(rt, config)
        rt.add_health("opcua", adapter.health)
        await rt.subscribe(rt.topics.cmd(config.source), adapter.writer.handle)
        await rt.serve(adapter.session_loop)
