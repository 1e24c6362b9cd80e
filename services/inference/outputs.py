"""Turn a model's raw outputs into named result fields, one row per sample.

Three output forms reach us from real exports: plain tensors ([N], [N, 1], [N, C]), label and
score pairs (two tensors, e.g. an IsolationForest's `label` and `scores`), and the sequence of
maps scikit-learn classifiers get from skl2onnx's default ZipMap (`[{0: p0, 1: p1}, ...]`).
A classifier trained on string classes gives its label as tensor(string) and its map keys as
strings (`{"normal": p0, "cavitation": p1}`): labels are carried as the strings the model gives.
A selector picks one output, optionally one column or map key: `scores`, `probabilities[1]`,
`output_probability[1]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import ModelError

_SELECTOR = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<key>[^\[\]]+)\])?$")
_NUMERIC = "biuf"


@dataclass(frozen=True)
class Selector:
    field: str
    output: str
    key: int | str | None = None  # a column of a 2-D tensor, or a key of a map output
    expand: bool = False  # a map output without a key: one field per key, `{field}_{key}`


def parse_selectors(mapping: dict[str, str] | None, output_types: dict[str, str]) -> list[Selector]:
    """Check the configured mapping against the model's outputs; default to every output."""
    if mapping is None:
        return [
            Selector(name, name, expand=t.startswith("seq(map("))
            for name, t in output_types.items()
        ]
    selectors = []
    for field_name, text in mapping.items():
        m = _SELECTOR.match(text.strip())
        if m is None:
            raise ModelError(
                f"output selector {text!r} for field {field_name!r} is not NAME or NAME[KEY]"
            )
        name, key_text = m["name"].strip(), m["key"]
        if name not in output_types:
            raise ModelError(
                f"field {field_name!r} selects output {name!r}; the model's outputs are "
                f"{list(output_types)}"
            )
        key: int | str | None = None
        if key_text is not None:
            key = int(key_text) if re.fullmatch(r"-?\d+", key_text.strip()) else key_text.strip()
        is_map = output_types[name].startswith("seq(map(")
        selectors.append(Selector(field_name, name, key, expand=is_map and key is None))
    for sel in selectors:
        t = output_types[sel.output]
        map_of_strings = t.startswith("seq(map(") and "string" in t.split(",")[-1]
        if not t.startswith(("tensor(", "seq(map(")) or map_of_strings:
            raise ModelError(
                f"output {sel.output!r} is {t}; results carry numeric tensors, string labels and "
                "maps of numbers, select another output" + ("" if mapping else " with 'outputs'")
            )
    return selectors


def map_outputs(raw: dict[str, Any], selectors: list[Selector], n: int) -> dict[str, Any]:
    """The result fields for n samples; a row count other than n is the model's fault."""
    out: dict[str, Any] = {}
    for sel in selectors:
        value = raw[sel.output]
        if isinstance(value, list):
            out.update(_from_maps(value, sel, n))
        else:
            out[sel.field] = _from_tensor(np.asarray(value), sel, n)
    return out


def _from_tensor(arr: np.ndarray[Any, Any], sel: Selector, n: int) -> np.ndarray[Any, Any]:
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ModelError(f"output {sel.output!r} has shape {arr.shape}, expected {n} rows")
    if arr.dtype.kind in "OUS":  # string labels (onnxruntime gives objects): as the model says
        try:
            arr = arr.astype(np.str_)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise ModelError(f"output {sel.output!r} holds values that are not text") from None
    elif arr.dtype.kind not in _NUMERIC:
        raise ModelError(
            f"output {sel.output!r} has dtype {arr.dtype}; results carry numbers and strings"
        )
    if sel.key is not None:
        if (
            not isinstance(sel.key, int)
            or arr.ndim != 2
            or not -arr.shape[1] <= sel.key < arr.shape[1]
        ):
            raise ModelError(
                f"output {sel.output!r} of shape {arr.shape} has no column [{sel.key}]"
            )
        return np.ascontiguousarray(arr[:, sel.key])
    if arr.ndim == 2 and arr.shape[1] == 1:
        # [N, 1] (scores, labels) becomes [N]: actions compare one number per sample.
        return arr[:, 0].copy()
    return arr


def _from_maps(rows: list[Any], sel: Selector, n: int) -> dict[str, np.ndarray[Any, Any]]:
    if len(rows) != n:
        raise ModelError(f"output {sel.output!r} has {len(rows)} rows, expected {n}")
    if n == 0:
        return {}
    keys = list(rows[0].keys()) if sel.expand else [sel.key]
    out = {}
    for key in keys:
        try:
            col = np.fromiter((row[key] for row in rows), dtype=np.float32, count=n)
        except KeyError:
            raise ModelError(
                f"output {sel.output!r} has no key {key!r}; its keys are {list(rows[0].keys())}"
            ) from None
        out[f"{sel.field}_{key}" if sel.expand else sel.field] = col
    return out
