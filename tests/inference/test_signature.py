"""Model signatures read from real exports, in this process and isolated; every refusal of a file
that cannot serve; `check_fits` accepting a flow that fits and refusing one that does not."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from services.inference.config import InferenceSettings, ModelSpec
from services.inference.isolated import run_isolated
from services.inference.signature import (
    ModelSignature,
    check_fits,
    inspect_model,
    inspect_model_async,
    read_signature,
)
from shared.errors import ConfigError, ModelError
from tests.inference import models
from tests.inference.helpers import segfault


def settings(ref: str = "m@1", **kw: object) -> InferenceSettings:
    return InferenceSettings.model_validate({"flow": "f1", "model": {"ref": ref}, **kw})


def test_isolation_forest_signature(tmp_path: Path) -> None:
    sig = read_signature(models.isolation_forest(tmp_path / "if.onnx"))
    assert [(i.name, i.dtype, i.shape) for i in sig.inputs] == [("X", "tensor(float)", [None, 4])]
    assert [(o.name, o.dtype) for o in sig.outputs] == [
        ("label", "tensor(int64)"),
        ("scores", "tensor(float)"),
    ]
    assert sig.opset == {"ai.onnx": 17, "ai.onnx.ml": 3} and sig.producer_name == "skl2onnx"
    assert sig.features == models.FEATURES and sig.train_stats is not None
    assert list(sig.train_stats) == models.FEATURES
    assert sig.train_stats["temp"].std is not None and sig.train_stats["temp"].min is None
    assert json.loads(sig.metadata["edgefleet.features"]) == models.FEATURES


def test_signature_round_trips_through_json(tmp_path: Path) -> None:
    sig = read_signature(models.isolation_forest(tmp_path / "if.onnx"))
    assert ModelSignature.model_validate_json(sig.model_dump_json()) == sig
    with pytest.raises(ValueError, match="frozen"):
        sig.threshold = 1.0


def test_inspect_model_gives_the_same_signature_isolated(tmp_path: Path) -> None:
    path = models.isolation_forest(tmp_path / "if.onnx")
    assert inspect_model(path, timeout_s=30) == read_signature(path)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("truncated", ["not a valid ONNX model", "truncated, corrupt"]),
        ("corrupt", ["not a valid ONNX model"]),
        ("text", ["not a valid ONNX model", "a text file"]),
        ("empty", ["is an empty file"]),
        ("missing", ["cannot read model file"]),
    ],
)
def test_a_file_that_cannot_serve_is_refused(tmp_path: Path, damage: str, words: list[str]) -> None:
    good = models.isolation_forest(tmp_path / "good.onnx").read_bytes()
    content = {
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(b ^ 0x5A for b in good[:200]) + good[200:],
        "text": b"name,value\npressure,1.0\n",
        "empty": b"",
    }
    path = tmp_path / "bad.onnx"
    if damage in content:
        path.write_bytes(content[damage])
    for read in (read_signature, lambda p: inspect_model(p, timeout_s=30)):
        with pytest.raises(ModelError) as err:
            read(path)
        assert "bad.onnx" in str(err.value)
        for word in words:
            assert word in str(err.value)


def test_a_model_onnxruntime_refuses_is_refused(tmp_path: Path) -> None:
    # Valid protobuf, valid onnx.checker-free graph, an operator that does not exist.
    path = models.unknown_operator(tmp_path / "odd.onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load it"):
        inspect_model(path, timeout_s=30)


def test_a_model_that_hangs_is_refused_within_the_timeout(tmp_path: Path) -> None:
    path = models.hanging(tmp_path / "hangs.onnx")
    began = time.monotonic()
    with pytest.raises(ModelError, match=r"hangs\.onnx did not finish .* within 2 s"):
        inspect_model(path, timeout_s=2)
    assert time.monotonic() - began < 10
    assert read_signature(path).inputs[0].name == "x"  # loading alone is fine: the run hangs


async def test_inspect_model_async_keeps_the_loop_running(tmp_path: Path) -> None:
    good = models.torch_export(tmp_path / "pt.onnx")
    assert (await inspect_model_async(good, timeout_s=30)) == read_signature(good)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(ModelError, match="did not finish"):
            await inspect_model_async(models.hanging(tmp_path / "h.onnx"), timeout_s=1.5)
    finally:
        ticker.cancel()
    assert ticks >= 10  # the event loop went on while the child hung


def test_a_crash_in_the_isolated_process_is_an_error_not_a_dead_caller() -> None:
    with pytest.raises(ModelError, match=r"model m\.onnx crashed the process .*SIGSEGV"):
        run_isolated(segfault, None, 30, "model m.onnx", "loading")


def test_malformed_edgefleet_metadata_is_refused(tmp_path: Path) -> None:
    for key, value, words in [
        ("edgefleet.features", "[1, 2]", "list of feature names"),
        ("edgefleet.features", "not json", "not valid JSON"),
        ("edgefleet.train_stats", '{"mean": "high"}', "edgefleet.train_stats must be"),
        ("edgefleet.threshold", "high", "edgefleet.threshold must be a number"),
        ("edgefleet.classes", '{"a": 1}', "edgefleet.classes must be"),
    ]:
        path = models.linear(tmp_path / "m.onnx", metadata={key: value})
        with pytest.raises(ModelError, match=words):
            read_signature(path)


def test_check_fits_on_a_fitting_flow(tmp_path: Path) -> None:
    sig = read_signature(models.isolation_forest(tmp_path / "if.onnx"))
    fit = check_fits(sig, settings(outputs={"score": "scores", "anomaly": "label"}))
    assert fit.features == models.FEATURES and fit.input_name == "X" and fit.rank == 2
    assert [s.output for s in fit.selectors] == ["scores", "label"]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"features": ["a", "b", "c", "d"]}, ["trained on features", "['a', 'b', 'c', 'd']"]),
        ({"features": ["a", "b", "c"]}, ["takes 4 features", "feeds 3"]),
        ({"window": 5}, ["shape [None, 4]", "[N, 5, 4]"]),
        ({"outputs": {"s": "score"}}, ["'score'", "'scores'"]),
        ({"model": {"ref": "m@1", "input": "input.1"}}, ["named 'X'", "'input.1'"]),
    ],
)
def test_check_fits_refuses_naming_both_sides(
    tmp_path: Path, kw: dict[str, Any], words: list[str]
) -> None:
    sig = read_signature(models.isolation_forest(tmp_path / "if.onnx"))
    with pytest.raises(ModelError) as err:
        check_fits(sig, settings(**kw))
    assert "model m@1" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_check_fits_without_features_anywhere_is_a_config_error(tmp_path: Path) -> None:
    sig = read_signature(models.linear(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError, match="names no features"):
        check_fits(sig, settings())


def test_check_fits_measures_a_preprocess_script(tmp_path: Path) -> None:
    """A script that adds a feature: the model takes 5 columns while the flow sends 4."""
    script = tmp_path / "pre.py"
    script.write_text(
        "import numpy as np\n\n"
        "def preprocess(x):\n"
        "    return np.concatenate([x, x[:, :1] ** 2], axis=1)\n"
    )
    sig = read_signature(models.linear(tmp_path / "m.onnx", f=5))
    spec = ModelSpec(ref="m@1")
    flow = InferenceSettings(flow="f1", model=spec, features=models.FEATURES, preprocess=script)
    assert check_fits(sig, flow).width == 5
    assert check_fits(sig, flow, width=5).width == 5
    with pytest.raises(ModelError, match="takes 5 features"):
        check_fits(sig, flow.model_copy(update={"preprocess": None}))
