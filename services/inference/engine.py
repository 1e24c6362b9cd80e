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
    nan_outputs: int = 0  # samples whose result was NaN or infinite: not published
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
        result, error = self._finite(result)
        if result is None:
            return RunOutcome(None, error, run_us=self.stats.last_run_us if error else None)
        self.stats.results += len(result)
        return RunOutcome(result, error, run_us=self.stats.last_run_us)

    def _finite(self, result: ResultBatch | None) -> tuple[ResultBatch | None, str | None]:
        """Without the samples whose result is NaN or infinite (with `on_nan: skip`): such a
        result is not a number an action or another system may take as the model's answer
        (`score < 0.5` is false for NaN, but `not score > 0.8` is true), so it is dropped,
        counted and said, like a sample that is not a number going in."""
        if result is None or self.settings.on_nan != "skip":
            return result, None
        bad = np.zeros(len(result), bool)
        fields = []
        for name, column in result.outputs.items():
            arr = np.asarray(column)
            if arr.dtype.kind not in "fc":  # labels, integers: always numbers or strings
                continue
            rows = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if rows.any():
                bad |= rows
                fields.append(repr(name))
        if not bad.any():
            return result, None
        n, dropped = len(result), int(bad.sum())
        self.stats.nan_outputs += dropped
        error = (
            # the words that do not change first: the error channel merges reports by them
            f"model {self.model.ref.name}: results that are not a number (NaN or infinite in "
            f"{', '.join(fields)}) for {dropped} of {n} samples, first at "
            f"t={int(result.t[bad][0])}; not published"
        )
        if dropped == n:
            return None, error
        keep = ~bad
        outputs = {k: _take(v, keep) for k, v in result.outputs.items()}
        kept = ResultBatch(result.flow, result.model, result.t[keep], outputs,
                           result.latency_us[keep])  # fmt: skip
        return kept, error

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


def _take(column: Any, keep: np.ndarray[Any, Any]) -> Any:
    """The kept rows of one output column (an array, or a list of strings)."""
    if isinstance(column, np.ndarray):
        return column[keep]
    return [v for v, k in zip(column, keep.tolist(), strict=True) if k]


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
