"""The fleet demo's broken model version: it has the good model's metadata (features, train
stats), so the library and the flow accept it, and it runs on all-zero inputs, so the agent's
trial run passes; but on real data its Reshape asks for a shape that depends on the values (the
kind of export bug only real data shows) and every run fails. Inference then yields no result,
and the agent's health gate rolls the version back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
WRONG_ROWS = 1_000_003  # a row count no batch of a few samples fills


def broken_model(good: Path, out: Path) -> Path:
    """`out`: a model with `good`'s inputs, outputs and metadata that fails on non-zero input."""
    model = onnx.load(str(good))
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    consts: dict[str, np.ndarray[Any, Any]] = {
        "ef_zero": np.array(0.0, np.float32),
        "ef_rows": np.array(WRONG_ROWS, np.int64),
        "ef_rest": np.array([-1], np.int64),
        "ef_axis0": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Abs", ["x"], ["ef_abs"]),
        helper.make_node("ReduceMax", ["ef_abs"], ["ef_max"], keepdims=0),
        helper.make_node("Greater", ["ef_max", "ef_zero"], ["ef_nonzero"]),
        helper.make_node("Cast", ["ef_nonzero"], ["ef_k"], to=TensorProto.INT64),
        # zeros: [0, -1], i.e. the input's own rows; real data: [1000003, -1], which fails
        helper.make_node("Mul", ["ef_k", "ef_rows"], ["ef_n"]),
        helper.make_node("Unsqueeze", ["ef_n", "ef_axis0"], ["ef_n1"]),
        helper.make_node("Concat", ["ef_n1", "ef_rest"], ["ef_shape"], axis=0),
        helper.make_node("Reshape", ["x", "ef_shape"], ["ef_x"]),
        helper.make_node("Mul", ["ef_x", "ef_x"], ["ef_sq"]),
        helper.make_node("ReduceMean", ["ef_sq"], ["error"], axes=[1], keepdims=0),
        helper.make_node("Identity", ["error"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pump_anomaly_broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("error", TensorProto.FLOAT, [None]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    broken = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    broken.ir_version = model.ir_version
    metadata = {p.key: p.value for p in model.metadata_props}
    metadata["edgefleet.trained_on"] = "a broken export"
    helper.set_model_props(broken, metadata)
    onnx.checker.check_model(broken)
    out.write_bytes(broken.SerializeToString())
    return out
