"""Replay: the site's own aligner and inference code over a recording, as fast as it goes.

No second implementation: the aligner engine (`services.aligner.alignment.Aligner`) takes each batch
at the local time it arrived live, and emits at the same moments the live service does — every
sample whose deadline passed before the next batch arrived, then whatever that batch made
decidable (early emission). Each emitted message goes to the inference engine
(`services.inference.engine.build_engine`, the one the service runs, with the same checks) as
one batch, as the live service runs an idle site's messages one by one.

What can differ from live, and why: live micro-batching may put several messages in one model
run when inference falls behind (the same rows, another batch size: onnxruntime may round the
last bit of a float differently); results' `latency_ms` is the replay's own, not the site's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.flow import FlowSpec
from edgefleet.replay.recording import Recording
from services.aligner.alignment import Aligner
from services.inference.batching import Rows
from services.inference.engine import Engine, build_engine
from shared.messages import ResultBatch, SampleBatch


@dataclass
class Replayed:
    flow: str
    samples: list[SampleBatch] = field(default_factory=list)
    results: list[ResultBatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    readings: int = 0
    seconds: float = 0.0  # wall clock the replay took

    @property
    def sample_count(self) -> int:
        return sum(len(s) for s in self.samples)

    def result_columns(self) -> dict[str, np.ndarray[Any, Any]]:
        """Every result as columns: `t_ns` and one column per output field."""
        if not self.results:
            return {"t_ns": np.empty(0, np.int64)}
        out: dict[str, np.ndarray[Any, Any]] = {"t_ns": np.concatenate([r.t for r in self.results])}
        for name in self.results[0].outputs:
            out[name] = np.concatenate([np.asarray(r.outputs[name]) for r in self.results])
        return out


def engine_for(flow: FlowSpec) -> Engine | None:
    settings = flow.inference_settings()
    if not settings:
        return None
    from services.inference.config import InferenceSettings

    return build_engine(InferenceSettings.model_validate(settings))


def replay(recording: Recording, flow: FlowSpec, engine: Engine | None = None) -> Replayed:
    """Samples (and results, when the flow has a model) of `flow` over `recording`."""
    aligner = Aligner(flow.name, flow.align)
    engine = engine if engine is not None else engine_for(flow)
    out = Replayed(flow.name)
    wanted = set(flow.align.sources)
    start = time.perf_counter()

    def emit(now: int) -> None:
        while (samples := aligner.emit(now)) is not None:
            out.samples.append(samples)
            if engine is not None and len(samples):
                rows = Rows(samples.t, samples.x, np.full(len(samples), now, np.int64))
                outcome = engine.infer(rows)
                if outcome.result is not None:
                    out.results.append(outcome.result)
                if outcome.error is not None:
                    out.errors.append(outcome.error)

    last_arrival: int | None = None
    for arrival, batch in recording.batches():
        if batch.source not in wanted:
            continue
        while (deadline := aligner.next_deadline_ns()) is not None and deadline <= arrival:
            emit(deadline)
        aligner.ingest(batch, arrival)
        out.readings += len(batch)
        if aligner.due(arrival):
            emit(arrival)
        last_arrival = arrival
    if last_arrival is not None:  # what was still waiting for its deadline when recording ended
        emit(last_arrival + flow.align.max_delay_ns)
    out.seconds = time.perf_counter() - start
    return out
