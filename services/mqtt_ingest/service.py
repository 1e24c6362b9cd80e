"""mqtt-ingest: read other systems' topics (JSON or msgpack) and publish reading batches.

`edgefleet run mqtt-ingest --config FILE`. One incoming message becomes one ReadingBatch on
`ef/{site}/raw/{source}`; fields that cannot be read are reported, the rest still published.
"""

from __future__ import annotations

from services.mqtt_ingest.config import IngestConfig, Input
from services.mqtt_ingest.mapping import Extractor
from shared import codec
from shared.codec import JSON, MSGPACK
from shared.health import HealthModel
from shared.messages import now_ns
from shared.mqtt import Handler, Received
from shared.service import Service, ServiceSpec, run

NAME = "mqtt-ingest"

_FORCED = {"json": JSON, "msgpack": MSGPACK}


class IngestHealth(HealthModel):
    readings: int


class MqttIngestService(Service[IngestConfig]):
    health_section = "ingest"
    readings = 0

    async def start(self) -> None:
        for spec in self.config.inputs:
            await self.rt.subscribe(spec.topic, self._handler(spec))

    def health(self) -> IngestHealth:
        return IngestHealth(readings=self.readings)

    def _handler(self, spec: Input) -> Handler:
        extractor = Extractor(spec)
        topic = self.rt.topics.raw(spec.source)
        forced = _FORCED.get(spec.format)

        async def handle(message: Received) -> None:
            arrival = now_ns()
            data = codec.decode(message.payload, forced or message.content_type)
            batch, problems = extractor.extract(data, arrival)
            for problem in problems:
                self.rt.reject(problem, message)
            if spec.timestamp.path is not None:
                self.rt.health.note_clock(spec.source, int(batch.t.max()), arrival)
            await self.rt.publish(topic, batch.to_wire(), qos=self.config.publish_qos)
            self.readings += len(batch)

        return handle


async def main(config: IngestConfig) -> None:
    await run(NAME, config, lambda rt: MqttIngestService(rt, config))


SPEC = ServiceSpec(NAME, IngestConfig, main)
