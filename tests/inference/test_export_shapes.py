"""The shapes data scientists export, through the signature: each one read in this process and
isolated, `check_fits` accepting a flow that fits it and refusing one that does not with the
reason, and the inference engine serving the flow `check_fits` accepted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference.config import InferenceSettings
from services.inference.engine import build_engine
from services.inference.signature import check_fits, inspect_model, read_signature
from shared.errors import ModelError
from tests.inference import models
from tests.inference.helpers import rows

F = models.FEATURES


@dataclass(frozen=True)
class Shape:
    build: Callable[[Path], Path]
    fits: dict[str, Any]  # flow keys that fit the model
    unfit: dict[str, Any]  # flow keys that do not
    reason: list[str]  # words of the refusal
    signature: dict[str, Any] = field(default_factory=dict)  # expected signature fields
    window: int = 1


SHAPES = {
    "isolation_forest": Shape(
        models.isolation_forest,
        {"outputs": {"score": "scores", "anomaly": "label"}},
        {"features": ["a", "b", "c", "d"]},
        ["trained on features", "['a', 'b', 'c', 'd']"],
        {"outputs": ["label", "scores"], "producer_name": "skl2onnx"},
    ),
    "random_forest_zipmap": Shape(
        models.random_forest,
        {"outputs": {"label": "output_label", "p_fault": "output_probability[2]"}},
        {"outputs": {"p_fault": "output_probability[7]"}},
        ["selects class 7", "classes are [0, 1, 2]"],
        {"classes": [0, 1, 2], "output_dtype": "seq(map(int64,tensor(float)))"},
    ),
    "pca_float64": Shape(
        models.pca_pipeline,
        {},  # features from the model's metadata
        {"features": F[:3]},
        ["takes 4 features", "feeds 3"],
        {"input_dtype": "tensor(double)", "outputs": ["variable"]},
    ),
    "autoencoder_batch_1": Shape(
        models.autoencoder,
        {"outputs": {"score": "score"}},
        {"window": 5},
        ["has shape [1, 4]", "[N, 5, 4]"],
        {"input_shape": [1, 4], "threshold": 0.8},
    ),
    "window_model": Shape(
        lambda p: models.window_model(p, window=5),
        {"features": F, "window": 5},
        {"features": F, "window": 3},
        ["windows of 5 samples", "windows of 3"],
        {"input_shape": ["N", 5, 4]},
        window=5,
    ),
    "pytorch_export": Shape(
        models.torch_export,
        {"outputs": {"score": "9"}, "model": {"path": "m.onnx", "input": "input.1"}},
        {"outputs": {"score": "output"}},
        ["selects output 'output'", "['9']"],
        {"input_shape": ["batch_size", 4], "producer_name": "pytorch", "threshold": 0.5},
    ),
}


def flow(path: Path, keys: dict[str, Any]) -> InferenceSettings:
    data = {"flow": "f1", "model": {"path": str(path)}, **keys}
    if "model" in keys:
        data["model"] = {**keys["model"], "path": str(path)}
    return InferenceSettings.model_validate(data)


@pytest.mark.parametrize("name", list(SHAPES))
def test_signature_of_each_export(tmp_path: Path, name: str) -> None:
    shape = SHAPES[name]
    path = shape.build(tmp_path / "m.onnx")
    sig = read_signature(path)
    assert inspect_model(path, timeout_s=60) == sig  # isolated, with its trial run on zeros
    assert sig.opset["ai.onnx"] == 17 and sig.ir_version >= 8 and len(sig.inputs) == 1
    want = shape.signature
    if "outputs" in want:
        assert [o.name for o in sig.outputs] == want["outputs"]
    if "input_dtype" in want:
        assert sig.inputs[0].dtype == want["input_dtype"]
    if "input_shape" in want:
        assert sig.inputs[0].shape == want["input_shape"]
    if "output_dtype" in want:
        assert sig.outputs[-1].dtype == want["output_dtype"]
    for key in ("classes", "threshold", "producer_name"):
        if key in want:
            assert getattr(sig, key) == want[key]


@pytest.mark.parametrize("name", list(SHAPES))
def test_check_fits_accepts_a_fitting_flow_and_the_engine_serves_it(
    tmp_path: Path, name: str
) -> None:
    shape = SHAPES[name]
    path = shape.build(tmp_path / "m.onnx")
    settings = flow(path, shape.fits)
    fit = check_fits(read_signature(path), settings)
    assert fit.features == F
    engine = build_engine(settings)
    assert engine.model.input_name == fit.input_name
    assert engine.model.fixed_batch == (name == "autoencoder_batch_1")
    n = 7
    shape_x = (n, len(F)) if shape.window == 1 else (n, shape.window, len(F))
    x = np.random.default_rng(0).normal(size=shape_x).astype(np.float32)
    result = engine.infer(rows(x)).result
    assert result is not None and len(result) == n
    if shape.fits.get("outputs"):
        assert set(result.outputs) == set(shape.fits["outputs"])


@pytest.mark.parametrize("name", list(SHAPES))
def test_check_fits_refuses_a_flow_that_does_not_fit_with_the_reason(
    tmp_path: Path, name: str
) -> None:
    shape = SHAPES[name]
    path = shape.build(tmp_path / "m.onnx")
    settings = flow(path, shape.unfit)
    with pytest.raises(ModelError) as err:
        check_fits(read_signature(path), settings)
    for word in shape.reason:
        assert word in str(err.value), str(err.value)
    with pytest.raises(ModelError) as served:  # the node refuses it for the same reason
        build_engine(settings)
    assert str(served.value) == str(err.value)
