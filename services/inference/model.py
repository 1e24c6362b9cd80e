"""Load an ONNX model, check it against the flow, and run it.

A model is refused before it serves a single sample when its input does not fit what the flow
delivers (`signature.check_fits`, the check the fleet also runs at `flow push`): every message
names both sides, so a data scientist can fix the export or the flow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from shared.errors import ModelError
from shared.messages import ModelRef

from .config import InferenceSettings, ModelSpec
from .signature import TRAIN_STATS_KEY, Fit, ModelSignature, check_fits, open_session, signature_of

log = logging.getLogger(__name__)

_FLOAT32: np.dtype[Any] = np.dtype(np.float32)


@dataclass(frozen=True)
class ModelBlob:
    """The bytes of one model and what it is called; what a `ModelSource` returns."""

    data: bytes
    name: str
    version: str | None
    origin: str  # a path or a reference, for messages


ModelSource = Callable[[ModelSpec], ModelBlob]


def resolve_model(spec: ModelSpec) -> ModelBlob:
    """The default `ModelSource`: a file. Library references wait for the content-addressed cache,
    which will be one more `ModelSource` that maps `name@version` to a verified blob."""
    if spec.path is None:
        raise ModelError(
            f"model reference {spec.ref!r} needs the local model cache, which this node does not "
            "have yet; give the model as {path: FILE}"
        )
    try:
        data = spec.path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {spec.path}: {exc.strerror or exc}") from None
    return ModelBlob(data, spec.name or spec.path.stem, spec.version, str(spec.path))


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    ref: ModelRef
    signature: ModelSignature
    origin: str
    # How the flow feeds it: set by `use` once `check_fits` has passed.
    input_name: str = ""
    dtype: np.dtype[Any] = _FLOAT32
    rank: int = 2  # 2: [N, F]; 3: [N, W, F]
    fixed_batch: bool = False  # the model's batch dimension is 1: feed one sample per run

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.signature.outputs]

    @property
    def output_types(self) -> dict[str, str]:
        return self.signature.output_types()

    @property
    def features(self) -> list[str] | None:  # from `edgefleet.features`
        return self.signature.features

    @property
    def metadata(self) -> dict[str, str]:
        return self.signature.metadata

    @property
    def train_stats(self) -> dict[str, Any] | None:
        """`edgefleet.train_stats` as written, for drift checks (validated in the signature)."""
        raw = self.signature.metadata.get(TRAIN_STATS_KEY)
        return json.loads(raw) if raw is not None else None

    def use(self, fit: Fit) -> None:
        """Feed the model as `fit` (from `check_fits`) says."""
        self.input_name, self.dtype = fit.input_name, fit.dtype
        self.rank, self.fixed_batch = fit.rank, fit.fixed_batch
        log.info(
            "model %s version %s sha256 %s: input %s %s rank %d%s, outputs %s",
            self.ref.name,
            self.ref.version,
            self.ref.sha256[:12],
            fit.input_name,
            fit.dtype,
            fit.rank,
            " (one sample per run)" if fit.fixed_batch else "",
            self.output_names,
        )

    def run(self, x: np.ndarray[Any, Any]) -> dict[str, Any]:
        """Run on x ([N, F] or [N, W, F] float32); return the raw outputs by name."""
        if self.rank == 3 and x.ndim == 2:
            x = x[:, None, :]  # a window-1 flow feeding a [N, 1, F] model
        x = x.astype(self.dtype, copy=False)
        try:
            if not self.fixed_batch:
                return dict(zip(self.output_names, self._run(x), strict=True))
            return self._run_one_by_one(x)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own classes, unrelated to ours
            raise ModelError(
                f"model {self.ref.name} failed on a batch of {len(x)}: {exc}"
            ) from None

    def _run(self, x: np.ndarray[Any, Any]) -> list[Any]:
        return self.session.run(self.output_names, {self.input_name: x})  # type: ignore[no-any-return]

    def _run_one_by_one(self, x: np.ndarray[Any, Any]) -> dict[str, Any]:
        parts: dict[str, list[Any]] = {name: [] for name in self.output_names}
        for i in range(len(x)):
            for name, value in zip(self.output_names, self._run(x[i : i + 1]), strict=True):
                parts[name].append(value)
        out: dict[str, Any] = {}
        for name, values in parts.items():
            if self.output_types[name].startswith("seq("):
                out[name] = [item for v in values for item in v]
            else:
                out[name] = np.concatenate(values) if values else np.empty((0,))
        return out


def load_model(
    blob: ModelBlob, settings: InferenceSettings, intra_op_threads: int = 1
) -> LoadedModel:
    """Open the model, check it against the flow's `settings`, and return it ready to run."""
    model = open_model(blob, intra_op_threads)
    model.use(check_fits(model.signature, settings, origin=blob.origin))
    return model


def open_model(blob: ModelBlob, intra_op_threads: int = 1) -> LoadedModel:
    """Open the model and read its signature; `check_fits` must pass before it runs."""
    session, proto = open_session(blob.data, blob.origin, intra_op_threads)
    signature = signature_of(blob.data, session, proto, blob.origin)
    # An unset ONNX model_version: name the version by content
    version = blob.version or (
        str(signature.model_version)
        if signature.model_version is not None
        else f"sha-{signature.sha256[:12]}"
    )
    return LoadedModel(
        session, ModelRef(blob.name, version, signature.sha256), signature, blob.origin
    )
