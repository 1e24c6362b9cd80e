"""Load an ONNX model, check it against the flow, and run it.

A model is refused before it serves a single sample when its input does not fit what the flow
delivers: every message names both sides, so a data scientist can fix the export or the flow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from shared.errors import ModelError
from shared.messages import ModelRef

from .config import ModelSpec

log = logging.getLogger(__name__)

FEATURES_KEY = "edgefleet.features"
TRAIN_STATS_KEY = "edgefleet.train_stats"

_INPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
}


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


@dataclass(frozen=True)
class Expected:
    """What the flow delivers to the model (after the preprocess script, when there is one)."""

    features: list[str]  # names as the flow sends them
    width: int  # features per sample the model gets: len(features) without a preprocess script
    window: int
    input_name: str | None = None


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    ref: ModelRef
    input_name: str
    dtype: np.dtype[Any]
    rank: int  # 2: [N, F]; 3: [N, W, F]
    fixed_batch: bool  # the model's batch dimension is 1: feed one sample per run
    output_names: list[str]
    output_types: dict[str, str]
    features: list[str] | None  # from `edgefleet.features`
    train_stats: dict[str, Any] | None  # from `edgefleet.train_stats`, kept for drift checks
    metadata: dict[str, str] = field(default_factory=dict)
    origin: str = ""

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


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads > 1:
        # Spinning workers burn the cores the MQTT client and the other services need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def load_model(blob: ModelBlob, expected: Expected, intra_op_threads: int = 1) -> LoadedModel:
    """Open the model, check it against `expected`, and return it ready to run."""
    model = open_model(blob, intra_op_threads)
    check_model(model, expected)
    return model


def open_model(blob: ModelBlob, intra_op_threads: int = 1) -> LoadedModel:
    """Open the model and read its metadata; `check_model` must pass before it runs."""
    sha = hashlib.sha256(blob.data).hexdigest()
    if not blob.data:
        raise ModelError(f"model {blob.origin} is an empty file")
    try:
        session = ort.InferenceSession(
            blob.data, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except (
        Exception
    ) as exc:  # InvalidProtobuf, Fail, InvalidGraph...: all mean "not a usable model"
        raise ModelError(
            f"{blob.origin} is not a valid ONNX model (truncated, corrupt or another format): "
            f"{_first_line(exc)}"
        ) from None
    meta = session.get_modelmeta()
    props: dict[str, str] = dict(meta.custom_metadata_map)
    # onnxruntime reports an unset model_version as 0 or as INT64_MAX: name it by content then
    unset = meta.version <= 0 or meta.version == 2**63 - 1
    version = blob.version or (f"sha-{sha[:12]}" if unset else str(meta.version))
    model = LoadedModel(
        session=session,
        ref=ModelRef(blob.name, version, sha),
        input_name="",
        dtype=np.dtype(np.float32),
        rank=2,
        fixed_batch=False,
        output_names=[o.name for o in session.get_outputs()],
        output_types={o.name: o.type for o in session.get_outputs()},
        features=_json_list(props, FEATURES_KEY, blob.origin),
        train_stats=_json_dict(props, TRAIN_STATS_KEY, blob.origin),
        metadata=props,
    )
    model.origin = blob.origin
    return model


def check_model(model: LoadedModel, exp: Expected) -> None:
    """Refuse a model whose input does not fit what the flow delivers; naming both sides."""
    origin = model.origin
    inputs = model.session.get_inputs()
    names = [i.name for i in inputs]
    if len(inputs) != 1:
        raise ModelError(
            f"model {origin} has {len(inputs)} inputs {names}; the flow feeds one input "
            f"of {exp.width} features"
        )
    inp = inputs[0]
    if exp.input_name is not None and inp.name != exp.input_name:
        raise ModelError(
            f"model {origin} input is named {inp.name!r}; the flow names {exp.input_name!r}"
        )
    dtype = _INPUT_DTYPES.get(inp.type)
    if dtype is None:
        raise ModelError(
            f"model {origin} input {inp.name!r} is {inp.type}; the flow feeds float32 or float64"
        )
    shape = list(inp.shape)
    want = f"[N, {exp.width}]" if exp.window == 1 else f"[N, {exp.window}, {exp.width}]"
    if len(shape) not in (2, 3) or (len(shape) == 2 and exp.window > 1):
        raise ModelError(
            f"model {origin} input {inp.name!r} has shape {shape}; the flow feeds {want}"
        )
    if _static(shape[-1]) not in (None, exp.width):
        raise ModelError(
            f"model {origin} input {inp.name!r} takes {shape[-1]} features (shape {shape}); "
            f"the flow feeds {exp.width}: {want}"
        )
    if len(shape) == 3 and _static(shape[1]) not in (None, exp.window):
        raise ModelError(
            f"model {origin} input {inp.name!r} takes windows of {shape[1]} samples (shape "
            f"{shape}); the flow feeds windows of {exp.window}: {want}"
        )
    batch = _static(shape[0])
    if batch not in (None, 1):
        raise ModelError(
            f"model {origin} input {inp.name!r} has a fixed batch of {batch}; edgefleet feeds a "
            "dynamic batch or one sample at a time (export with a dynamic or size-1 first axis)"
        )
    if (
        model.features is not None
        and exp.width == len(exp.features)
        and model.features != exp.features
    ):
        raise ModelError(
            f"model {origin} was trained on features {model.features}; "
            f"the flow sends {exp.features}"
        )
    model.input_name = inp.name
    model.dtype = dtype
    model.rank = len(shape)
    model.fixed_batch = batch == 1
    log.info(
        "model %s version %s sha256 %s: input %s %s %s%s, outputs %s",
        model.ref.name,
        model.ref.version,
        model.ref.sha256[:12],
        inp.name,
        dtype,
        shape,
        " (one sample per run)" if model.fixed_batch else "",
        model.output_names,
    )


def _static(dim: Any) -> int | None:
    """A fixed dimension as an int; symbolic (str) or unknown (None) dimensions are dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _json_list(props: dict[str, str], key: str, origin: str) -> list[str] | None:
    value = _json(props, key, origin)
    if value is not None and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise ModelError(f"model {origin} metadata {key} must be a JSON list of feature names")
    return value


def _json_dict(props: dict[str, str], key: str, origin: str) -> dict[str, Any] | None:
    value = _json(props, key, origin)
    if value is not None and not isinstance(value, dict):
        raise ModelError(f"model {origin} metadata {key} must be a JSON object")
    return value


def _json(props: dict[str, str], key: str, origin: str) -> Any:
    if key not in props:
        return None
    try:
        return json.loads(props[key])
    except ValueError as exc:
        raise ModelError(f"model {origin} metadata {key} is not valid JSON: {exc}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
