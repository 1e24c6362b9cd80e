"""Stand-in for services/inference/signature.py until it lands on main (then deleted).

Same names and call shapes: ModelSignature, inspect_model(path, timeout_s), check_fits(signature,
settings, width=...), inspect_script(path)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from services.inference.config import InferenceSettings
from shared.errors import ConfigError, ModelError

Dim = int | str | None


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    dtype: str
    shape: list[Dim]


class FeatureStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


class ModelSignature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Literal[1] = 1
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: dict[str, int]
    ir_version: int
    producer_name: str = ""
    producer_version: str = ""
    model_version: int | None = None
    metadata: dict[str, str] = {}
    features: list[str] | None = None
    train_stats: dict[str, FeatureStats] | None = None
    threshold: float | None = None
    classes: list[int] | list[str] | None = None


class ScriptSignature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    functions: list[str]


def _read(data: bytes, origin: str) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    if not data:
        raise ModelError(f"model {origin} is an empty file")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelError(
            f"{origin} is not a valid ONNX model (truncated, corrupt): {exc}"
        ) from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(f"{origin} is not a valid ONNX model (no ir_version or no graph)")
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{origin}: onnxruntime cannot load it: {first}") from None
    props = {p.key: p.value for p in proto.metadata_props}

    def spec(a: Any) -> dict[str, Any]:
        return {"name": a.name, "dtype": a.type, "shape": list(a.shape or [])}

    stats = json.loads(props["edgefleet.train_stats"]) if "edgefleet.train_stats" in props else None
    features = json.loads(props["edgefleet.features"]) if "edgefleet.features" in props else None
    if isinstance(stats, dict) and all(isinstance(v, list) for v in stats.values()):
        n = max(len(v) for v in stats.values())
        names = features if features and len(features) == n else [f"[{i}]" for i in range(n)]
        stats = {nm: {k: v[i] for k, v in stats.items()} for i, nm in enumerate(names)}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "inputs": [spec(i) for i in session.get_inputs()],
        "outputs": [spec(o) for o in session.get_outputs()],
        "opset": {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        "ir_version": int(proto.ir_version),
        "producer_name": proto.producer_name,
        "producer_version": proto.producer_version,
        "metadata": props,
        "features": features,
        "train_stats": stats,
        "threshold": float(props["edgefleet.threshold"])
        if "edgefleet.threshold" in props
        else None,
    }


_CHILD = (
    "import json,pickle,sys\n"
    "fn,arg=pickle.loads(sys.stdin.buffer.read())\n"
    "try: r={'ok':True,'result':fn(arg)}\n"
    "except Exception as e: r={'ok':False,'error':str(e)}\n"
    "print(json.dumps(r))\n"
)


def run_isolated(fn: Any, arg: Any, timeout_s: float, what: str, doing: str) -> Any:
    import pickle
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=pickle.dumps((fn, arg)),
            capture_output=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"{what} did not finish {doing} within {timeout_s:g} s") from None
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise ModelError(f"{what} crashed the process that tried it") from None
    if not verdict["ok"]:
        raise ModelError(verdict["error"])
    return verdict["result"]


def _inspect_child(arg: tuple[bytes, str]) -> dict[str, Any]:
    return _read(*arg)


def inspect_model(
    source: Path | bytes, timeout_s: float, origin: str | None = None
) -> ModelSignature:
    data = source if isinstance(source, bytes) else source.read_bytes()
    origin = origin or str(source if not isinstance(source, bytes) else "(bytes)")
    result = run_isolated(_inspect_child, (data, origin), timeout_s, f"model {origin}", "loading")
    return ModelSignature.model_validate(result)


def check_fits(
    signature: ModelSignature,
    settings: InferenceSettings,
    *,
    width: int | None = None,
    origin: str | None = None,
) -> None:
    origin = origin or str(settings.model.path or settings.model.ref)
    features = settings.features if settings.features is not None else signature.features
    if not features:
        raise ConfigError(f"flow {settings.flow!r} names no features")
    width = len(features) if width is None else width
    if len(signature.inputs) != 1:
        raise ModelError(f"model {origin} has {len(signature.inputs)} inputs; the flow feeds one")
    inp = signature.inputs[0]
    if inp.dtype not in ("tensor(float)", "tensor(double)"):
        raise ModelError(f"model {origin} input {inp.name!r} is {inp.dtype}")
    shape = inp.shape
    if len(shape) not in (2, 3) or (len(shape) == 2 and settings.window > 1):
        raise ModelError(f"model {origin} input has shape {shape}; window {settings.window}")
    if isinstance(shape[-1], int) and shape[-1] > 0 and shape[-1] != width:
        raise ModelError(
            f"model {origin} input {inp.name!r} takes {shape[-1]} features (shape {shape}); "
            f"the flow feeds {width}"
        )
    if len(shape) == 3 and isinstance(shape[1], int) and shape[1] != settings.window:
        raise ModelError(f"model {origin} takes windows of {shape[1]}; flow {settings.window}")
    if isinstance(shape[0], int) and shape[0] not in (1,) and shape[0] > 0:
        raise ModelError(f"model {origin} has a fixed batch of {shape[0]}")
    if signature.features is not None and width == len(features) and signature.features != features:
        raise ModelError(
            f"model {origin} was trained on features {signature.features}; the flow sends "
            f"{list(features)}"
        )


def inspect_script(path: Path) -> ScriptSignature:
    text = path.read_bytes()
    if not text.strip():
        raise ConfigError(f"script {path} is an empty file")
    try:
        tree = ast.parse(text, str(path))
        compile(tree, str(path), "exec")
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"script {path} does not compile: {exc}") from None
    names = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name in ("preprocess", "postprocess")
    ]
    if not names:
        raise ConfigError(f"script {path} defines neither preprocess(x) nor postprocess(outputs)")
    return ScriptSignature(functions=names)
