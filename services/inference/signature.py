"""A model's signature, and the one check of a model against the flow that feeds it.

The signature is what an ONNX file takes and gives (inputs and outputs with dtypes and shapes,
opsets, producer) and what edgefleet's metadata says about it (features, train stats,
threshold, classes). The fleet reads it when a model is pushed to the library and stores it;
`flow push` checks the flow against the stored signature with `check_fits`; the inference
service checks the model it loaded with the same `check_fits` before it serves a sample.
So a flow the fleet accepts is a flow the node accepts, and the other way round.

A model file is untrusted input: `inspect_model` reads the signature in a separate process with
a timeout, so a file that hangs or crashes onnxruntime costs that process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict

from shared.errors import ConfigError, ModelError
from shared.transfer import HashBehind, connection

from .config import InferenceSettings
from .isolated import CHILD_NICE, Ahead, run_isolated, run_isolated_async
from .outputs import Selector, parse_selectors
from .scripts import load_script, probe_width
from .weights import Split, split_weights

log = logging.getLogger(__name__)

FEATURES_KEY = "edgefleet.features"
TRAIN_STATS_KEY = "edgefleet.train_stats"
THRESHOLD_KEY = "edgefleet.threshold"
CLASSES_KEY = "edgefleet.classes"
DEFAULT_DOMAIN = "ai.onnx"  # how the opset of ONNX's unnamed default domain is listed

# Input types the flow can feed (samples are float32; a float64 model gets them converted).
INPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
}
# Attributes of ai.onnx.ml operators that list a classifier's labels, in output order.
_CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")

Dim = int | str | None  # a fixed size, a symbolic name (a dynamic axis), or unknown


class TensorSpec(BaseModel):
    """One input or output, as onnxruntime sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # onnxruntime's type string: tensor(float), tensor(int64), seq(map(int64,tensor(float)))...
    dtype: str
    shape: list[Dim]  # [] for sequences and maps


class FeatureStats(BaseModel):
    """The training data of one feature, from `edgefleet.train_stats`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    # ascending quantiles of the training data, for the PSI in the inference health
    quantiles: list[float] | None = None


class ModelSignature(BaseModel):
    """What a model takes and gives, and what its metadata says; JSON in the fleet's store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: dict[str, int]  # domain → version; the default domain is "ai.onnx"
    ir_version: int
    producer_name: str = ""
    producer_version: str = ""
    model_version: int | None = None  # the ONNX model_version when the exporter set one
    metadata: dict[str, str] = {}  # every metadata_props entry, as written
    features: list[str] | None = None  # edgefleet.features: names in input order
    # edgefleet.train_stats by feature name (by "[i]" when the model names no features)
    train_stats: dict[str, FeatureStats] | None = None
    threshold: float | None = None  # edgefleet.threshold
    classes: list[int] | list[str] | None = None  # a classifier's labels, in output order

    def output_types(self) -> dict[str, str]:
        return {o.name: o.dtype for o in self.outputs}


