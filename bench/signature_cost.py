"""Cost of reading a model's signature, as the library does on push: in this process
(`read_signature`: onnx parse + onnxruntime session) and isolated (`inspect_model`: a child
process, with and without its trial run on zeros).

Raw limit in the same run: an onnxruntime session of the same bytes, which any check must pay.

    PYTHONPATH=. .venv/bin/python bench/signature_cost.py [--mb 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from services.inference.signature import inspect_model, read_signature


def big_model(path: Path, mb: int, f: int = 4) -> Path:
    """x [N, f] @ w [f, H]: one initializer of `mb` MB, the size of a large exported model."""
    h = mb * 1_000_000 // (4 * f)
    w = np.random.default_rng(0).normal(size=(f, h)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", h])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = big_model(Path(tmp) / "big.onnx", args.mb)
        data = path.read_bytes()
        raw = median_ms(
            lambda: ort.InferenceSession(data, providers=["CPUExecutionProvider"]), args.repeat
        )
        rows = {
            "onnx parse": median_ms(lambda: onnx.load_model_from_string(data), args.repeat),
            "read_signature": median_ms(lambda: read_signature(path), args.repeat),
            "inspect_model, no run": median_ms(
                lambda: inspect_model(path, 300, trial_run=False), args.repeat
            ),
            "inspect_model": median_ms(lambda: inspect_model(path, 300), args.repeat),
        }
    print(f"model of {len(data) / 1e6:.0f} MB; raw onnxruntime session: {raw:.0f} ms (median)")
    for name, ms in rows.items():
        print(f"  {name:<24} {ms:7.0f} ms  {ms / raw:5.2f}× the raw session")


if __name__ == "__main__":
    main()
