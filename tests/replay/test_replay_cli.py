"""`edgefleet recording from-csv` then `edgefleet replay`, as a data scientist runs them: a CSV of
plant data with a labelled anomaly, the flow with one model against another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from tests.inference import models

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def score_model(path: Path, weight: float) -> Path:
    """score = weight × |pressure − 5|: a fault that moves the pressure raises it."""
    nodes = [
        helper.make_node("Sub", ["x", "mid"], ["d"]),
        helper.make_node("Abs", ["d"], ["a"]),
        helper.make_node("Mul", ["a", "w"], ["s"]),
        helper.make_node("ReduceMax", ["s"], ["score"], axes=[1], keepdims=0),
    ]
    inits = [
        helper.make_tensor("mid", TensorProto.FLOAT, [1], [5.0]),
        helper.make_tensor("w", TensorProto.FLOAT, [1], [weight]),
    ]
    graph = helper.make_graph(
        nodes,
        "score",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"edgefleet.threshold": json.dumps(1.0)})
    return models.save(model, path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEFLEET, *args], capture_output=True, text=True, timeout=120)


def pump_recording(tmp_path: Path) -> Path:
    """A CSV of 60 s of pump data (pressure leaves 5 bar from 30 s to 40 s, labelled
    cavitation) converted to a recording with `edgefleet recording from-csv`."""
    rng = np.random.default_rng(1)
    lines = ["time;pressure;state"]
    for i in range(600):  # 60 s at 10 Hz; the pressure leaves 5 bar from 30 s to 40 s
        fault = 300 <= i < 400
        p = 5 + rng.normal(0, 0.1) + (3 if fault else 0)
        lines.append(
            f"{1_772_359_200_000 + i * 100};{p:.3f}".replace(".", ",")
            + (";cavitation" if fault else ";normal")
        )
    csv_path = tmp_path / "pump.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    rec = tmp_path / "pump.parquet"
    done = run(
        "recording",
        "from-csv",
        str(csv_path),
        "--out",
        str(rec),
        "--source",
        "plc1",
        "--decimal",
        ",",
        "--label",
        "state",
        "--unit",
        "ms",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(run("recording", "show", str(rec), "--json").stdout)
    assert shown["signals"] == ["plc1/pressure"] and len(shown["labels"]) == 1
    return rec


PUMP_FLOW = {
    "name": "pump",
    "align": {
        "period_ms": 100,
        "max_delay_ms": 200,
        "features": [{"signal": "plc1/pressure", "fill": "hold", "max_age_ms": 500}],
    },
}


def test_csv_to_recording_to_replay_against_another_model(tmp_path: Path) -> None:
    rec = pump_recording(tmp_path)
    score_model(tmp_path / "live.onnx", weight=0.5)  # crosses 1.0 only 2 bar off
    score_model(tmp_path / "candidate.onnx", weight=2.0)  # crosses 0.5 bar off
    flow = {**PUMP_FLOW, "model": {"path": "candidate.onnx"}}
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump(flow))
    out = tmp_path / "replay"
    replayed = run(
        "replay",
        str(rec),
        "--flow",
        str(tmp_path / "flow.yaml"),
        "--against-model",
        str(tmp_path / "live.onnx"),
        "--out",
        str(out),
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "cavitation" in replayed.stdout and "agreement over" in replayed.stdout
    report = json.loads((out / "report.json").read_text())
    cand, live = report["evaluations"]
    assert cand["samples"] == live["samples"] >= 590
    for ev in (cand, live):
        [det] = ev["detections"]
        assert det["detected"] and det["delay_s"] <= 0.2  # within two samples of the fault
        assert ev["precision"] > 0.95 and ev["recall"] > 0.95
    agree = report["agreement"]
    assert agree["common"] == cand["samples"] and agree["decisions_agree"] > 0.95
    assert agree["score_correlation"] > 0.99
    assert report["replay"][0]["times_real_time"] > 1
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results-candidate.parquet").exists()

    wrong = run(
        "replay",
        str(rec),
        "--flow",
        str(tmp_path / "flow.yaml"),
        "--model",
        str(tmp_path / "nope.onnx"),
        "--out",
        str(out),
    )
    assert wrong.returncode == 2 and "nope.onnx" in wrong.stderr  # bad input
