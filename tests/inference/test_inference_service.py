"""The inference service against a real mosquitto: samples in, results out, faults reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import cli
from services.inference.config import InferenceConfig
from services.inference.service import main
from shared import codec
from shared.config import validate
from shared.messages import ResultBatch
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.inference import models
from tests.inference.helpers import T0, direct, samples

X = models.training_data(24, seed=11)


def config(base: dict[str, Any], model: Path, **kw: Any) -> InferenceConfig:
    data = {
        **base,
        "instance": "inference-f1",
        "flow": "f1",
        "model": {"path": str(model)},
        "features": models.FEATURES,
        **kw,
    }
    return validate(InferenceConfig, data, "test")


async def start(probe: Probe, site: str) -> Topics:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    await probe.wait_for(topics.status("inference-f1"), lambda s: s["state"] == "online")
    return topics


async def test_results_match_onnxruntime(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    topics = Topics(site)
    async with running(main(config(base_config, model))):
        await start(probe, site)
        for i in range(3):
            await probe.publish(
                topics.samples("f1"), samples(X[i * 8 : i * 8 + 8], t0=T0 + i).to_wire()
            )
        # Batches may merge: wait until every one of the 24 samples has a result.
        await probe.wait_for(
            topics.results("f1"),
            lambda _: sum(len(w["t"]) for w in probe.decoded(topics.results("f1"))) >= 24,
        )
    wires = probe.decoded(topics.results("f1"))
    results = [ResultBatch.from_wire(w) for w in wires]
    scores = np.concatenate([r.outputs["scores"] for r in results])
    np.testing.assert_array_equal(scores, direct(model, X)["scores"][:, 0])
    first = results[0]
    assert first.ids[0] == f"f1:{T0}" and first.model.name == "if"
    assert (np.concatenate([r.latency_us for r in results]) > 0).all()


async def test_json_results_write_nan_as_null(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.linear(tmp_path / "lin.onnx")
    topics = Topics(site)
    x = X[:3].copy()
    x[1, 0] = np.nan
    async with running(main(config(base_config, model, encoding="json", on_nan="pass"))):
        await start(probe, site)
        await probe.publish(topics.samples("f1"), samples(x).to_wire())
        await probe.wait_for(topics.results("f1"))
    [message] = probe.received(topics.results("f1"))
    assert message.content_type == codec.JSON
    body = codec.decode(message.payload, message.content_type)
    assert body["outputs"]["y"][1] == [None, None] and body["time"][0].startswith(
        "2023-11-14T22:13:20"
    )
    np.testing.assert_allclose(body["outputs"]["y"][0], direct(model, x[:1])["y"][0], rtol=1e-6)


async def test_nan_samples_skipped_and_counted(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    topics = Topics(site)
    x = X[:4].copy()
    x[2, 3] = np.inf
    async with running(main(config(base_config, model))):
        await start(probe, site)
        await probe.publish(topics.samples("f1"), samples(x).to_wire())
        [result] = await probe.wait_for(topics.results("f1"))
        [status] = await probe.wait_for(
            topics.status("inference-f1"),
            lambda s: s["health"].get("inference", {}).get("skipped_nan") == 1,
        )
    assert len(result["t"]) == 3 and status["health"]["inference"]["results"] == 3


async def test_malformed_samples_are_reported(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    topics = Topics(site)
    async with running(main(config(base_config, model))):
        await start(probe, site)
        await probe.publish_raw(topics.samples("f1"), b"\xc1not msgpack")
        wrong = samples(X[:2, :3], features=["a", "b", "c"])
        await probe.publish(topics.samples("f1"), wrong.to_wire())
        errors = await probe.wait_for(topics.errors("inference-f1"), count=2)
        await probe.publish(topics.samples("f1"), samples(X[:2]).to_wire())
        await probe.wait_for(topics.results("f1"))
    reasons = " | ".join(e["reason"] for e in errors)
    assert "not valid msgpack" in reasons and "['a', 'b', 'c']" in reasons


async def test_a_raising_script_leaves_the_service_running(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    pre = tmp_path / "pre.py"
    pre.write_text(
        "def preprocess(x):\n    if (x > 100).any():\n        raise ValueError('too big')\n"
        "    return x\n"
    )
    topics = Topics(site)
    async with running(main(config(base_config, model, preprocess=str(pre)))):
        await start(probe, site)
        await probe.publish(topics.samples("f1"), samples(X[:2] + 1000).to_wire())
        [error] = await probe.wait_for(topics.errors("inference-f1"))
        await probe.publish(topics.samples("f1"), samples(X[:2], t0=T0 + 5).to_wire())
        [result] = await probe.wait_for(topics.results("f1"))
    assert "ValueError: too big" in error["reason"]
    assert result["t"].tolist() == [T0 + 5, T0 + 5 + 100_000_000]


def test_cli_runs_inference_and_refuses_a_model_that_does_not_fit(
    tmp_path: Path, capsys: Any
) -> None:
    model = models.linear(tmp_path / "m3.onnx", f=3)
    cfg = tmp_path / "inference.yaml"
    cfg.write_text(
        f"site: s1\ninstance: inference-f1\nflow: f1\nmodel: {{path: {model}}}\n"
        f"features: {models.FEATURES}\nbroker: {{port: 1}}\n"
    )
    assert cli.main(["run", "inference", "--config", str(cfg), "--check"]) == 0
    assert cli.main(["run", "inference", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "takes 3 features" in err and "feeds 4" in err
