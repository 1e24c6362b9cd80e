"""The inference path without I/O: samples in, a ResultBatch out.

preprocess script → NaN policy → model → output mapping → postprocess script. The service wraps
it with MQTT; the benchmark and the tests call it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared import clock
from shared.errors import ModelError
from shared.messages import ResultBatch

from .batching import Rows
from .config import InferenceSettings
from .model import LoadedModel, ModelSource, open_model, resolve_model
from .outputs import Selector, map_outputs
from .scripts import Script, ScriptError, load_script, probe_width, run_postprocess, run_preprocess
from .signature import check_fits, flow_features

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters for status/health; each one a user may ask about."""

    samples: int = 0
    results: int = 0
    runs: int = 0
    skipped_nan: int = 0
    failed_batches: int = 0
    failed_samples: int = 0
    script_errors: int = 0
    last_run_us: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunOutcome:
    result: ResultBatch | None  # None when every sample was skipped or the batch failed
    error: str | None = None  # why the batch failed, for the errors topic
    run_us: float | None = None  # the model run's own time, when it ran


class Engine:
    def __init__(
        self,
        settings: InferenceSettings,
        model: LoadedModel,
        selectors: list[Selector],
        features: list[str],
        preprocess: Script | None = None,
        postprocess: Script | None = None,
    ) -> None:
        self.settings = settings
        self.flow = settings.flow
        self.model = model
        self.selectors = selectors
        self.features = features
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.stats = Stats()

    def infer(self, rows: Rows) -> RunOutcome:
        """Results for one batch. Never raises for a bad batch: the outcome says what failed."""
        n = len(rows)
        self.stats.samples += n
        try:
            result = self._infer(rows)
        except (ModelError, ScriptError) as exc:
            self.stats.failed_batches += 1
            self.stats.failed_samples += n
            self.stats.script_errors += isinstance(exc, ScriptError)
            return RunOutcome(None, f"batch of {n} samples at t={int(rows.t[0])} lost: {exc}")
        if result is None:
            return RunOutcome(None)
        self.stats.results += len(result)
        return RunOutcome(result, run_us=self.stats.last_run_us)

    def _infer(self, rows: Rows) -> ResultBatch | None:
        x = rows.x
        if self.preprocess is not None:
            x = run_preprocess(self.preprocess, x)
        if self.settings.on_nan == "skip":
            finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if not finite.all():
                self.stats.skipped_nan += int(len(finite) - finite.sum())
                rows, x = rows.take(finite), x[finite]
        n = len(rows)
        if n == 0:
            return None
        start = time.perf_counter_ns()
        raw = self.model.run(x)
        self.stats.runs += 1
        self.stats.last_run_us = (time.perf_counter_ns() - start) / 1000
        outputs = map_outputs(raw, self.selectors, n)
        if self.postprocess is not None:
            outputs = run_postprocess(self.postprocess, outputs, n)
        # Latency from the message's arrival to its result: queueing, scripts and model together,
        # which is what an action waiting on the result sees.
        latency = ((clock.now_ns() - rows.received_ns) / 1000).astype(np.float32)
        return ResultBatch(self.flow, self.model.ref, rows.t, outputs, latency)  # ids derived


def build_engine(settings: InferenceSettings, source: ModelSource = resolve_model) -> Engine:
    """Load scripts and model, check them against the flow; raise ModelError/ConfigError if unfit.

    Paths in `settings` must already be resolved (`shared.config.load_config` does it).
    """
    pre = load_script(settings.preprocess, "preprocess") if settings.preprocess else None
    post = load_script(settings.postprocess, "postprocess") if settings.postprocess else None
    model = open_model(source(settings.model), settings.intra_op_threads)
    features = flow_features(model.signature, settings, model.origin)
    width = None if pre is None else probe_width(pre, len(features), settings.window)
    fit = check_fits(model.signature, settings, width=width or len(features), origin=model.origin)
    model.use(fit)
    return Engine(settings, model, fit.selectors, fit.features, pre, post)


def model_inputs(settings: InferenceSettings, features: list[str], x: Any) -> tuple[int, Any]:
    """The features per sample a model for `settings` must take, and `x` (samples as the flow
    sends them) turned into its input: for trying a candidate model before it is loaded."""
    pre = load_script(settings.preprocess, "preprocess") if settings.preprocess else None
    if pre is not None:
        x = run_preprocess(pre, x)
    return int(x.shape[-1]), np.ascontiguousarray(x, np.float32)