# --- reading --------------------------------------------------------------------------------


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads > 1:
        # Spinning workers burn the cores the MQTT client and the other services need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(
    data: bytes, origin: str, intra_op_threads: int = 1
) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """The onnxruntime session of `data` and its parsed protobuf; ModelError saying why not."""
    proto = parse_proto(data, origin)
    try:
        session = ort.InferenceSession(
            data, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph...: all mean "not usable"
        raise ModelError(
            f"model {origin} is not a valid ONNX model: onnxruntime cannot load it: "
            f"{_first_line(exc)}"
        ) from None
    return session, proto


def open_for_check(
    data: bytes | bytearray, origin: str
) -> tuple[ort.InferenceSession, onnx.ModelProto, Split | None]:
    """`open_session` for a check (does it load, what is its signature, does it run): the large
    weights are given to onnxruntime as views of `data`, not copied, and not prepacked
    (weights.py); the split (the views) must live as long as the session. A model the split
    does not take, or one onnxruntime refuses so, is opened the plain way, whose refusal is
    the one the user reads."""
    split = split_weights(data)
    if split is not None:
        opts = session_options()
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.add_external_initializers(
            split.names, [ort.OrtValue.ortvalue_from_numpy(a) for a in split.arrays]
        )
        try:
            session = ort.InferenceSession(split.model, opts, providers=["CPUExecutionProvider"])
            return session, parse_proto(split.model, origin), split
        except Exception:  # the plain load below says what is wrong, in onnxruntime's words
            pass
    session, proto = open_session(bytes(data) if isinstance(data, bytearray) else data, origin)
    return session, proto, None


def parse_proto(data: bytes, origin: str) -> onnx.ModelProto:
    """The ONNX protobuf of `data`; refuses an empty file, text, and what is not ONNX."""
    if not data:
        raise ModelError(f"model {origin} is an empty file")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        what = "a text file" if _looks_like_text(data) else "truncated, corrupt or another format"
        raise ModelError(
            f"model {origin} is not a valid ONNX model ({what}): {_first_line(exc)}"
        ) from None
    # Random bytes can decode as a protobuf of unknown fields: a model has a version and a graph.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        what = "a text file" if _looks_like_text(data) else "no ir_version or no graph"
        raise ModelError(f"model {origin} is not a valid ONNX model ({what})")
    return proto


def signature_of(
    data: bytes | bytearray,
    session: ort.InferenceSession,
    proto: onnx.ModelProto,
    origin: str,
    sha256: str | None = None,
) -> ModelSignature:
    """The signature of an opened model; ModelError if its edgefleet metadata is malformed.
    `sha256`: the digest of `data` when the caller hashed it already (as it arrived)."""
    props = {p.key: p.value for p in proto.metadata_props}
    if not all(isinstance(t, str) for kv in props.items() for t in kv):  # protobuf gives bytes
        raise ModelError(f"model {origin} has metadata_props that are not UTF-8 text")
    features = _features(props, origin)
    return ModelSignature(
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=[_spec(i) for i in session.get_inputs()],
        outputs=[_spec(o) for o in session.get_outputs()],
        opset=dict(sorted((o.domain or DEFAULT_DOMAIN, o.version) for o in proto.opset_import)),
        ir_version=int(proto.ir_version),
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        model_version=int(proto.model_version) if 0 < proto.model_version < 2**63 - 1 else None,
        metadata=props,
        features=features,
        train_stats=_train_stats(props, features, origin),
        threshold=_threshold(props, origin),
        classes=_classes(proto, props, origin),
    )


def read_signature(source: Path | bytes, origin: str | None = None) -> ModelSignature:
    """Load the model in onnxruntime (in this process) and return its signature.

    ModelError with the reason for a file that cannot serve: missing, empty, not ONNX,
    truncated, corrupt, refused by onnxruntime, or with malformed edgefleet metadata.
    """
    data, origin = _read(source, origin)
    session, proto = open_session(data, origin)
    return signature_of(data, session, proto, origin)


def inspect_model(
    source: Path | bytes, timeout_s: float, origin: str | None = None, trial_run: bool = True
) -> ModelSignature:
    """`read_signature` in a separate process within `timeout_s`; with `trial_run`, the model
    also runs once on zeros there, so a model that hangs or crashes in a run is refused too.

    A model that hangs, crashes the process (a segfault, an abort) or fails is a ModelError;
    the caller's process is never at risk. Blocking: from async code use `inspect_model_async`.
    """
    data, origin = _read(source, origin)
    result = run_isolated(
        _inspect_child, (data, origin, trial_run), timeout_s, f"model {origin}", _DOING
    )
    return ModelSignature.model_validate(result)


async def inspect_model_async(
    source: Path | bytes, timeout_s: float, origin: str | None = None, trial_run: bool = True
) -> ModelSignature:
    """`inspect_model` for async callers: the event loop goes on while the child works."""
    data, origin = _read(source, origin)
    result = await run_isolated_async(
        _inspect_child, (data, origin, trial_run), timeout_s, f"model {origin}", _DOING
    )
    return ModelSignature.model_validate(result)


class FetchedInspection:
    """`inspect_model` of an object the child downloads itself, from a URL it is given once
    the object is complete (`fetch`): started ahead (its Python start and onnxruntime import
    overlap the upload), it reads the bytes into one buffer with a second thread hashing them
    as they come, and loads them without copying the weights (`open_for_check`). No byte goes
    through the caller's process; the caller gets what was read (size, sha256) with the
    verdict, and the load is skipped when the bytes are not the `sha256` expected."""

    def __init__(self, size: int, timeout_s: float, origin: str, *, nice: int = CHILD_NICE) -> None:
        self.size = size
        self.child = Ahead(
            _inspect_fetched_child,
            (origin, size),
            timeout_s,
            f"model {origin}",
            _DOING,
            nice=nice,
        )

    def alive(self) -> bool:
        """Still waiting for its URL (not killed for idling past its timeout)."""
        return self.child.proc.poll() is None and not self.child.broken

    def retime(self, timeout_s: float) -> None:
        """From now on `timeout_s` bounds the work (a child started ahead of its bytes)."""
        self.child.timeout_s = timeout_s
        self.child.deadline = time.monotonic() + timeout_s

    def fetch(self, url: str, sha256: str | None) -> Fetched:
        """Download `url` in the child and inspect it; ModelError saying why not."""
        self.child.send(json.dumps({"url": url, "sha256": sha256}).encode())
        return Fetched.model_validate(self.child.result())

    def __enter__(self) -> FetchedInspection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.child.__exit__(*exc)


class Fetched(BaseModel):
    """What a `FetchedInspection` read and found."""

    size: int  # the object's size as the server gave it
    sha256: str | None  # of the bytes read; None when the size was not the one expected
    signature: ModelSignature | None  # None when the bytes were not those expected
    read_s: float  # the download
    load_s: float  # after the last byte: load, signature, trial run


def _inspect_fetched_child(arg: tuple[tuple[str, int], bytes]) -> dict[str, Any]:
    (origin, size), request = arg
    want = json.loads(request)
    t0 = time.perf_counter()
    got, data, sha256 = download(want["url"], size)
    t1 = time.perf_counter()
    signature = None
    if data is not None and (want["sha256"] is None or sha256 == want["sha256"]):
        signature = _check(data, origin, True, sha256)
    return Fetched(
        size=got,
        sha256=sha256,
        signature=signature,
        read_s=t1 - t0,
        load_s=time.perf_counter() - t1,
    ).model_dump(mode="json")


def download(url: str, size: int) -> tuple[int, bytearray | None, str | None]:
    """GET `url` into one buffer of `size` bytes, hashed behind the download while it fills:
    the object's size as the server said, and when it is `size`, the bytes and their sha256.
    ModelError when the server refuses or the read is cut."""
    conn, target = connection(url)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        if response.status != 200:
            raise ModelError(
                f"S3 refused the download: HTTP {response.status}: {response.read()[:300]!r}"
            )
        length = int(response.getheader("Content-Length") or -1)
        if length != size:
            return length, None, None
        buf = bytearray(size)
        view = memoryview(buf)
        got = hashed = 0
        with HashBehind() as hasher:
            while got < size and (n := response.readinto(view[got : got + _READ])):
                got += n
                if got - hashed >= _HASH_STEP or got == size:
                    hasher.update(view[hashed:got])
                    hashed = got
            sha256 = hasher.hexdigest()
        if got != size:
            raise ModelError(f"the download was cut after {got} of {size} bytes")
        return size, buf, sha256
    except OSError as exc:
        raise ModelError(f"the download from S3 failed: {exc}") from None
    finally:
        conn.close()


_READ = 1 << 20
_HASH_STEP = 4 << 20  # bytes handed to the hashing thread at a time


_DOING = "loading in onnxruntime and one trial run"


def _inspect_child(arg: tuple[bytes, str, bool]) -> dict[str, Any]:
    """In the child process: open, read the signature, optionally run once on zeros."""
    data, origin, trial_run = arg
    return _check(data, origin, trial_run).model_dump(mode="json")


def _check(
    data: bytes | bytearray, origin: str, trial_run: bool, sha256: str | None = None
) -> ModelSignature:
    session, proto, _weights = open_for_check(data, origin)  # the views live with the session
    signature = signature_of(data, session, proto, origin, sha256)
    if trial_run:
        _run_on_zeros(session, origin)
    return signature


def _run_on_zeros(session: ort.InferenceSession, origin: str) -> None:
    """One run on all-zero inputs, dynamic axes of size 1: proves the model runs at all."""
    feeds: dict[str, Any] = {}
    for inp in session.get_inputs():
        dtype = _ORT_NUMPY.get(inp.type)
        if dtype is None:
            return  # a sequence or map input: nothing sensible to build, loading is the check
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = np.full(shape, "", object) if dtype is object else np.zeros(shape, dtype)
    try:
        session.run(None, feeds)
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise ModelError(
            f"model {origin} loads but fails to run on all-zero inputs {shapes}: {_first_line(exc)}"
        ) from None


_ORT_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": object,
}


