"""inference: run a flow's ONNX model on its samples and publish the results.

`edgefleet run inference --config FILE`, one instance per flow. Reads `ef/{site}/samples/{flow}`,
publishes one ResultBatch per model run on `ef/{site}/results/{flow}`. Malformed samples go to
the errors topic (through the runtime); a batch lost to a failing script or model is reported
there too, and the service goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.inference.batching import MicroBatcher, Pending, Rows
from services.inference.engine import Engine, Outcome, build_engine
from services.inference.settings import InferenceSettings
from shared import codec
from shared.config import ServiceConfig
from shared.errors import PayloadError
from shared.messages import SampleBatch, now_ns
from shared.mqtt import Received
from shared.runtime import Runtime

log = logging.getLogger(__name__)

NAME = "inference"


class InferenceConfig(ServiceConfig, InferenceSettings):
    """The shared service keys (site, instance, broker, timings) plus the flow's settings."""

    publish_qos: int = 1


Config = InferenceConfig


class Inference:
    def __init__(self, rt: Runtime, config: InferenceConfig, engine: Engine) -> None:
        self.rt = rt
        self.config = config
        self.engine = engine
        self.batcher = MicroBatcher(config.max_batch, config.max_queue, config.settle_passes)
        self.results_topic = rt.topics.results(config.flow)
        self.offloaded = 0

    async def start(self) -> None:
        await self.rt.subscribe(self.rt.topics.samples(self.config.flow), self.handle)
        self.rt.add_health("inference", self.health)

    def health(self) -> dict[str, Any]:
        ref = self.engine.model.ref
        return {
            "model": {"name": ref.name, "version": ref.version, "sha256": ref.sha256},
            "queued": self.batcher.qsize(),
            "offloaded_runs": self.offloaded,
            **self.engine.stats.as_dict(),
        }

    async def handle(self, message: Received) -> None:
        """Decode and check cheaply; what does not fit raises PayloadError (the runtime reports)."""
        arrival = now_ns()
        batch = SampleBatch.from_wire(codec.decode(message.payload, message.content_type))
        self.check(batch)
        # Waits while max_queue messages are queued: a slow model slows reading from the broker.
        await self.batcher.put(Pending(batch, arrival))

    def check(self, batch: SampleBatch) -> None:
        cfg, features = self.config, self.engine.features
        if batch.flow != cfg.flow:
            raise PayloadError(f"samples of flow {batch.flow!r} on the topic of {cfg.flow!r}")
        if batch.features != features:
            raise PayloadError(
                f"samples carry features {batch.features}; the model takes {features}"
            )
        want = 2 if cfg.window == 1 else 3
        if batch.x.ndim != want or (want == 3 and batch.x.shape[1] != cfg.window):
            shape = "[N, F]" if want == 2 else f"[N, {cfg.window}, F]"
            raise PayloadError(
                f"samples have shape {batch.x.shape}; the flow's window needs {shape}"
            )

    async def infer_loop(self) -> None:
        while True:
            rows = await self.batcher.next()
            await self.publish(await self.run(rows))

    async def run(self, rows: Rows) -> Outcome:
        # Inline, a run costs the event loop nothing extra (the thread hop costs ~50-100 µs);
        # a slow model goes to a thread so reading and publishing continue while it runs
        # (onnxruntime releases the GIL). The last run's time decides, so no guess is needed.
        if self.engine.stats.last_run_us > self.config.offload_above_us:
            self.offloaded += 1
            return await asyncio.to_thread(self.engine.infer, rows)
        return self.engine.infer(rows)

    async def publish(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            self.rt.health.errors += 1
            self.rt.reject(outcome.error, count=False)
        if outcome.result is not None:
            wire = outcome.result.to_wire(self.config.encoding)
            await self.rt.publish(
                self.results_topic, wire, encoding=self.config.encoding, qos=self.config.publish_qos
            )


async def main(config: InferenceConfig) -> None:
    # The model is loaded and checked before connecting: a model that does not fit the flow
    # stops the instance with the reason, and never announces itself online.
    config = config.resolve_paths(config.source_dir)
    engine = await asyncio.to_thread(build_engine, config)
    async with Runtime(NAME, config) as rt:
        service = Inference(rt, config, engine)
        await service.start()
        await rt.serve(service.infer_loop)
