"""Small builders shared by the inference tests."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from services.inference.batching import Pending, Rows, rows_of
from services.inference.config import InferenceSettings, ModelSpec
from services.inference.engine import Engine, build_engine
from services.inference.signature import open_for_check, open_session, signature_of
from shared.errors import ModelError
from shared.messages import SampleBatch
from tests.inference import models
from tests.inference.models import FEATURES

T0 = 1_700_000_000_000_000_000


def samples(
    x: np.ndarray[Any, Any], flow: str = "f1", t0: int = T0, features: list[str] | None = None
) -> SampleBatch:
    x = np.asarray(x, np.float32)
    n = len(x)
    return SampleBatch(
        flow,
        features or FEATURES[: x.shape[-1]],
        t0 + np.arange(n, dtype=np.int64) * 100_000_000,
        x,
        np.zeros(x.shape, np.uint8),
        np.zeros(x.shape, np.float32),
    )


def rows(x: np.ndarray[Any, Any], t0: int = T0) -> Rows:
    return rows_of([Pending(samples(x, t0=t0), 0)])


def engine(path: Path, **kw: Any) -> Engine:
    kw.setdefault("features", FEATURES)
    return build_engine(InferenceSettings(flow="f1", model=ModelSpec(path=path), **kw))


def direct(path: Path, x: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The outputs of onnxruntime run directly, the reference every test compares with."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))


def segfault(_: object) -> None:
    """Crash the process for real, as a fault inside onnxruntime would: read address 0."""
    ctypes.string_at(0)


# Work for the isolated child processes (importable there by name, unlike a test module's).
def echo(arg: Any) -> Any:
    return {"pid": os.getpid(), "arg": arg}


def niceness(_: Any) -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def noisy(_: Any) -> str:
    print("printed by the work, not an answer", flush=True)
    os.write(1, b"written to fd 1\n")
    return "answer"


def hang(marker: str | None) -> None:
    if marker:
        Path(marker).touch()  # the call has begun
    signal.pause()


def huge(_: Any) -> str:
    return "x" * (17 << 20)  # past the warm child's answer limit


def _verdict(open_: Any, data: bytes) -> str:
    try:
        session, proto, *_ = open_(data, "m.onnx")
        return signature_of(data, session, proto, "m.onnx").model_dump_json()
    except ModelError as exc:
        return f"refused: {exc}"


def damage_and_compare(seed: int) -> list[str]:
    """In a child process (onnxruntime may abort on a damaged file): 300 damaged copies of a
    model with large weights (cut anywhere, bytes changed in the structure around the
    weights, a length varint changed); the two loads' verdicts, where they differ."""
    import tempfile

    def plain(data: bytes, origin: str) -> Any:
        return open_session(data, origin)

    with tempfile.TemporaryDirectory() as tmp:
        good = models.heavy(Path(tmp) / "m.onnx").read_bytes()
    rng = np.random.default_rng(seed)
    structure = [*range(0, 200), *range(len(good) - 1500, len(good))]
    differ = []
    for i in range(300):
        data = bytearray(good)
        kind = i % 3
        if kind == 0:
            data = data[: int(rng.integers(1, len(good)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                at = structure[int(rng.integers(len(structure)))]
                data[at] = int(rng.integers(256)) if kind == 1 else data[at] ^ 0x80
        one, two = _verdict(plain, bytes(data)), _verdict(open_for_check, bytes(data))
        if one != two:
            differ.append(f"damage {i}: plain {one[:120]!r}, check {two[:120]!r}")
    return differ