def _read(source: Path | bytes, origin: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, origin or "(bytes)"
    try:
        return source.read_bytes(), origin or str(source)
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc.strerror or exc}") from None


def _spec(arg: Any) -> TensorSpec:
    shape = [d if isinstance(d, int | str) or d is None else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=arg.type, shape=shape)


def _features(props: dict[str, str], origin: str) -> list[str] | None:
    value = _json(props, FEATURES_KEY, origin)
    if value is not None and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise ModelError(
            f"model {origin} metadata {FEATURES_KEY} must be a JSON list of feature names"
        )
    return value


def _train_stats(
    props: dict[str, str], features: list[str] | None, origin: str
) -> dict[str, FeatureStats] | None:
    """Both forms exporters write: columns `{"mean": [...], "std": [...]}` in input order, or
    `{feature: {"mean": m, "std": s}}`. `quantiles` (a list per feature) may come with
    `quantile_p` (their probabilities, one list for all features; only in the column form)."""
    value = _json(props, TRAIN_STATS_KEY, origin)
    if value is None:
        return None
    bad = ModelError(
        f"model {origin} metadata {TRAIN_STATS_KEY} must be a JSON object of per-feature "
        '{"mean", "std", "min", "max", "quantiles"}, or of those keys with a list in feature '
        'order (and "quantile_p")'
    )
    if not isinstance(value, dict):
        raise bad
    keys = ("mean", "std", "min", "max")
    try:
        columns = {k: v for k, v in value.items() if k != "quantile_p"}
        if columns and all(
            k in (*keys, "quantiles") and isinstance(v, list) for k, v in columns.items()
        ):
            if not isinstance(value.get("quantile_p", []), list):
                raise bad
            n = max(len(v) for v in columns.values())
            names = features if features is not None and len(features) == n else None
            names = names or [f"[{i}]" for i in range(n)]
            return {
                name: _feature_stats({k: v[i] for k, v in columns.items() if i < len(v)}, keys)
                for i, name in enumerate(names)
            }
        if not all(isinstance(s, dict) and set(s) <= {*keys, "quantiles"} for s in value.values()):
            raise bad
        return {str(name): _feature_stats(s, keys) for name, s in value.items()}
    except (TypeError, ValueError, KeyError):
        raise bad from None


