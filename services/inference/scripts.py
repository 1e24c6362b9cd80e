"""Pre- and post-processing scripts: the library's code snippets, run around the model.

A script is a Python file that defines `preprocess(x)` (x: float32 [N, F] or [N, W, F], returns
an array with N rows) or `postprocess(outputs)` (a dict of field name to array with N rows,
returns such a dict). Scripts come from the signed resource library and run in the service's
process with its rights: this is extensibility, not a sandbox.

A script that raises, or returns something of the wrong shape, costs the batch it was given:
`ScriptError` says which script and why, and the service reports it and goes on.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, EdgefleetError

_module_ids = itertools.count()


class ScriptError(EdgefleetError):
    """A user script raised or returned something unusable for one batch."""


@dataclass(frozen=True)
class Script:
    path: Path
    function: str
    fn: Callable[[Any], Any]

    def __call__(self, arg: Any) -> Any:
        try:
            return self.fn(arg)
        except Exception as exc:
            raise ScriptError(
                f"{self.function}() in {self.path} raised {type(exc).__name__}: {exc}"
            ) from exc


def load_script(path: Path, function: str) -> Script:
    """Import the file as a fresh module and return its `function`; refuse what cannot work."""
    # A unique module name per load, so two flows' scripts (or a reload) never share state.
    spec = importlib.util.spec_from_file_location(f"edgefleet_script_{next(_module_ids)}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"script {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"script {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"script {path} failed to import: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"script {path} defines no function {function}()")
    return Script(path, function, fn)


def run_preprocess(script: Script, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = script(x)
    try:
        arr = np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ScriptError(
            f"preprocess() in {script.path} returned no numeric array: {exc}"
        ) from None
    if arr.ndim not in (2, 3) or arr.shape[0] != x.shape[0]:
        raise ScriptError(
            f"preprocess() in {script.path} returned shape {arr.shape}; expected "
            f"{x.shape[0]} rows as [N, F] or [N, W, F]"
        )
    return arr


def run_postprocess(script: Script, outputs: dict[str, Any], n: int) -> dict[str, Any]:
    # A copy, so a script that edits its argument in place cannot corrupt what it was given.
    out = script(dict(outputs))
    if not isinstance(out, dict):
        raise ScriptError(
            f"postprocess() in {script.path} returned {type(out).__name__}, expected a dict"
        )
    checked: dict[str, Any] = {}
    for name, value in out.items():
        arr = np.asarray(value)
        if (
            not isinstance(name, str)
            or arr.ndim == 0
            or arr.shape[0] != n
            or arr.dtype.kind not in "biuf"
        ):
            raise ScriptError(
                f"postprocess() in {script.path} returned field {name!r} as {arr.dtype} "
                f"{arr.shape}; expected a numeric array with {n} rows"
            )
        checked[name] = arr
    return checked
