"""Real ONNX models for tests and benchmarks, written to a folder the caller owns.

scikit-learn models go through skl2onnx as a data scientist would export them; the others are
built with onnx.helper for shapes skl2onnx does not produce (fixed batch 1, windows [N, W, F]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

# skl2onnx needs both domains pinned: ai.onnx.ml carries the tree and ZipMap operators.
OPSET = {"": 17, "ai.onnx.ml": 3}
FEATURES = ["pressure", "temp", "vib_rms", "flow"]


def training_data(n: int = 200, f: int = len(FEATURES), seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)


def add_metadata(
    model: onnx.ModelProto,
    features: list[str] | None = None,
    train_stats: dict[str, Any] | None = None,
    threshold: float | None = None,
) -> onnx.ModelProto:
    props = {}
    if features is not None:
        props["edgefleet.features"] = json.dumps(features)
    if train_stats is not None:
        props["edgefleet.train_stats"] = json.dumps(train_stats)
    if threshold is not None:
        props["edgefleet.threshold"] = f"{threshold:.4f}"
    onnx.helper.set_model_props(model, props)
    return model


def column_stats(x: np.ndarray[Any, Any]) -> dict[str, list[float]]:
    """`edgefleet.train_stats` as the example trainer writes it: lists in feature order."""
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def isolation_forest(path: Path, features: list[str] | None = FEATURES, seed: int = 0) -> Path:
    """Outputs `label` [N, 1] int64 and `scores` [N, 1] float: a label + score pair."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    x = training_data()
    est = IsolationForest(n_estimators=20, random_state=seed).fit(x)
    model = to_onnx(est, x[:1], target_opset=OPSET)
    deciles = [0.1 * i for i in range(1, 10)]
    stats = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "quantile_p": deciles,
        "quantiles": np.quantile(x, deciles, axis=0).T.tolist(),
    }
    return save(add_metadata(model, features, stats), path)


STRING_CLASSES = ["normal", "cavitation", "bearing"]


def zipmap_classifier(path: Path, zipmap: bool = True, strings: bool = False) -> Path:
    """A logistic regression as skl2onnx exports it by default: `output_label` [N] and
    `output_probability` as a sequence of maps {0: p0, 1: p1, 2: p2} (ZipMap). With `strings`,
    trained on the labels STRING_CLASSES: `output_label` is tensor(string), the map keys too."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = training_data()
    y: Any = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    if strings:
        y = np.array(STRING_CLASSES, dtype=object)[y]
    est = LogisticRegression(max_iter=200).fit(x, y)
    options = None if zipmap else {id(est): {"zipmap": False}}
    return save(to_onnx(est, x[:1], target_opset=OPSET, options=options), path)


def float64_pipeline(path: Path) -> Path:
    """StandardScaler + Ridge with a double input: the service must feed float64."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = training_data().astype(np.float64)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0])
    est = make_pipeline(StandardScaler(), Ridge()).fit(x, y)
    return save(to_onnx(est, x[:1], target_opset=OPSET), path)


