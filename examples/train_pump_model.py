"""Train the pump anomaly model on recorded normal operation and export it to ONNX.

    edgefleet record examples/pump-anomaly.yaml --out normal.csv --site demo --duration 60
    python examples/train_pump_model.py normal.csv --out examples/pump-anomaly.onnx

The recording (`edgefleet record`) holds the flow's samples exactly as the aligner serves them
to the model: one row per sample time, one column per feature in input order, then each
feature's `.state`. Rows with a missing feature, and rows labelled as a fault, are left out.

The model is a small autoencoder: the features are standardised, an MLP learns to reproduce
them through a narrower hidden layer, and the anomaly measure is the mean squared
reconstruction error. On normal operation that error stays near the noise level; a state the
pump was never seen in (cavitation, a worn bearing, a blocked valve) is reproduced badly.

The exported graph takes the raw features [N, F] (float32) and outputs
- `error` [N]: the reconstruction error, in standardised units squared;
- `score` [N]: 1 − 2^(−error / e_ref), in [0, 1): 0.5 at e_ref, the 99th percentile of the
  error on held-out normal data, and → 1 as the error grows.

The threshold is chosen from the held-out data: the score of `margin` × the largest held-out
error. It is printed and stored in the model's metadata (`edgefleet.threshold`) beside
`edgefleet.features` and `edgefleet.train_stats` (per-feature mean, std, min, max and deciles,
for drift).

Only numpy, scikit-learn, skl2onnx and onnx; it runs in seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

OPSET = 17  # ReduceMean takes `axes` as an attribute up to 17
BAD_STATES = {"missing", "default"}  # states whose value is not a measurement


QUANTILE_P = [round(0.1 * i, 1) for i in range(1, 10)]


def load_recording(path: Path) -> tuple[list[str], np.ndarray[Any, Any], dict[str, int]]:
    """Feature names (input order) and the rows of normal operation with every feature known."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    states = [h for h in header if h.endswith(".state")]
    features = [h.removesuffix(".state") for h in states]
    col = {h: i for i, h in enumerate(header)}
    keep, dropped = [], {"incomplete": 0, "fault": 0}
    for row in rows:
        if any(row[col[s]] in BAD_STATES for s in states):
            dropped["incomplete"] += 1
        elif "label" in col and row[col["label"]] != "normal":
            dropped["fault"] += 1
        else:
            keep.append([float(row[col[f]]) for f in features])
    return features, np.array(keep, np.float32).reshape(-1, len(features)), dropped


