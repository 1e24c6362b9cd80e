"""`inspect_script`: what the library learns about a script before storing it, and each refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.scripts import inspect_script, measure_width
from shared.errors import ConfigError

SCALE = '''"""Scale the inputs to the training range.

More text.
"""
import numpy as np
from math import sqrt


def preprocess(x):
    return (x - 1.0) / sqrt(2.0)
'''


def write(tmp_path: Path, text: str | bytes, name: str = "s.py") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_a_preprocess_script(tmp_path: Path) -> None:
    info = inspect_script(write(tmp_path, SCALE))
    assert info.functions == ["preprocess"] and info.imports == ["math", "numpy"]
    assert info.doc == "Scale the inputs to the training range." and info.size == len(SCALE)


def test_both_functions_and_other_bindings(tmp_path: Path) -> None:
    text = "from numpy import negative as preprocess\npostprocess = dict\n"
    assert inspect_script(write(tmp_path, text)).functions == ["preprocess", "postprocess"]


def test_compiling_does_not_run_the_script(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"open({str(marker)!r}, 'w').write('x')\n\ndef postprocess(o):\n    return o\n"
    assert inspect_script(write(tmp_path, text)).functions == ["postprocess"]
    assert not marker.exists()
    inspect_script(write(tmp_path, text), load_timeout_s=30)  # importing it does run it
    assert marker.exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("def preprocess(x):\n    return x +\n", ["does not compile", "line 2", "return x +"]),
        ("def preprocess(x):\nreturn x\n", ["does not compile", "line 2"]),
        ("def f():\n    nonlocal y\n", ["does not compile", "nonlocal"]),
        ("def transform(x):\n    return x\n", ["defines neither preprocess", "postprocess"]),
        ("  \n\n", ["is an empty file"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ["not UTF-8"]),
        ("def preprocess():\n    return 1\n", ["line 1", "preprocess() must take one argument"]),
        ("async def postprocess(o):\n    return o\n", ["postprocess() is async"]),
    ],
)
def test_refusals_say_why(tmp_path: Path, text: str | bytes, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        inspect_script(write(tmp_path, text, "bad.py"))
    assert "bad.py" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read script"):
        inspect_script(tmp_path / "none.py")


def test_loading_refuses_an_import_that_fails(tmp_path: Path) -> None:
    text = "import edgefleet_no_such_module\n\ndef preprocess(x):\n    return x\n"
    path = write(tmp_path, text, "needs.py")
    assert inspect_script(path).imports == ["edgefleet_no_such_module"]  # compiling is fine
    with pytest.raises(ConfigError, match=r"needs\.py failed to import: ModuleNotFoundError"):
        inspect_script(path, load_timeout_s=30)


def test_loading_refuses_a_binding_that_is_not_callable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="defines no function preprocess"):
        inspect_script(write(tmp_path, "preprocess = 3\n"), load_timeout_s=30)


def test_loading_a_script_that_hangs_is_refused_within_the_timeout(tmp_path: Path) -> None:
    path = write(tmp_path, "while True:\n    pass\n\ndef preprocess(x):\n    return x\n")
    with pytest.raises(ConfigError, match="did not finish importing within 2 s"):
        inspect_script(path, load_timeout_s=2)


def test_measure_width_runs_preprocess_isolated(tmp_path: Path) -> None:
    text = "import numpy as np\n\ndef preprocess(x):\n    return np.concatenate([x, x], axis=-1)\n"
    path = write(tmp_path, text)
    assert measure_width(path, 4, 1, timeout_s=30) == 8
    assert measure_width(path, 3, 5, timeout_s=30) == 6
    with pytest.raises(ConfigError, match="fails on an all-zero sample"):
        measure_width(write(tmp_path, "def preprocess(x):\n    return 1 / 0\n"), 4, 1, 30)
