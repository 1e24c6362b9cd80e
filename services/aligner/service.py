"""aligner: one flow's raw streams in, fixed-period samples out on `ef/{site}/samples/{flow}`.

`edgefleet run aligner --config FILE`, one instance per flow. The raw handler only files
readings (a few numpy calls) and wakes the emitter; one `emit_loop` decides samples, either when
the handler says every feature can be decided or when the next sample's deadline passes on the
local clock, and publishes them in time order. Semantics: docs/aligner.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import numpy as np

from services.aligner.alignment import Aligner
from services.aligner.config import AlignerConfig, FlowAlign
from shared import codec
from shared.codec import Encoding
from shared.errors import PayloadError, TopicError
from shared.health import HealthModel
from shared.messages import ReadingBatch, now_ns
from shared.mqtt import Received
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.topics import parse

NAME = "aligner"
log = logging.getLogger(__name__)


class AlignerHealth(HealthModel):
    flow: str
    batches: int
    readings: int
    late: int
    late_by_source: dict[str, int]
    ahead: int
    ahead_by_source: dict[str, int]
    ahead_skew_ms: dict[str, float]
    duplicate: int
    unusable: int
    grid_points: int
    incomplete: int
    skipped_grid: int
    published_samples: int
    held_readings: int
    emitted_until_ns: int | None
    emit_delay_ms: dict[str, float]  # p50, p99 of the last 1,024 publications


class AlignerService(Service[AlignerConfig]):
    health_section = "aligner"
    # Read per batch, so a newer retained config changes them in place; the flow (grid,
    # features, delays) restarts the instance, which starts its grid afresh.
    live_keys = Service.live_keys | {"max_ahead_ms", "use_complete", "publish_qos"}

    def __init__(self, rt: Runtime, config: AlignerConfig, flow: FlowAlign) -> None:
        super().__init__(rt, config)
        self.flow = flow
        self.engine = Aligner(
            flow.name, flow.align, max_ahead_ns=int(config.max_ahead_ms * 1_000_000)
        )
        self.topic = rt.topics.samples(flow.name)
        self.encoding = Encoding(flow.align.encoding)
        self._wake = asyncio.Event()
        self._timer_armed = False  # the emitter sleeps until the next deadline, not forever
        self._cause_ns: int | None = None  # when what made samples due happened
        self._delays_ms: deque[float] = deque(maxlen=1024)
        self.published_samples = 0

    async def start(self) -> None:
        for source in self.flow.align.sources:
            await self.rt.subscribe(
                self.rt.topics.raw(source), self.on_raw, self.config.subscribe_qos
            )
        log.info(
            "aligner for flow %s: %d features from %s, samples on %s",
            self.flow.name,
            len(self.engine.features),
            ", ".join(self.flow.align.sources),
            self.topic,
        )

    def loops(self) -> dict[str, Loop]:
        return {"emit_loop": self.emit_loop}

    async def reconfigure(self, new: AlignerConfig, changed: set[str]) -> None:
        self.engine.max_ahead_ns = int(new.max_ahead_ms * 1_000_000)
        await super().reconfigure(new, changed)

    def health(self) -> AlignerHealth:
        st = self.engine.stats
        return AlignerHealth(
            flow=self.flow.name,
            batches=st.batches,
            readings=st.readings,
            late=st.late,
            late_by_source=dict(st.late_by_source),
            ahead=st.ahead,
            ahead_by_source=dict(st.ahead_by_source),
            ahead_skew_ms=dict(st.ahead_skew_ms),
            duplicate=st.duplicate,
            unusable=st.unusable,
            grid_points=st.samples,
            incomplete=st.incomplete,
            skipped_grid=st.skipped_grid,
            published_samples=self.published_samples,
            held_readings=self.engine.held,
            emitted_until_ns=self.engine.emitted_until_ns,
            emit_delay_ms=self._delay_summary(),
        )

    def _delay_summary(self) -> dict[str, float]:
        """From the arrival of the batch that made samples due (or their deadline) to the
        publish call's return, over the last 1,024 publications."""
        if not self._delays_ms:
            return {}
        p50, p99 = np.percentile(np.fromiter(self._delays_ms, float), [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}

    async def on_raw(self, message: Received) -> None:
        """File one ReadingBatch; what does not fit raises PayloadError (the runtime reports
        it on the errors topic and goes on)."""
        arrival = now_ns()
        try:
            source = parse(message.topic).name
        except TopicError as exc:
            raise PayloadError(str(exc)) from None
        batch = ReadingBatch.from_wire(codec.decode(message.payload, message.content_type))
        if batch.source != source:
            raise PayloadError(
                f"batch names source {batch.source!r} but came on the raw topic of {source!r}"
            )
        if not self.config.use_complete:
            batch.complete_ns = None
        counts = self.engine.ingest(batch, arrival)
        if counts.late:  # counted in the aligner's health, reported here
            self.rt.errors.report(
                f"late readings dropped: {counts.late} from {source} at or before the last "
                f"sample time already emitted ({self.engine.emitted_until_ns} ns)",
                message,
            )
        if counts.ahead:  # counted in the aligner's health, reported here
            self.rt.errors.report(
                f"readings from {source} dropped: {counts.ahead} stamped up to "
                f"{counts.ahead_ms / 1000:.1f} s ahead of the local clock (max_ahead_ms "
                f"{self.config.max_ahead_ms:g}); its clock runs ahead, set it right",
                message,
            )
        if len(batch):
            self.rt.health.note_clock(source, int(batch.t.max()), batch.received_ns or arrival)
        # Wake the emitter only when a sample is due (a task switch per message is not free),
        # or when it must learn its first deadline.
        if self.engine.due(arrival):
            if self._cause_ns is None:
                self._cause_ns = arrival
            self._wake.set()
        elif not self._timer_armed:
            self._wake.set()

    async def emit_loop(self) -> None:
        """Publish samples as they become decidable; sleep until the next deadline otherwise."""
        while True:
            self._wake.clear()
            cause, self._cause_ns = self._cause_ns, None
            if await self.publish_due(now_ns()) and cause is not None:
                self._delays_ms.append((now_ns() - cause) / 1e6)
            deadline = self.engine.next_deadline_ns()
            self._timer_armed = deadline is not None
            timeout = None if deadline is None else max(0.0, (deadline - now_ns()) / 1e9)
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self._cause_ns = deadline

    async def publish_due(self, now: int) -> int:
        """Emit and publish everything due at `now`; return how many samples went out."""
        published = 0
        while True:
            before = self.engine.emitted_until_ns
            samples = self.engine.emit(now)
            if samples is not None:
                # Encoded once: arrays go out as raw little-endian bytes.
                await self.rt.publish(
                    self.topic,
                    samples.to_wire(self.encoding),
                    encoding=self.encoding,
                    qos=self.config.publish_qos,
                )
                published += len(samples)
            if self.engine.emitted_until_ns == before:
                self.published_samples += published
                return published


def check(config: AlignerConfig) -> None:
    """What `--check` should validate beyond the config model: the flow file."""
    config.flow_spec()


async def main(config: AlignerConfig) -> None:
    flow = config.flow_spec()  # before connecting: a bad flow file stops the start
    await run(NAME, config, lambda rt: AlignerService(rt, config, flow))


SPEC = ServiceSpec(NAME, AlignerConfig, main, check, service=AlignerService)