def _feature_stats(s: dict[str, Any], keys: tuple[str, ...]) -> FeatureStats:
    q = s.get("quantiles")
    if q is not None and not (isinstance(q, list) and all(_num(x) is not None for x in q)):
        raise TypeError(q)
    return FeatureStats(
        **{k: _num(s[k]) for k in keys if k in s},
        quantiles=None if q is None else [float(x) for x in q],
    )


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(v)
    f = float(v)
    return f if math.isfinite(f) else None


def _threshold(props: dict[str, str], origin: str) -> float | None:
    if THRESHOLD_KEY not in props:
        return None
    try:
        value = float(props[THRESHOLD_KEY])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ModelError(
            f"model {origin} metadata {THRESHOLD_KEY} must be a number, got "
            f"{props[THRESHOLD_KEY][:40]!r}"
        )
    return value


def _classes(
    proto: onnx.ModelProto, props: dict[str, str], origin: str
) -> list[int] | list[str] | None:
    """`edgefleet.classes`, else the labels a classifier operator lists (ZipMap's first: it
    names the keys of the probabilities a flow selects)."""
    value = _json(props, CLASSES_KEY, origin)
    if value is not None:
        if isinstance(value, list) and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return value
        raise ModelError(f"model {origin} metadata {CLASSES_KEY} must be a JSON list of labels")
    nodes = sorted(proto.graph.node, key=lambda n: n.op_type != "ZipMap")
    for node in nodes:
        if node.domain != "ai.onnx.ml":
            continue
        for attr in node.attribute:
            if attr.name in _CLASS_ATTRS and (attr.ints or attr.strings):
                if attr.strings:
                    return [s.decode(errors="replace") for s in attr.strings]
                return [int(i) for i in attr.ints]
    return None


