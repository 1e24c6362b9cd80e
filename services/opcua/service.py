"""OPC UA adapter: data-change subscriptions gathered into reading batches, a supervised session
that rebuilds itself, write requests served through the same session.

`edgefleet run opcua --config FILE`. Readings go to `ef/{site}/raw/{source}` (one batch per
publish), write requests are served on `ef/{site}/cmd/{source}`, session trouble is reported on
`ef/{site}/errors/{instance}` and in the status under `opcua`.
"""

from __future__ import annotations

import asyncio

from services.opcua.config import OpcUaConfig
from services.opcua.session import Session
from services.opcua.writes import Writer
from shared.health import HealthModel
from shared.messages import Quality, ReadingBatch
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

NAME = "opcua"


class OpcUaHealth(HealthModel):
    endpoint: str
    security: str  # policy/mode
    connected: bool
    state: str
    sessions: int
    last_reason: str | None
    readings: int
    bad: int
    publishes: int
    keepalives: int
    stalls: int
    failed_nodes: dict[str, str]
    revised: dict[str, float]
    texts: dict[str, str]
    duplicates: int
    writes: int


class OpcuaService(Service[OpcUaConfig]):
    health_section = "opcua"

    def __init__(self, rt: Runtime, config: OpcUaConfig) -> None:
        super().__init__(rt, config)
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
        # The session says it once per kind of trouble; reasons that share their start (the
        # endpoint) are different troubles, so the whole reason is the limiter's key.
        self.rt.errors.report(reason, key=reason)

    async def start(self) -> None:
        await self.writer.start()

    def loops(self) -> dict[str, Loop]:
        return {"session_loop": self.session_loop}

    def health(self) -> OpcUaHealth:
        h = self.session.health
        return OpcUaHealth(
            endpoint=self.config.endpoint,
            security=f"{self.config.security.policy}/{self.config.security.mode}",
            connected=h.connected,
            state=h.state,
            sessions=h.sessions,
            last_reason=h.last_reason,
            readings=h.readings,
            bad=h.bad,
            publishes=h.publishes,
            keepalives=h.keepalives,
            stalls=h.stalls,
            failed_nodes=dict(h.failed_nodes),
            revised=dict(h.revised),
            texts=dict(self.session.gatherer.texts),
            duplicates=self.session.gatherer.duplicates,
            writes=self.writer.count,
        )

    async def session_loop(self) -> None:
        try:
            await self.session.run()
        finally:
            await asyncio.shield(self.session.close())


async def main(config: OpcUaConfig) -> None:
    await run(NAME, config, lambda rt: OpcuaService(rt, config))


SPEC = ServiceSpec(NAME, OpcUaConfig, main, service=OpcuaService)
