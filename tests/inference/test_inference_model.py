"""Loading, checking and running real exported models, compared with onnxruntime run directly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from services.inference.config import InferenceSettings, ModelSpec
from services.inference.engine import build_engine
from services.inference.model import ModelBlob, resolve_model
from shared.errors import ConfigError, ModelError
from tests.inference import models
from tests.inference.helpers import T0, direct, engine, rows

X = models.training_data(37, seed=5)


def test_isolation_forest_label_and_score(tmp_path: Path) -> None:
    path = models.isolation_forest(tmp_path / "if.onnx")
    eng = engine(path)
    result = eng.infer(rows(X)).result
    ref = direct(path, X)
    assert result is not None
    np.testing.assert_array_equal(result.outputs["label"], ref["label"][:, 0])
    np.testing.assert_array_equal(result.outputs["scores"], ref["scores"][:, 0])
    assert result.ids[0] == f"f1:{T0}" and result.t[0] == T0
    assert result.model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.model.name == "if" and result.latency_us.shape == (len(X),)
    assert eng.model.train_stats is not None and len(eng.model.train_stats["mean"]) == 4
    result.check()


def test_zipmap_classifier_default_fields(tmp_path: Path) -> None:
    path = models.zipmap_classifier(tmp_path / "clf.onnx")
    result = engine(path).infer(rows(X)).result
    ref = direct(path, X)
    assert result is not None
    assert set(result.outputs) == {
        "output_label",
        "output_probability_0",
        "output_probability_1",
        "output_probability_2",
    }
    np.testing.assert_array_equal(result.outputs["output_label"], ref["output_label"])
    for k in range(3):
        expect = np.array([row[k] for row in ref["output_probability"]], np.float32)
        np.testing.assert_array_equal(result.outputs[f"output_probability_{k}"], expect)


def test_zipmap_classifier_selected_fields(tmp_path: Path) -> None:
    path = models.zipmap_classifier(tmp_path / "clf.onnx")
    eng = engine(path, outputs={"label": "output_label", "score": "output_probability[2]"})
    result = eng.infer(rows(X)).result
    ref = direct(path, X)
    assert result is not None and set(result.outputs) == {"label", "score"}
    expect = np.array([row[2] for row in ref["output_probability"]], np.float32)
    np.testing.assert_array_equal(result.outputs["score"], expect)


def test_classifier_without_zipmap_column_selector(tmp_path: Path) -> None:
    path = models.zipmap_classifier(tmp_path / "clf.onnx", zipmap=False)
    result = (
        engine(path, outputs={"p": "probabilities", "p1": "probabilities[1]"}).infer(rows(X)).result
    )
    ref = direct(path, X)
    assert result is not None
    np.testing.assert_array_equal(result.outputs["p"], ref["probabilities"])
    np.testing.assert_array_equal(result.outputs["p1"], ref["probabilities"][:, 1])


def test_float64_pipeline_is_fed_float64(tmp_path: Path) -> None:
    path = models.float64_pipeline(tmp_path / "f64.onnx")
    eng = engine(path)
    assert eng.model.dtype == np.float64
    result = eng.infer(rows(X)).result
    ref = direct(path, X.astype(np.float64))
    assert result is not None
    out = result.outputs["variable"]
    assert out.dtype == np.float64 and out.shape == (len(X),)
    np.testing.assert_array_equal(out, ref["variable"][:, 0])


def test_fixed_batch_one_is_fed_sample_by_sample(tmp_path: Path) -> None:
    path = models.linear(tmp_path / "b1.onnx", batch=1)
    eng = engine(path)
    assert eng.model.fixed_batch
    result = eng.infer(rows(X)).result
    ref = np.concatenate([direct(path, X[i : i + 1])["y"] for i in range(len(X))])
    assert result is not None
    np.testing.assert_array_equal(result.outputs["y"], ref)


def test_window_model(tmp_path: Path) -> None:
    path = models.window_model(tmp_path / "w.onnx", window=5)
    xw = np.random.default_rng(3).normal(size=(11, 5, 4)).astype(np.float32)
    result = engine(path, window=5).infer(rows(xw)).result
    ref = direct(path, xw)
    assert result is not None
    np.testing.assert_array_equal(result.outputs["mean"], ref["mean"])
    np.testing.assert_array_equal(result.outputs["energy"], ref["energy"][:, 0])


@pytest.mark.parametrize(
    ("build", "kw", "words"),
    [
        (
            lambda p: models.window_model(p, window=5),
            {"window": 3},
            ["windows of 5", "windows of 3"],
        ),
        (lambda p: models.window_model(p, window=5), {}, ["windows of 5", "windows of 1"]),
        (lambda p: models.linear(p), {"window": 4}, ["[N, 4, 4]", "'N', 4"]),
        (lambda p: models.linear(p, f=3), {}, ["takes 3 features", "feeds 4"]),
        (lambda p: models.two_inputs(p), {}, ["2 inputs ['a', 'b']", "one input"]),
        (lambda p: models.linear(p, batch=4), {}, ["fixed batch of 4"]),
        (lambda p: models.linear(p, dtype=TensorProto.INT64), {}, ["tensor(int64)", "float32"]),
        (lambda p: models.linear(p), {"model_input": "input"}, ["named 'x'", "'input'"]),
        (
            lambda p: models.isolation_forest(p, features=["a", "b", "c", "d"]),
            {},
            ["['a', 'b', 'c', 'd']", "'pressure', 'temp'"],
        ),
        (
            lambda p: models.isolation_forest(p),
            {"outputs": {"s": "score"}},
            ["'score'", "'scores'"],
        ),
    ],
)
def test_mismatch_is_refused_naming_both_sides(tmp_path: Path, build, kw, words) -> None:  # type: ignore[no-untyped-def]
    path = build(tmp_path / "m.onnx")
    spec = ModelSpec(path=path, input=kw.pop("model_input", None))
    settings = InferenceSettings(flow="f1", model=spec, features=models.FEATURES, **kw)
    with pytest.raises(ModelError) as err:
        build_engine(settings)
    for word in words:
        assert word in str(err.value)


def test_features_come_from_model_metadata(tmp_path: Path) -> None:
    path = models.isolation_forest(tmp_path / "if.onnx")
    eng = build_engine(InferenceSettings(flow="f1", model=ModelSpec(path=path)))
    assert eng.features == models.FEATURES


def test_no_features_anywhere_is_a_config_error(tmp_path: Path) -> None:
    path = models.linear(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="names no features"):
        build_engine(InferenceSettings(flow="f1", model=ModelSpec(path=path)))


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "text", "empty", "missing"])
def test_unusable_file_is_refused(tmp_path: Path, damage: str) -> None:
    good = models.isolation_forest(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "bad.onnx"
    content = {
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(b ^ 0x5A for b in good[:200]) + good[200:],
        "text": b"name,value\npressure,1.0\n",
        "empty": b"",
    }
    if damage in content:
        path.write_bytes(content[damage])
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        engine(path)


def test_library_reference_waits_for_the_cache() -> None:
    with pytest.raises(ModelError, match="pump-ae@3"):
        resolve_model(ModelSpec(ref="pump-ae@3"))


def test_a_model_source_can_resolve_references(tmp_path: Path) -> None:
    data = models.isolation_forest(tmp_path / "if.onnx").read_bytes()

    def cache(spec: ModelSpec) -> ModelBlob:
        name, version = str(spec.ref).split("@")
        return ModelBlob(data, name, version, f"cache:{spec.ref}")

    settings = InferenceSettings(
        flow="f1", model=ModelSpec(ref="pump-ae@3"), features=models.FEATURES
    )
    eng = build_engine(settings, source=cache)
    assert (eng.model.ref.name, eng.model.ref.version) == ("pump-ae", "3")


def test_nan_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    path = models.isolation_forest(tmp_path / "if.onnx")
    x = X[:6].copy()
    x[1, 2], x[4, 0] = np.nan, np.inf
    eng = engine(path)
    result = eng.infer(rows(x)).result
    keep = [0, 2, 3, 5]
    assert result is not None and eng.stats.skipped_nan == 2
    np.testing.assert_array_equal(result.t, T0 + np.array(keep) * 100_000_000)
    np.testing.assert_array_equal(result.outputs["scores"], direct(path, x[keep])["scores"][:, 0])
    all_nan = np.full((3, 4), np.nan, np.float32)
    assert eng.infer(rows(all_nan)).result is None and eng.stats.skipped_nan == 5


def test_results_that_are_not_numbers_are_dropped_counted_and_said(tmp_path: Path) -> None:
    path = models.log_of_inputs(tmp_path / "log.onnx")
    x = np.abs(X[:6]) + 0.5
    x[1, 0], x[4, 2] = -1.0, 0.0  # ln: NaN, -inf
    eng = engine(path)
    outcome = eng.infer(rows(x))
    keep = [0, 2, 3, 5]
    assert outcome.result is not None and eng.stats.nan_outputs == 2
    np.testing.assert_array_equal(outcome.result.t, T0 + np.array(keep) * 100_000_000)
    assert np.isfinite(outcome.result.outputs["y"]).all()
    assert outcome.error is not None
    assert "2 of 6 samples" in outcome.error and "not a number" in outcome.error
    assert "'y'" in outcome.error  # the output that gave it
    assert eng.stats.results == 4
    every = eng.infer(rows(-np.ones((3, 4), np.float32)))
    assert every.result is None and every.error is not None and eng.stats.nan_outputs == 5


def test_nan_samples_can_be_passed_to_the_model(tmp_path: Path) -> None:
    path = models.linear(tmp_path / "m.onnx")
    x = X[:4].copy()
    x[2, 1] = np.nan
    eng = engine(path, on_nan="pass")
    result = eng.infer(rows(x)).result
    assert result is not None and len(result) == 4 and eng.stats.skipped_nan == 0
    assert np.isnan(result.outputs["y"][2]).all()
    np.testing.assert_array_equal(result.outputs["y"], direct(path, x)["y"])