def _json(props: dict[str, str], key: str, origin: str) -> Any:
    if key not in props:
        return None
    try:
        return json.loads(props[key])
    except ValueError as exc:
        raise ModelError(f"model {origin} metadata {key} is not valid JSON: {exc}") from None


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    return all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- checking against a flow ----------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the flow delivers to the model (after the preprocess script, when there is one)."""

    features: list[str]  # names as the flow sends them
    width: int  # features per sample the model gets: len(features) without a preprocess script
    window: int
    input_name: str | None = None


@dataclass(frozen=True)
class Fit:
    """How the flow feeds a model that fits it: what the service needs to run it."""

    features: list[str]
    width: int
    input_name: str
    dtype: np.dtype[Any]
    rank: int  # 2: [N, F]; 3: [N, W, F]
    fixed_batch: bool  # the model's batch dimension is 1: feed one sample per run
    selectors: list[Selector]


def check_fits(
    signature: ModelSignature,
    settings: InferenceSettings,
    *,
    width: int | None = None,
    origin: str | None = None,
) -> Fit:
    """Refuse a model that does not fit what the flow feeds it (ModelError naming both sides):
    one float input, its name, dtype, feature count, window, fixed batch, the features it was
    trained on, the outputs the flow selects. ConfigError when neither names the features.

    `width` is what the preprocess script hands the model per sample; None: measured by
    running `settings.preprocess` on one all-zero sample in this process (pass the figure
    from `scripts.measure_width` to keep user code out of the caller's process).
    `origin` names the model in messages (default: the settings' model path or reference).
    """
    origin = origin or str(settings.model.path or settings.model.ref)
    features = flow_features(signature, settings, origin)
    if width is None:
        width = preprocess_width(settings, len(features))
    exp = Expected(features, width, settings.window, settings.model.input)
    fit = _fit_input(signature, exp, origin)
    try:
        selectors = parse_selectors(settings.outputs, signature.output_types())
    except ModelError as exc:
        raise ModelError(f"model {origin}: {exc}") from None
    _check_class_keys(signature, selectors, origin)
    return Fit(features, width, fit.input_name, fit.dtype, fit.rank, fit.fixed_batch, selectors)


def _check_class_keys(signature: ModelSignature, selectors: list[Selector], origin: str) -> None:
    """A key selected from a classifier's probability map must be one of its classes (known
    only when the model lists them); otherwise every result would lack the field."""
    if signature.classes is None:
        return
    types, classes = signature.output_types(), {str(c) for c in signature.classes}
    for sel in selectors:
        if (
            sel.key is not None
            and types[sel.output].startswith("seq(map(")
            and (str(sel.key) not in classes)
        ):
            raise ModelError(
                f"model {origin}: field {sel.field!r} selects class {sel.key!r} of "
                f"{sel.output!r}; the model's classes are {signature.classes}"
            )


def flow_features(signature: ModelSignature, settings: InferenceSettings, origin: str) -> list[str]:
    """The features the flow sends: its own list, else the model's `edgefleet.features`."""
    features = settings.features if settings.features is not None else signature.features
    if not features:
        raise ConfigError(
            f"flow {settings.flow!r} names no features and model {origin} carries no "
            f"{FEATURES_KEY} metadata: list the features in the config"
        )
    return list(features)


def preprocess_width(settings: InferenceSettings, n_features: int) -> int:
    """Features per sample the model gets: what the preprocess script returns for one all-zero
    sample, or `n_features` without a script."""
    if settings.preprocess is None:
        return n_features
    return probe_width(load_script(settings.preprocess, "preprocess"), n_features, settings.window)


@dataclass(frozen=True)
class _InputFit:
    input_name: str
    dtype: np.dtype[Any]
    rank: int
    fixed_batch: bool


def _fit_input(signature: ModelSignature, exp: Expected, origin: str) -> _InputFit:
    """The input half of `check_fits`, for a flow side already resolved."""
    inputs = signature.inputs
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
    dtype = INPUT_DTYPES.get(inp.dtype)
    if dtype is None:
        raise ModelError(
            f"model {origin} input {inp.name!r} is {inp.dtype}; the flow feeds float32 or float64"
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
    trained = signature.features
    if trained is not None and exp.width == len(exp.features) and trained != exp.features:
        raise ModelError(
            f"model {origin} was trained on features {trained}; the flow sends {exp.features}"
        )
    return _InputFit(inp.name, dtype, len(shape), batch == 1)


def _static(dim: Dim) -> int | None:
    """A fixed dimension as an int; symbolic (str) or unknown (None) dimensions are dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else None
