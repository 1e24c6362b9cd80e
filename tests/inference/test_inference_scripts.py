"""Pre- and post-processing scripts: applied around the model; a failing one costs one batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigError
from tests.inference import models
from tests.inference.helpers import direct, engine, rows

X = models.training_data(20, seed=7)


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_preprocess_and_postprocess_are_applied(tmp_path: Path) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    pre = script(tmp_path, "pre.py", "def preprocess(x):\n    return x * 2.0\n")
    post = script(
        tmp_path,
        "post.py",
        "def postprocess(out):\n    out['alarm'] = out['scores'] < 0\n    return out\n",
    )
    result = engine(model, preprocess=pre, postprocess=post).infer(rows(X)).result
    ref = direct(model, X * 2.0)["scores"][:, 0]
    assert result is not None
    np.testing.assert_array_equal(result.outputs["scores"], ref)
    np.testing.assert_array_equal(result.outputs["alarm"], ref < 0)


def test_preprocess_may_change_the_feature_count(tmp_path: Path) -> None:
    model = models.linear(tmp_path / "m5.onnx", f=5)
    pre = script(
        tmp_path,
        "pre.py",
        "import numpy as np\n"
        "def preprocess(x):\n    return np.hstack([x, (x ** 2).sum(1, keepdims=True)])\n",
    )
    result = engine(model, preprocess=pre).infer(rows(X)).result
    extended = np.hstack([X, (X**2).sum(1, keepdims=True)])
    assert result is not None
    np.testing.assert_array_equal(result.outputs["y"], direct(model, extended)["y"])


def test_preprocess_can_fill_missing_values(tmp_path: Path) -> None:
    model = models.linear(tmp_path / "m.onnx")
    pre = script(
        tmp_path,
        "pre.py",
        "import numpy as np\ndef preprocess(x):\n    return np.nan_to_num(x, nan=0.0)\n",
    )
    x = X.copy()
    x[3, 1] = np.nan
    eng = engine(model, preprocess=pre)
    result = eng.infer(rows(x)).result
    assert result is not None and len(result) == len(x) and eng.stats.skipped_nan == 0


@pytest.mark.parametrize(
    ("name", "body", "words"),
    [
        (
            "pre.py",
            "def preprocess(x):\n    if x.shape[0] > 1:\n        raise ValueError('bad')\n"
            "    return x\n",
            ["preprocess()", "ValueError: bad"],
        ),
        (
            "post.py",
            "def postprocess(out):\n    raise KeyError('nope')\n",
            ["postprocess()", "KeyError"],
        ),
        ("post.py", "def postprocess(out):\n    return {'s': [1.0]}\n", ["field 's'", "20 rows"]),
        ("post.py", "def postprocess(out):\n    return None\n", ["expected a dict"]),
        ("pre.py", "def preprocess(x):\n    return x[:1] if len(x) > 1 else x\n", ["20 rows"]),
    ],
)
def test_a_failing_script_costs_one_batch(
    tmp_path: Path, name: str, body: str, words: list[str]
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    kind = "preprocess" if name.startswith("pre") else "postprocess"
    eng = engine(model, **{kind: script(tmp_path, name, body)})
    outcome = eng.infer(rows(X))
    assert outcome.result is None and outcome.error is not None
    for word in words:
        assert word in outcome.error
    assert eng.stats.failed_batches == 1 and eng.stats.script_errors == 1
    # The engine serves the next batch: a single sample does not trip the first script.
    assert eng.infer(rows(X[:1])).result is not None or kind == "postprocess"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("def other(x):\n    return x\n", "defines no function preprocess"),
        ("def preprocess(x)\n    return x\n", "failed to import: SyntaxError"),
        ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
        ("def preprocess(x):\n    return 1 / 0\n", "all-zero sample"),
    ],
)
def test_an_unusable_script_is_refused_at_start(tmp_path: Path, body: str, match: str) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    with pytest.raises(ConfigError, match=match):
        engine(model, preprocess=script(tmp_path, "pre.py", body))


def test_a_missing_script_is_refused(tmp_path: Path) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        engine(model, postprocess=tmp_path / "nope.py")
