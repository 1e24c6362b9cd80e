"""examples/train_pump_model.py: trained on a recording of normal operation, it gives a model the
inference service accepts for the example flow, and its score rises on cavitation."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.flow import load_flow
from edgefleet.record import columns
from edgefleet.sim.pump import Fault, PumpModel, simulate
from services.inference.config import InferenceSettings, ModelSpec
from services.inference.model import ModelBlob, load_model

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "examples" / "pump-anomaly.yaml"
SCRIPT = ROOT / "examples" / "train_pump_model.py"


def simulated(seconds: float, faults: tuple[Fault, ...] = (), seed: int = 3) -> np.ndarray:
    """The example flow's features at its 200 ms period, from the pump model (offline)."""
    names = load_flow(FLOW).align.labels
    _, cols = simulate(PumpModel(seed, faults), seconds)
    return np.stack([cols[n][::2] for n in names], axis=1).astype(np.float32)


def write_recording(path: Path, x: np.ndarray, labels: list[str] | None = None) -> None:
    """A file shaped as `edgefleet record` writes it (values, states, ages, label)."""
    features = load_flow(FLOW).align.labels
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns(features, labels is not None))
        for i, row in enumerate(x):
            t = 1_700_000_000_000_000_000 + i * 200_000_000
            state = ["missing" if np.isnan(v) else "held" for v in row]
            tail = [labels[i]] if labels is not None else []
            w.writerow(["", t, *[str(v) for v in row], *state, *["0.0"] * len(row), *tail])


def train_module() -> Any:
    spec = importlib.util.spec_from_file_location("train_pump_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_gives_a_servable_model_whose_score_rises_on_cavitation(tmp_path: Path) -> None:
    normal = simulated(40)
    tagged = ["normal"] * len(normal)
    normal[5, 2] = np.nan  # an incomplete row and fault rows are left out of training
    x = np.concatenate([normal, simulated(4, (Fault(0, 10, "cavitation"),), seed=4)])
    write_recording(tmp_path / "normal.csv", x, tagged + ["cavitation"] * (len(x) - len(tagged)))
    out = tmp_path / "model.onnx"

    began = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "normal.csv"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - began
    assert run.returncode == 0, run.stderr
    assert took < 30, f"training took {took:.1f} s"
    assert "trained on 199 rows" in run.stdout and "20 fault rows" in run.stdout, run.stdout
    threshold = float(run.stdout.split("threshold: ")[1].split()[0])

    flow = load_flow(FLOW)
    model = load_model(
        ModelBlob(out.read_bytes(), "pump-anomaly", None, str(out)),
        InferenceSettings(
            flow="pump-anomaly",
            model=ModelSpec(path=out),
            features=flow.align.labels,
            window=flow.align.window,
        ),
    )  # the inference service's own check against the flow: raises on any mismatch
    meta = model.metadata
    assert json.loads(meta["edgefleet.features"]) == flow.align.labels
    stats = json.loads(meta["edgefleet.train_stats"])
    assert set(stats) == {"mean", "std", "min", "max", "quantiles", "quantile_p"}
    assert len(stats["mean"]) == 6 and len(stats["quantiles"]) == 6
    assert all(len(q) == 9 and q == sorted(q) for q in stats["quantiles"])
    assert stats["quantiles"][0][0] < stats["mean"][0] < stats["quantiles"][0][-1]
    assert abs(stats["mean"][0] - 1.0) < 0.02  # suction pressure ≈ 1 bar
    assert abs(float(meta["edgefleet.threshold"]) - threshold) < 1e-3
    assert 0.5 < threshold < 1.0

    def scores(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.session.run(["score"], {model.input_name: x})[0])

    fresh_normal = scores(simulated(20, seed=9))
    cavitation = scores(simulated(20, (Fault(5, 20, "cavitation"),), seed=9))
    assert np.all((fresh_normal >= 0) & (fresh_normal < 1))
    assert np.mean(fresh_normal > threshold) < 0.02, "few false alarms on unseen normal data"
    assert np.all(cavitation[35:] > threshold), "every cavitation sample is over the threshold"
    assert cavitation[35:].min() > 0.99 and np.median(fresh_normal) < 0.5
    assert np.all(cavitation[:20] < threshold)  # before the fault starts


def test_a_recording_too_short_is_refused(tmp_path: Path) -> None:
    write_recording(tmp_path / "short.csv", simulated(2))
    module = train_module()
    try:
        module.train(tmp_path / "short.csv", tmp_path / "m.onnx")
    except SystemExit as exc:
        assert "record longer" in str(exc)
    else:
        raise AssertionError("a 10-row recording was accepted")
