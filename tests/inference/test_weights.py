"""Opening a model for a check with its weights as views of the buffer (weights.py): the same
signature and the same outputs as the plain load, None for what it does not take, and the
same verdict as the plain load on damaged files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.inference.isolated import run_isolated
from services.inference.signature import open_for_check, read_signature, signature_of
from services.inference.weights import MIN_EXTERNAL, split_weights
from shared.errors import ModelError
from tests.inference import models
from tests.inference.helpers import damage_and_compare


def test_large_weights_are_taken_out_and_the_session_computes_the_same(tmp_path: Path) -> None:
    data = models.heavy(tmp_path / "heavy.onnx").read_bytes()
    split = split_weights(data)
    assert split is not None
    assert split.names == ["w1", "w2"]  # "bias" (4 bytes) stays inline
    assert [a.dtype for a in split.arrays] == [np.float32, np.float64]
    assert all(a.nbytes >= MIN_EXTERNAL for a in split.arrays)
    assert len(split.model) < 1024 < MIN_EXTERNAL * 2 < len(data)
    session, proto, _views = open_for_check(data, "heavy.onnx")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    plain = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], plain.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5
    )
    assert signature_of(data, session, proto, "heavy.onnx") == read_signature(data, "heavy.onnx")


@pytest.mark.parametrize(
    "make",
    [
        models.isolation_forest,
        models.zipmap_classifier,
        models.float64_pipeline,
        models.pca_pipeline,
        models.autoencoder,
        models.torch_export,
        lambda p: models.window_model(p, 8),
        models.heavy,
    ],
)
def test_every_exported_shape_gets_the_plain_loads_signature(make: Any, tmp_path: Path) -> None:
    data = make(tmp_path / "m.onnx").read_bytes()
    session, proto, _views = open_for_check(data, "m.onnx")
    assert signature_of(data, session, proto, "m.onnx") == read_signature(data, "m.onnx")


def test_a_model_without_large_raw_weights_is_left_to_the_plain_load(tmp_path: Path) -> None:
    data = models.isolation_forest(tmp_path / "if.onnx").read_bytes()
    assert split_weights(data) is None
    assert split_weights(b"") is None and split_weights(b"\xff" * 64) is None
    _, _, views = open_for_check(data, "if.onnx")
    assert views is None


def test_a_weight_whose_size_does_not_match_its_dims_is_refused_as_the_plain_load_does(
    tmp_path: Path,
) -> None:
    model = onnx.load(models.heavy(tmp_path / "heavy.onnx"))
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w1.raw_data += bytes(4)  # one float more than its dims [4, 8192] hold
    data = model.SerializeToString()
    with pytest.raises(ModelError) as plain:
        read_signature(data, "bad.onnx")
    with pytest.raises(ModelError) as check:
        open_for_check(data, "bad.onnx")
    assert str(check.value) == str(plain.value)


def test_damaged_files_get_the_plain_loads_verdict() -> None:
    assert run_isolated(damage_and_compare, 7, 600, "damaged copies", "loading") == []
