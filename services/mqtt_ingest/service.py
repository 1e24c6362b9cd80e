"""mqtt-ingest: read other systems' topics (JSON or msgpack) and publish reading batches.

`edgefleet run mqtt-ingest --config FILE`. Readings of one source from many messages are
coalesced into one ReadingBatch per `coalesce_ms` tick on `ef/{site}/raw/{source}`; what cannot
be read (a topic without a rule, a payload that does not parse, a value that is not a number) is
counted and reported on the errors topic, and the rest still published.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from services.mqtt_ingest.coalesce import SourceBuffer
from services.mqtt_ingest.config import IngestConfig, Input
from services.mqtt_ingest.mapping import Extractor
from services.mqtt_ingest.per_topic import TopicNamer, ValueReader
from shared import clock, codec
from shared.coalesce import Coalescer
from shared.codec import JSON, MSGPACK
from shared.health import HealthModel
from shared.mqtt import Received
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

NAME = "mqtt-ingest"

_FORCED = {"json": JSON, "msgpack": MSGPACK}
MAX_PUBLISHING = 100  # batches published and not yet acknowledged
# a JSON number exactly as RFC 8259 writes it: float() reads it as json.loads does, 4× faster
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def decode(payload: bytes, content_type: str | None, forced: str | None) -> Any:
    """Gateways often send a bare `23.4` without a content type: ASCII text is JSON then."""
    if forced is None and content_type is None and payload.isascii():
        return codec.decode(payload, JSON)
    return codec.decode(payload, forced or content_type)


def decode_value(payload: bytes, content_type: str | None, forced: str | None) -> Any:
    """`decode` for one value per message: a bare JSON number, the gateway's common case, is
    read without the JSON parser."""
    if _JSON_NUMBER.fullmatch(payload) and (forced or content_type or JSON) == JSON:
        return float(payload)
    return decode(payload, content_type, forced)


class IngestHealth(HealthModel):
    readings: int
    batches: int


class MqttIngestService(Service[IngestConfig]):
    health_section = "ingest"

    def __init__(self, rt: Runtime, config: IngestConfig) -> None:
        super().__init__(rt, config)
        self.readings = 0
        self.batches = 0
        self.buffers: dict[str, SourceBuffer] = {}
        self._coalescer = Coalescer(config.coalesce_ms / 1000)
        self._publishing: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        for spec in self.config.inputs:
            self.buffers.setdefault(spec.source, SourceBuffer(spec.source))
            handler = self._per_topic(spec) if not spec.signals else self._fields(spec)
            await self.rt.subscribe(spec.topic, handler)
        self.rt.on_stop(self.drain)

    def loops(self) -> dict[str, Loop]:
        return {"coalesce_loop": self.coalesce_loop}

    def health(self) -> IngestHealth:
        return IngestHealth(readings=self.readings, batches=self.batches)

    def _fields(self, spec: Input) -> Callable[[Received], Awaitable[None]]:
        extractor = Extractor(spec)
        forced = _FORCED.get(spec.format)
        buffer = self.buffers[spec.source]

        async def handle(message: Received) -> None:
            arrival = clock.now_ns()
            data = decode(message.payload, message.content_type, forced)
            batch, problems = extractor.extract(data, arrival)
            for problem in problems:
                self.rt.reject(problem, message)
            if spec.timestamp.path is not None:
                self.rt.health.note_clock(spec.source, int(batch.t.max()), arrival)
            buffer.add_batch(batch)
            self._coalescer.mark()

        return handle

    def _per_topic(self, spec: Input) -> Callable[[Received], Awaitable[None]]:
        namer, reader = TopicNamer(spec), ValueReader(spec)
        forced = _FORCED.get(spec.format)
        buffer = self.buffers[spec.source]
        device_clock = spec.timestamp.path is not None

        async def handle(message: Received) -> None:
            arrival = clock.now_ns()
            name = namer.name(message.topic)
            t, value, q = reader.read(
                decode_value(message.payload, message.content_type, forced), arrival
            )
            if device_clock and t != arrival:
                self.rt.health.note_clock(spec.source, t, arrival)
            buffer.add(name, t, value, q, arrival)
            self._coalescer.mark()

        return handle

    async def coalesce_loop(self) -> None:
        """Wait for a first reading, let the tick fill up, publish one batch per source."""
        await self._coalescer.run(self.flush)

    async def flush(self) -> None:
        """Publish what the buffers hold. The PUBACK is not awaited here: on a busy connection
        it comes behind the incoming stream, and the next tick must not wait for it."""
        self._coalescer.clear()
        for source, buffer in self.buffers.items():
            if not buffer:
                continue
            batch = buffer.take()
            publish = self.rt.publish(
                self.rt.topics.raw(source), batch.to_wire(), qos=self.config.publish_qos
            )
            task = asyncio.get_running_loop().create_task(publish)
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)
            self.readings += len(batch)
            self.batches += 1
        if len(self._publishing) > MAX_PUBLISHING:  # the broker is slow: slow down with it
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)

    async def drain(self) -> None:
        """On stop: what was read goes out before the connection closes."""
        await self.flush()
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=2.0)


async def main(config: IngestConfig) -> None:
    await run(NAME, config, lambda rt: MqttIngestService(rt, config))


SPEC = ServiceSpec(NAME, IngestConfig, main, service=MqttIngestService)