def random_forest(path: Path, features: list[str] | None = FEATURES) -> Path:
    """A RandomForestClassifier as skl2onnx exports it by default: `output_label` [N] and
    `output_probability`, a ZipMap sequence of {class: p} for classes 0, 1, 2."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x = training_data()
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    est = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    model = to_onnx(est, x[:1], target_opset=OPSET)
    return save(add_metadata(model, features, column_stats(x)), path)


def pca_pipeline(path: Path, features: list[str] | None = FEATURES, k: int = 2) -> Path:
    """StandardScaler + PCA fitted on float64 data: a double input [N, F], `variable` [N, k]."""
    from skl2onnx import to_onnx
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = training_data().astype(np.float64)
    est = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=0)).fit(x)
    model = to_onnx(est, x[:1], target_opset=OPSET)
    return save(add_metadata(model, features, column_stats(x)), path)


def autoencoder(
    path: Path,
    f: int = len(FEATURES),
    batch: int | str = 1,
    features: list[str] | None = FEATURES,
    threshold: float = 0.8,
    seed: int = 3,
) -> Path:
    """An MLP autoencoder exported with a fixed batch of 1 (as a tracer with a batch-1 example
    input leaves it): `reconstruction` [1, F] and `score` [1, 1], the mean squared error."""
    rng = np.random.default_rng(seed)
    hidden = 2
    w1 = rng.normal(size=(f, hidden)).astype(np.float32)
    w2 = rng.normal(size=(hidden, f)).astype(np.float32)
    inits = [
        helper.make_tensor("enc", TensorProto.FLOAT, [f, hidden], w1.ravel().tolist()),
        helper.make_tensor("dec", TensorProto.FLOAT, [hidden, f], w2.ravel().tolist()),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "enc"], ["code"]),
        helper.make_node("Tanh", ["code"], ["act"]),
        helper.make_node("MatMul", ["act", "dec"], ["reconstruction"]),
        helper.make_node("Sub", ["x", "reconstruction"], ["err"]),
        helper.make_node("Mul", ["err", "err"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=1),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, f])],
        [
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, [batch, f]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1]),
        ],
        inits,
    )
    x = training_data(f=f)
    return save(add_metadata(model, features, column_stats(x), threshold), path)


def torch_export(
    path: Path,
    f: int = len(FEATURES),
    hidden: int = 8,
    features: list[str] | None = FEATURES,
    threshold: float = 0.5,
    seed: int = 4,
) -> Path:
    """A model laid out the way `torch.onnx.export` writes an `nn.Sequential(Linear, ReLU,
    Linear, Sigmoid)` with `dynamic_axes={"input.1": {0: "batch_size"}}` and opset 17: the
    input `input.1` [batch_size, F], initializers named after the module's parameters
    (`0.weight`, stored [out, in] and used through Gemm's transB), nodes named by module path,
    producer `pytorch`. torch itself is not installed: its wheel alone is over 500 MB."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(hidden, f)).astype(np.float32)
    w2 = rng.normal(size=(1, hidden)).astype(np.float32)
    inits = [
        helper.make_tensor("0.weight", TensorProto.FLOAT, [hidden, f], w0.ravel().tolist()),
        helper.make_tensor("0.bias", TensorProto.FLOAT, [hidden], [0.1] * hidden),
        helper.make_tensor("2.weight", TensorProto.FLOAT, [1, hidden], w2.ravel().tolist()),
        helper.make_tensor("2.bias", TensorProto.FLOAT, [1], [0.0]),
    ]
    gemm: dict[str, Any] = {"alpha": 1.0, "beta": 1.0, "transB": 1}
    nodes = [
        helper.make_node(
            "Gemm", ["input.1", "0.weight", "0.bias"], ["/0/Gemm_output_0"], name="/0/Gemm", **gemm
        ),
        helper.make_node("Relu", ["/0/Gemm_output_0"], ["/1/Relu_output_0"], name="/1/Relu"),
        helper.make_node(
            "Gemm",
            ["/1/Relu_output_0", "2.weight", "2.bias"],
            ["/2/Gemm_output_0"],
            name="/2/Gemm",
            **gemm,
        ),
        helper.make_node("Sigmoid", ["/2/Gemm_output_0"], ["9"], name="/3/Sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch_size", f])],
        [helper.make_tensor_value_info("9", TensorProto.FLOAT, ["batch_size", 1])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="pytorch",
        producer_version="2.5.1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = training_data(f=f)
    return save(add_metadata(model, features, column_stats(x), threshold), path)


def _graph_model(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "edgefleet_test", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime releases older than this onnx package
    onnx.checker.check_model(model)
    return model


def linear(
    path: Path,
    f: int = len(FEATURES),
    batch: int | str = "N",
    dtype: int = TensorProto.FLOAT,
    seed: int = 1,
    metadata: dict[str, str] | None = None,
) -> Path:
    """y = x @ w + b with y [batch, 2]; batch=1 makes a fixed-batch model."""
    w = np.random.default_rng(seed).normal(size=(f, 2))
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    inits = [
        helper.make_tensor("w", dtype, [f, 2], w.astype(np_dtype).ravel().tolist()),
        helper.make_tensor("b", dtype, [2], [0.5, -0.5]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", dtype, [batch, f])],
        [helper.make_tensor_value_info("y", dtype, [batch, 2])],
        inits,
    )
    if metadata:
        helper.set_model_props(model, metadata)
    return save(model, path)


def window_model(path: Path, window: int, f: int = len(FEATURES)) -> Path:
    """x [N, W, F] → `mean` [N, F] over the window and `energy` [N, 1], the sum of squares."""
    axes1 = helper.make_tensor("ax1", TensorProto.INT64, [1], [1])
    axes12 = helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2])
    nodes = [
        helper.make_node(
            "ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0
        ),  # attribute in opset 17
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "ax12"], ["energy_flat"], keepdims=0),
        helper.make_node("Unsqueeze", ["energy_flat", "ax1"], ["energy"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", window, f])],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", f]),
            helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["N", 1]),
        ],
        [axes1, axes12],
    )
    return save(model, path)