def fit(x: np.ndarray[Any, Any], seed: int) -> tuple[np.ndarray[Any, Any], ...]:
    """Standardise and train the autoencoder; returns mean, std and the fitted MLP."""
    mean = x.mean(0)
    std = np.maximum(x.std(0), 1e-6 * np.maximum(np.abs(mean), 1.0))  # a constant feature
    z = (x - mean) / std
    hidden = max(2, x.shape[1] // 2)
    mlp = MLPRegressor(
        hidden_layer_sizes=(hidden,), activation="tanh", alpha=1e-3, max_iter=2000,
        random_state=seed,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(z, z)
    return mean.astype(np.float32), std.astype(np.float32), mlp


def reconstruction_error(mlp: MLPRegressor, z: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(((mlp.predict(z) - z) ** 2).mean(axis=1))


def score_of(error: np.ndarray[Any, Any] | float, e_ref: float) -> Any:
    return 1.0 - np.exp2(-np.asarray(error) / e_ref)


def export(
    mlp: MLPRegressor,
    mean: np.ndarray[Any, Any],
    std: np.ndarray[Any, Any],
    e_ref: float,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """One graph: scale → MLP (as skl2onnx converts it) → error → score."""
    f = mean.shape[0]
    core = to_onnx(mlp, np.zeros((1, f), np.float32), target_opset=OPSET)
    core_in = core.graph.input[0].name
    # skl2onnx ends an MLPRegressor with a Reshape to [N, 1] (right for one target only):
    # keep the [N, F] reconstruction that feeds it.
    body = [n for n in core.graph.node if core.graph.output[0].name not in n.output]
    (last,) = [n for n in core.graph.node if core.graph.output[0].name in n.output]
    core_out = last.input[0] if last.op_type == "Reshape" else last.output[0]
    if last.op_type != "Reshape":
        body.append(last)
    c = {
        "ef_mean": mean,
        "ef_std": std,
        "ef_e_ref": np.array(e_ref, np.float32),
        "ef_one": np.array(1.0, np.float32),
        "ef_two": np.array(2.0, np.float32),
    }
    nodes = [
        helper.make_node("Sub", ["x", "ef_mean"], ["ef_centred"]),
        helper.make_node("Div", ["ef_centred", "ef_std"], [core_in]),
        *body,
        helper.make_node("Sub", [core_out, core_in], ["ef_residual"]),
        helper.make_node("Mul", ["ef_residual", "ef_residual"], ["ef_squared"]),
        helper.make_node("ReduceMean", ["ef_squared"], ["error"], axes=[1], keepdims=0),
        helper.make_node("Div", ["error", "ef_e_ref"], ["ef_ratio"]),
        helper.make_node("Neg", ["ef_ratio"], ["ef_neg"]),
        helper.make_node("Pow", ["ef_two", "ef_neg"], ["ef_remaining"]),
        helper.make_node("Sub", ["ef_one", "ef_remaining"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pump_anomaly",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, f])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("error", TensorProto.FLOAT, [None]),
        ],
        [*core.graph.initializer, *(numpy_helper.from_array(v, k) for k, v in c.items())],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="train_pump_model"
    )
    model.ir_version = core.ir_version
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def train(
    recording: Path, out: Path, margin: float = 2.0, holdout: float = 0.25, seed: int = 0
) -> dict[str, Any]:
    features, x, dropped = load_recording(recording)
    if x.shape[0] < 20:
        raise SystemExit(f"{recording}: {x.shape[0]} usable rows; record longer (20 at least)")
    cut = int(x.shape[0] * (1 - holdout))  # the last part, in time, is held out
    mean, std, mlp = fit(x[:cut], seed)
    held_error = reconstruction_error(mlp, (x[cut:] - mean) / std)
    e_ref = float(np.quantile(held_error, 0.99))
    threshold = float(score_of(margin * held_error.max(), e_ref))
    stats = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        # deciles per feature: the inference health's PSI sees a change of spread or shape
        "quantile_p": QUANTILE_P,
        "quantiles": np.quantile(x, QUANTILE_P, axis=0).T.tolist(),
    }
    metadata = {
        "edgefleet.features": json.dumps(features),
        "edgefleet.train_stats": json.dumps(stats),
        "edgefleet.threshold": f"{threshold:.4f}",
        "edgefleet.e_ref": f"{e_ref:.6g}",
        "edgefleet.trained_on": f"{recording.name}: {x.shape[0]} rows",
    }
    model = export(mlp, mean, std, e_ref, metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    held_score = score_of(held_error, e_ref)
    return {
        "features": features,
        "rows": int(x.shape[0]),
        "dropped": dropped,
        "threshold": threshold,
        "e_ref": e_ref,
        "held_out_score_p50": float(np.median(held_score)),
        "held_out_score_max": float(held_score.max()),
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recording", type=Path, help="CSV written by `edgefleet record`")
    p.add_argument("--out", type=Path, default=Path("pump-anomaly.onnx"))
    p.add_argument("--margin", type=float, default=2.0, help="threshold: × largest held-out error")
    p.add_argument(
        "--holdout", type=float, default=0.25, help="last fraction kept for the threshold"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.holdout < 1 or args.margin <= 0 or math.isnan(args.margin):
        p.error("--holdout must be in (0, 1) and --margin positive")
    r = train(args.recording, args.out, args.margin, args.holdout, args.seed)
    print(
        f"trained on {r['rows']} rows of normal operation "
        f"({r['dropped']['incomplete']} incomplete, {r['dropped']['fault']} fault rows left out)\n"
        f"features: {', '.join(r['features'])}\n"
        f"held-out score: median {r['held_out_score_p50']:.3f}, max {r['held_out_score_max']:.3f}\n"
        f"threshold: {r['threshold']:.3f} (score above it: anomaly)\n"
        f"model written to {r['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
