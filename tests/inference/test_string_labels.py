"""A scikit-learn classifier exported by skl2onnx with string classes, through the data plane:
the label as the model gives it in results (msgpack and JSON), the class list from the model,
an actuator condition on the label, the forwarder's SQLite history storing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlite_utils

from services.actuator.expr import Condition
from services.actuator.service import ActuatorService
from services.forwarder.service import main as forwarder_main
from services.inference.service import main as inference_main
from shared.messages import ResultBatch
from shared.topics import Topics
from tests.forwarder.test_delivery import forwarder_config, sink_health
from tests.helpers import Probe, running
from tests.inference import models
from tests.inference.helpers import direct, engine, rows, samples
from tests.inference.test_inference_service import config

X = models.training_data(40, seed=5)
CLASSES = sorted(models.STRING_CLASSES)  # scikit-learn orders its classes


def test_engine_carries_string_labels_and_reads_the_class_list(tmp_path: Path) -> None:
    path = models.zipmap_classifier(tmp_path / "clf.onnx", strings=True)
    eng = engine(path)
    assert eng.model.signature.classes == CLASSES  # from the ZipMap / LinearClassifier node
    result = eng.infer(rows(X)).result
    assert result is not None
    ref = direct(path, X)
    labels = result.outputs["output_label"]
    assert labels.dtype.kind == "U" and labels.tolist() == list(ref["output_label"])
    assert {f"output_probability_{c}" for c in CLASSES} <= set(result.outputs)
    chosen = engine(path, outputs={"label": "output_label", "p": "output_probability[cavitation]"})
    picked = chosen.infer(rows(X)).result
    assert picked is not None and set(picked.outputs) == {"label", "p"}
    assert picked.outputs["p"].tolist() == pytest.approx(
        [row["cavitation"] for row in ref["output_probability"]]
    )


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_string_labels_reach_conditions_and_the_history(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path, encoding: str
) -> None:
    model = models.zipmap_classifier(tmp_path / "clf.onnx", strings=True)
    topics = Topics(site)
    outputs = {"label": "output_label", "p_cavitation": "output_probability[cavitation]"}
    inference = config(base_config, model, outputs=outputs, encoding=encoding)
    history = tmp_path / "history.db"
    sinks = [{"kind": "sqlite", "name": "history", "path": str(history)}]
    forwarder = forwarder_config(base_config, tmp_path, sinks)
    await probe.subscribe(topics.everything())
    async with running(forwarder_main(forwarder)), running(inference_main(inference)):
        await probe.wait_for(topics.status("inference-f1"), lambda s: s["state"] == "online")
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        await probe.publish(topics.samples("f1"), samples(X).to_wire(), qos=1)
        await probe.wait_for(
            topics.results("f1"),
            lambda _: sum(len(w["t"]) for w in probe.decoded(topics.results("f1"))) >= len(X),
        )
        [status] = await probe.wait_for(
            topics.status("inference-f1"),
            lambda s: s["health"]["inference"]["model"]["health"]["outputs"].get("label"),
        )
        await probe.wait_for(
            topics.status("fwd"), sink_health("history", lambda h: h["sent"] == len(X))
        )
    [message] = probe.received(topics.results("f1"))
    assert message.content_type == f"application/{encoding}"
    batches = [ResultBatch.from_wire(w) for w in probe.decoded(topics.results("f1"))]
    labels = np.concatenate([b.outputs["label"] for b in batches])
    expected = list(direct(model, X)["output_label"])
    assert labels.tolist() == expected and "cavitation" in expected

    model_status = status["health"]["inference"]["model"]
    assert model_status["classes"] == CLASSES
    counts = model_status["health"]["outputs"]["label"]["counts"]
    assert sum(counts.values()) == len(X) and set(counts) <= set(CLASSES)

    cavitation = Condition.compile('label == "cavitation" and p_cavitation > 0.5')
    columns = ActuatorService.columns(batches[0])
    fired = cavitation(columns, len(batches[0]))
    want = (batches[0].outputs["label"] == "cavitation") & (
        batches[0].outputs["p_cavitation"] > 0.5
    )
    assert fired.tolist() == want.tolist() and fired.any()

    stored = [
        json.loads(r["outputs"])["label"]
        for r in sqlite_utils.Database(history).query("SELECT outputs FROM results ORDER BY t")
    ]
    assert stored == expected