def two_inputs(path: Path, f: int = len(FEATURES)) -> Path:
    """A model the flow cannot feed: two inputs."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", f]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", f])],
    )
    return save(model, path)


def mlp(path: Path, f: int = len(FEATURES), hidden: int = 32, seed: int = 2) -> Path:
    """A small MLP autoencoder-like scorer: `score` [N, 1]; the benchmark model."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(f, hidden)), rng.normal(size=(hidden, 1))
    inits = [
        helper.make_tensor(
            "w1", TensorProto.FLOAT, [f, hidden], w1.astype(np.float32).ravel().tolist()
        ),
        helper.make_tensor(
            "w2", TensorProto.FLOAT, [hidden, 1], w2.astype(np.float32).ravel().tolist()
        ),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["score"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return save(model, path)


def hanging(path: Path, f: int = len(FEATURES)) -> Path:
    """A valid model that fits the flow and never finishes a run: a Loop of 10^12 additions."""
    return slow(path, 10**12, f)


def slow(path: Path, trips: int, f: int = len(FEATURES)) -> Path:
    """A valid model that fits the flow and takes `trips` Loop iterations per run."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
        [one],
    )
    inits = [
        helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
        helper.make_tensor("go", TensorProto.BOOL, [], [True]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    nodes = [
        helper.make_node("Loop", ["trips", "go", "zero"], ["v"], body=body),
        helper.make_node("Add", ["x", "v"], ["y"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", f])],
        inits,
    )
    return save(model, path)


def unknown_operator(path: Path, f: int = len(FEATURES)) -> Path:
    """A well-formed ONNX file onnxruntime cannot load: an operator of a domain it lacks."""
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.ops")]
    graph = helper.make_graph(
        nodes,
        "edgefleet_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", f])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return save(model, path)


def log_of_inputs(path: Path, f: int = len(FEATURES)) -> Path:
    """y = ln(x), [N, F]: NaN where a feature is negative, -inf where it is 0 (a model whose
    output is not a number for some inputs, as a log or a division in a real one gives)."""
    nodes = [helper.make_node("Log", ["x"], ["y"])]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", f])],
    )
    return save(model, path)


def heavy(path: Path, f: int = len(FEATURES), hidden: int = 8192, seed: int = 5) -> Path:
    """A scorer whose weights are large `raw_data` tensors of two dtypes (float32 [F, H] and
    float64 [H, 1]), as exporters write big weights, beside a small inline one: the shape
    `services/inference/weights.py` takes apart. `score` [N, 1]."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(f, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(hidden, 1)) / hidden, "w2"),
        numpy_helper.from_array(np.array([0.5], np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Cast", ["r"], ["r64"], to=TensorProto.DOUBLE),
        helper.make_node("MatMul", ["r64", "w2"], ["s64"]),
        helper.make_node("Cast", ["s64"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["s", "bias"], ["score"]),
    ]
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return save(add_metadata(model, FEATURES[:f], None, 0.7), path)
