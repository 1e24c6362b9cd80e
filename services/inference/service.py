"""inference: run a flow's ONNX model on its samples and publish the results.

`edgefleet run inference --config FILE`, one instance per flow. Reads `ef/{site}/samples/{flow}`,
publishes one ResultBatch per model run on `ef/{site}/results/{flow}`. Malformed samples go to
the errors topic (through the runtime); a batch lost to a failing script or model is reported
there too, and the service goes on.

A newer retained config or a changed model file is swapped in without losing a sample (see
swap.py); a shadow model runs beside the live one on the same samples and publishes on
`ef/{site}/shadow/{flow}`; the status carries each model's health (health.py).

The shadow is off the live path: the live loop hands each batch (after its result is published)
to `shadow_loop` through a bounded queue and goes on; the candidate runs in a worker thread and
its results go out at QoS 0, so neither its run nor its PUBACK wait delays a live batch. When the
candidate cannot keep up, batches are dropped from its queue (counted as `skipped_batches`),
never held back from the live model.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.inference.batching import MicroBatcher, Pending, Rows
from services.inference.candidate import trial_process
from services.inference.config import InferenceConfig, InferenceSettings, ShadowSpec
from services.inference.engine import Engine, RunOutcome, build_engine
from services.inference.health import Agreement, ModelHealth, pick_fields
from services.inference.swap import (
    SwapRequest,
    file_signature,
    live_key,
    prepare,
    shadow_settings,
)
from shared import codec
from shared.errors import ConfigError, ModelError, PayloadError
from shared.health import InferenceHealth, ServedModel, ShadowModel, SwapHealth
from shared.histogram import BATCH_SIZE, LATENCY_SECONDS, RUN_SECONDS, Histogram
from shared.messages import ResultBatch, SampleBatch, now_ns
from shared.mqtt import Received
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

log = logging.getLogger(__name__)

NAME = "inference"


@dataclass
class Serving:
    """One model in service (live or shadow) and what it did recently."""

    engine: Engine
    health: ModelHealth
    spec: dict[str, Any]  # the model spec it came from, as the status shows it
    since_ns: int = field(default_factory=now_ns)

    def report(self) -> dict[str, Any]:
        ref, model = self.engine.model.ref, self.engine.model
        return {
            "name": ref.name,
            "version": ref.version,
            "sha256": ref.sha256,
            "origin": model.origin,
            "classes": model.signature.classes,
            "spec": self.spec,
            "since": self.since_ns,
            "health": self.health.report(),
        }


SHADOW_QUEUE = 64  # batches waiting for the candidate; past it the oldest is dropped


@dataclass(frozen=True)
class ShadowJob:
    """One live batch for the candidate: the samples and the live result to compare with."""

    shadow: Serving
    rows: Rows
    live: ResultBatch | None


@dataclass
class SwapStats:
    done: int = 0
    refused: int = 0
    trying: str | None = None  # the candidate being tried now
    last: dict[str, Any] | None = None  # the last swap: what, when, why
    last_error: str | None = None


class InferenceService(Service[InferenceConfig]):
    health_section = "inference"
    # Swapped in without a restart (swap.py): the live model's keys, the shadow, the per-batch
    # keys. The others (flow, features, window, batching) restart the instance.
    live_keys = Service.live_keys | {
        "model", "outputs", "preprocess", "postprocess", "on_nan", "intra_op_threads", "shadow",
        "encoding", "publish_qos", "offload_above_us",
    }  # fmt: skip

    def __init__(self, rt: Runtime, config: InferenceConfig, engine: Engine) -> None:
        super().__init__(rt, config.model_copy(update={"shadow": None}))  # what runs now
        self.live = self._serving(engine, config.model.model_dump(mode="json"))
        self.shadow: Serving | None = None
        self.agreement: Agreement | None = None
        self.batcher = MicroBatcher(config.max_batch, config.max_queue, config.settle_passes)
        self.results_topic = rt.topics.results(config.flow)
        self.shadow_topic = rt.topics.shadow(config.flow)
        self.offloaded = 0
        # the live model's, since this run started (the Prometheus histograms of the site)
        self.run_seconds = Histogram(RUN_SECONDS)
        self.latency_seconds = Histogram(LATENCY_SECONDS)
        self.batch_size = Histogram(BATCH_SIZE)
        self.swaps = SwapStats()
        self.requests: asyncio.Queue[SwapRequest] = asyncio.Queue()
        self.shadow_queue: asyncio.Queue[ShadowJob] = asyncio.Queue(SHADOW_QUEUE)
        self.shadow_skipped = 0  # batches the candidate did not see: it could not keep up
        self.recent_x: Any = None  # the last samples seen, to try candidates on live data
        self._files: dict[str, tuple[int, int] | None] = {}
        self.trials = trial_process()  # candidates are tried there, one at a time
        if config.shadow is not None:  # tried and loaded like any candidate, once serving
            self.requests.put_nowait(SwapRequest(config, "shadow in the startup config"))

    @property
    def engine(self) -> Engine:
        return self.live.engine

    def _serving(self, engine: Engine, spec: dict[str, Any]) -> Serving:
        model = engine.model
        return Serving(
            engine, ModelHealth(self.config.health_window, engine.features, model.train_stats), spec
        )

    async def start(self) -> None:
        await self.rt.subscribe(self.rt.topics.samples(self.config.flow), self.handle)
        # Started now, it imports onnxruntime while the instance starts, not when a candidate
        # comes; at its nice level that costs the live model nothing either way.
        await self.trials.start()

    async def close(self) -> None:
        await self.trials.close()

    def loops(self) -> dict[str, Loop]:
        return {
            "infer_loop": self.infer_loop,
            "shadow_loop": self.shadow_loop,
            "swap_loop": self.swap_loop,
            "watch_loop": self.watch_loop,
        }

    def health(self) -> InferenceHealth:
        stats = self.engine.stats
        live = self.live.report()
        live["health"]["rejected"] = {
            "malformed_messages": self.rt.health.rejected,
            "skipped_nan": stats.skipped_nan,
            "nan_outputs": stats.nan_outputs,
            "failed_samples": stats.failed_samples,
        }
        shadow = None
        if self.shadow is not None:
            report = self.shadow.report()
            report["health"]["rejected"] = {
                "skipped_nan": self.shadow.engine.stats.skipped_nan,
                "nan_outputs": self.shadow.engine.stats.nan_outputs,
                "failed_samples": self.shadow.engine.stats.failed_samples,
            }
            report["agreement"] = self.agreement.report() if self.agreement else None
            report["skipped_batches"] = self.shadow_skipped
            shadow = ShadowModel.model_validate(report)
        return InferenceHealth(
            revision=self.config.revision,  # the last config revision applied or refused
            model=ServedModel.model_validate(live),
            shadow=shadow,
            swaps=SwapHealth.model_validate(vars(self.swaps)),
            queued=self.batcher.qsize(),
            offloaded_runs=self.offloaded,
            **stats.as_dict(),
            run_seconds=self.run_seconds.report(),
            latency_seconds=self.latency_seconds.report(),
            batch_size=self.batch_size.report(),
        )

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

    # ------------------------------------------------------------------ the hot path

    async def infer_loop(self) -> None:
        while True:
            rows = await self.batcher.next()
            # One batch, one model: a swap between two batches changes the reference only.
            live, shadow = self.live, self.shadow
            outcome = await self.run(live.engine, rows)
            live.health.observe(rows, outcome.result, outcome.run_us)
            self.observe(rows, outcome)
            await self.publish(outcome)
            self.recent_x = rows.x[-8:]
            if shadow is not None:
                self.hand_to_shadow(ShadowJob(shadow, rows, outcome.result))

    def hand_to_shadow(self, job: ShadowJob) -> None:
        """Queue the batch for the candidate; a full queue drops its oldest batch (the newest
        data is what the comparison is about) and never waits."""
        if self.shadow_queue.full():
            self.shadow_queue.get_nowait()
            self.shadow_skipped += 1
        self.shadow_queue.put_nowait(job)

    async def shadow_loop(self) -> None:
        while True:
            job = await self.shadow_queue.get()
            if job.shadow is self.shadow:  # a batch queued before a swap or drop is not run
                await self.run_shadow(job.shadow, job.rows, job.live)

    def observe(self, rows: Rows, outcome: RunOutcome) -> None:
        self.batch_size.observe([len(rows.x)])
        if outcome.run_us is not None:
            self.run_seconds.observe([outcome.run_us / 1e6])
        if outcome.result is not None:
            self.latency_seconds.observe(outcome.result.latency_us / 1e6)

    async def run(self, engine: Engine, rows: Rows) -> RunOutcome:
        # Inline, a run costs the event loop nothing extra (the thread hop costs ~50-100 µs);
        # a slow model goes to a thread so reading and publishing continue while it runs
        # (onnxruntime releases the GIL). The last run's time decides, so no guess is needed.
        if engine.stats.last_run_us > self.config.offload_above_us:
            self.offloaded += 1
            return await asyncio.to_thread(engine.infer, rows)
        return engine.infer(rows)

    async def publish(self, outcome: RunOutcome) -> None:
        if outcome.error is not None:
            self.rt.errors.error(outcome.error)
        if outcome.result is not None:
            wire = outcome.result.to_wire(self.config.encoding)
            await self.rt.publish(
                self.results_topic,
                wire,
                encoding=self.config.encoding,
                qos=self.config.publish_qos,
            )

    async def run_shadow(self, shadow: Serving, rows: Rows, live: ResultBatch | None) -> None:
        """The candidate on the samples the live model had, then the comparison. Always in a
        worker thread (onnxruntime releases the GIL): the event loop goes on reading and
        publishing live batches however slow the candidate is."""
        outcome = await asyncio.to_thread(shadow.engine.infer, rows)
        shadow.health.observe(rows, outcome.result, outcome.run_us)
        if outcome.error is not None:
            self.rt.errors.error(f"shadow: {outcome.error}")
        if outcome.result is not None:
            # QoS 0: nothing acts on shadow results, and a PUBACK wait would hold this loop.
            wire = outcome.result.to_wire(self.config.encoding)
            await self.rt.publish(self.shadow_topic, wire, encoding=self.config.encoding, qos=0)
        if live is None or outcome.result is None or shadow is not self.shadow:
            return
        if self.agreement is None:
            spec = self.config.shadow
            kinds = [
                {k: np.asarray(v).dtype.kind for k, v in r.outputs.items()}
                for r in (live, outcome.result)
            ]
            label, score = pick_fields(
                kinds[0], kinds[1], spec.label if spec else None, spec.score if spec else None
            )
            self.agreement = Agreement(self.config.health_window, label, score)
        self.agreement.observe(live, outcome.result)

    # ------------------------------------------------------------------ swaps

    async def reconfigure(self, new: InferenceConfig, changed: set[str]) -> None:
        """A newer retained config that changes only live keys: applied by swap_loop (a model
        takes seconds to try); the log level now."""
        if "log_level" in changed:
            await super().reconfigure(
                self.config.model_copy(update={"log_level": new.log_level}), changed
            )
        await self.requests.put(SwapRequest(new, f"config revision {new.revision}"))

    async def swap_loop(self) -> None:
        while True:
            request = await self.requests.get()
            while not self.requests.empty():  # only the newest state matters
                request = self.merge_requests(request, self.requests.get_nowait())
            await self.apply(request)

    @staticmethod
    def merge_requests(old: SwapRequest, new: SwapRequest) -> SwapRequest:
        return SwapRequest(
            new.config,
            new.reason,
            old.reload_live or new.reload_live,
            old.reload_shadow or new.reload_shadow,
        )

    async def apply(self, request: SwapRequest) -> None:
        new, current = request.config, self.config
        applied = current.model_copy(update={"revision": new.revision})
        if request.reload_live or live_key(new) != live_key(current):
            same = live_key(new) == live_key(current)  # only the file changed: skip equal bytes
            engine = await self.candidate(
                new, "model", self.engine.model.ref.sha256 if same else None
            )
            if engine is not None:
                self.swap_live(engine, new, request.reason)
                applied = applied.model_copy(update={k: getattr(new, k) for k in _LIVE_KEYS})
        if request.reload_shadow or new.shadow != current.shadow:
            if new.shadow is None:
                self.set_shadow(None, None, request.reason)
                applied = applied.model_copy(update={"shadow": None})
            else:
                same = new.shadow == current.shadow and self.shadow is not None
                engine = await self.candidate(
                    shadow_settings(new, new.shadow),
                    "shadow",
                    self.shadow.engine.model.ref.sha256 if same and self.shadow else None,
                )
                if engine is not None:
                    self.set_shadow(engine, new.shadow, request.reason)
                    applied = applied.model_copy(update={"shadow": new.shadow})
        # Keys read per batch (encoding, publish_qos, offload_above_us) take effect now.
        self.config = applied.model_copy(update={k: getattr(new, k) for k in _NOW_KEYS})
        self.rt.revision = self.config.revision  # the last revision applied or refused
        self.rt.announce_soon()

    async def candidate(
        self, settings: InferenceSettings, role: str, unless_sha: str | None = None
    ) -> Engine | None:
        """A loaded, warmed engine, or None: refused (reported) or unchanged (`unless_sha`)."""
        origin = str(settings.model.path or settings.model.ref)
        self.swaps.trying = f"{role}: {origin}"
        try:
            return await prepare(
                settings,
                self.engine.features,
                self.recent_x,
                self.config.candidate_timeout_s,
                unless_sha,
                self.trials,
            )
        except (ModelError, ConfigError) as exc:
            self.refuse(f"{role} candidate {origin} refused, the live model keeps serving: {exc}")
            return None
        finally:
            self.swaps.trying = None

    def swap_live(self, engine: Engine, config: InferenceConfig, reason: str) -> None:
        old = self.live.engine.model.ref
        engine.stats = self.live.engine.stats  # the counters are the instance's, not a model's
        self.live = self._serving(engine, config.model.model_dump(mode="json"))
        self._files.pop("live", None)
        self._files.pop("live.settled", None)
        new = engine.model.ref
        self.swaps.done += 1
        self.swaps.last = {
            "t": now_ns(),
            "reason": reason,
            "from": {"name": old.name, "version": old.version, "sha256": old.sha256},
            "to": {"name": new.name, "version": new.version, "sha256": new.sha256},
        }
        self.rt.announce_soon()  # the actuator trusts results by the sha256 in this status
        log.info(
            "model swapped: %s (%s) -> %s (%s): %s",
            old.name,
            old.sha256[:12],
            new.name,
            new.sha256[:12],
            reason,
        )

    def set_shadow(self, engine: Engine | None, spec: ShadowSpec | None, reason: str) -> None:
        self.shadow = (
            None
            if engine is None
            else self._serving(engine, spec.model_dump(mode="json") if spec else {})
        )
        self.agreement = None
        self.shadow_skipped = 0  # the count is the new candidate's
        self._files.pop("shadow", None)
        self._files.pop("shadow.settled", None)
        log.info("shadow %s: %s", "dropped" if engine is None else engine.model.origin, reason)

    def refuse(self, reason: str) -> None:
        self.swaps.refused += 1
        self.swaps.last_error = reason
        self.rt.errors.error(reason)

    async def watch_loop(self) -> None:
        """Notice a model file replaced on disk: (mtime, size) every `watch_s`, and only once the
        file has stopped changing (a copy in progress is not tried). No inotify: it needs a
        dependency or ctypes, and one stat per file every few seconds costs nothing."""
        interval = self.config.watch_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            self.watch_once()

    def watch_once(self) -> None:
        for role, serving in (("live", self.live), ("shadow", self.shadow)):
            if serving is None:
                continue
            spec = self.config.model if role == "live" else self.config.shadow
            path = spec.path if spec is not None else None
            sig = file_signature(path)
            if sig is None:
                continue
            seen = self._files.get(role)
            self._files[role] = sig
            settled = self._files.get(f"{role}.settled")
            if seen != sig or settled == sig:
                continue  # still changing, or already handled
            self._files[f"{role}.settled"] = sig
            if settled is None:
                continue  # the first look at the file: it is what was loaded
            self.requests.put_nowait(
                SwapRequest(
                    self.config,
                    f"{role} model file {path} changed",
                    reload_live=role == "live",
                    reload_shadow=role == "shadow",
                )
            )


_LIVE_KEYS = ("model", "outputs", "preprocess", "postprocess", "on_nan", "intra_op_threads")
_NOW_KEYS = ("encoding", "publish_qos", "offload_above_us")


async def main(config: InferenceConfig) -> None:
    # The model is loaded and checked before connecting: a model that does not fit the flow
    # stops the instance with the reason, and never announces itself online.
    engine = await asyncio.to_thread(build_engine, config)
    await run(NAME, config, lambda rt: InferenceService(rt, config, engine))


SPEC = ServiceSpec(NAME, InferenceConfig, main, service=InferenceService)
