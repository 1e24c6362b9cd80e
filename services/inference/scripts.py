"""Pre- and post-processing scripts: the library's code snippets, run around the model.

A script is a Python file that defines `preprocess(x)` (x: float32 [N, F] or [N, W, F], returns
an array with N rows) or `postprocess(outputs)` (a dict of field name to array with N rows,
returns such a dict). Scripts come from the signed resource library and run in the service's
process with its rights: this is extensibility, not a sandbox.

A script that raises, or returns something of the wrong shape, costs the batch it was given:
`ScriptError` says which script and why, and the service reports it and goes on.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from shared.errors import ConfigError, EdgefleetError

from .isolated import run_isolated

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


def probe_width(pre: Script, n_features: int, window: int) -> int:
    """The feature count preprocess() hands the model, from one all-zero sample."""
    shape = (1, n_features) if window == 1 else (1, window, n_features)
    try:
        return int(run_preprocess(pre, np.zeros(shape, np.float32)).shape[-1])
    except ScriptError as exc:
        raise ConfigError(f"preprocess script fails on an all-zero sample {shape}: {exc}") from None


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


# --- inspecting a script before it is stored or run -------------------------------------------

Function = Literal["preprocess", "postprocess"]
FUNCTIONS: tuple[Function, ...] = ("preprocess", "postprocess")


class ScriptInfo(BaseModel):
    """What the library stores about a script: which functions a flow can call, what it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    sha256: str
    size: int
    functions: list[Function]  # of preprocess / postprocess, the ones it defines
    imports: list[str]  # top-level modules it imports: what the node must have installed
    doc: str | None = None  # the first line of its docstring


def inspect_script(
    source: Path | bytes, origin: str | None = None, load_timeout_s: float | None = None
) -> ScriptInfo:
    """Compile the script without running it and find `preprocess`/`postprocess` (ast);
    ConfigError for an empty file, text that is not UTF-8, a syntax error (with its line) or a
    script that defines neither function, or one that takes no argument.

    With `load_timeout_s`, the script is also imported the way the inference service imports it,
    in a separate process within that time, and each function must be there and callable: that
    runs the script's top-level code and needs its imports installed where it runs.
    """
    data, origin = _read_script(source, origin)
    tree = _parse(data, origin)
    functions = _functions(tree, origin)
    if load_timeout_s is not None:
        run_isolated(
            _load_child,
            (data, origin, functions),
            load_timeout_s,
            f"script {origin}",
            "importing",
            ConfigError,
        )
    doc = ast.get_docstring(tree)
    return ScriptInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        functions=functions,
        imports=_imports(tree),
        doc=doc.strip().splitlines()[0] if doc and doc.strip() else None,
    )


def measure_width(path: Path, n_features: int, window: int, timeout_s: float) -> int:
    """`probe_width` of a preprocess script in a separate process: the features per sample it
    hands the model, measured without running user code in the caller's process."""
    result = run_isolated(
        _width_child,
        (path, n_features, window),
        timeout_s,
        f"script {path}",
        "preprocess() on one all-zero sample",
        ConfigError,
    )
    return int(result)


def _read_script(source: Path | bytes, origin: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        data, origin = source, origin or "(bytes)"
    else:
        try:
            data, origin = source.read_bytes(), origin or str(source)
        except OSError as exc:
            raise ConfigError(f"cannot read script {source}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"script {origin} is an empty file")
    return data, origin


def _parse(data: bytes, origin: str) -> ast.Module:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"script {origin} is not UTF-8 text (byte {exc.start}): not a Python script"
        ) from None
    try:
        tree = ast.parse(text, filename=origin)
        compile(tree, origin, "exec")  # what ast accepts but the compiler refuses (e.g. nonlocal)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        code = (exc.text or "").strip()
        shown = f": {code[:80]}" if code else ""
        raise ConfigError(
            f"script {origin} does not compile: {exc.msg} at {where}{shown}"
        ) from None
    except ValueError as exc:  # e.g. a NUL byte in the source
        raise ConfigError(f"script {origin} does not compile: {exc}") from None
    return tree


def _functions(tree: ast.Module, origin: str) -> list[Function]:
    """The flow functions bound at the top level: a `def`, an assignment or an import."""
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name.split(".")[0]] = node
    functions = [f for f in FUNCTIONS if f in found]
    if not functions:
        raise ConfigError(
            f"script {origin} defines neither preprocess(x) nor postprocess(outputs): a flow "
            "calls one of them"
        )
    for name in functions:
        bound = found[name]
        if isinstance(bound, ast.AsyncFunctionDef):
            raise ConfigError(
                f"script {origin} line {bound.lineno}: {name}() is async; a flow calls it as a "
                "plain function"
            )
        if isinstance(bound, ast.FunctionDef) and not _takes_one(bound.args):
            raise ConfigError(
                f"script {origin} line {bound.lineno}: {name}() must take one argument "
                f"({'x' if name == 'preprocess' else 'outputs'})"
            )
    return functions


def _takes_one(args: ast.arguments) -> bool:
    positional = len(args.posonlyargs) + len(args.args)
    required_kwonly = sum(d is None for d in args.kw_defaults)
    required = positional - len(args.defaults)
    return (positional >= 1 or args.vararg is not None) and required <= 1 and not required_kwonly


def _imports(tree: ast.Module) -> list[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(names)


def _load_child(arg: tuple[bytes, str, list[str]]) -> None:
    """In the child process: import the script as the service does, find each function."""
    data, origin, functions = arg
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.py"
        path.write_bytes(data)
        for name in functions:
            try:
                load_script(path, name)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace(str(path), origin)) from None


def _width_child(arg: tuple[Path, int, int]) -> int:
    path, n_features, window = arg
    return probe_width(load_script(path, "preprocess"), n_features, window)
