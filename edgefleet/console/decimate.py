"""Min/max per pixel column: what a line chart of N points can show in W pixels, in 2·W points.

Columns sit on a grid fixed in absolute time (column k covers [k·col_ns, (k+1)·col_ns)), so a
column computed once stays right while the window slides: a live view sends only the columns
that changed since its last update, whatever the signal's rate. Spikes survive (the max of
their column), which averaging or every-n-th-point sampling would lose.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def minmax_columns(
    t: np.ndarray[Any, Any], v: np.ndarray[Any, Any], col_ns: int, first: int, count: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per column `first` .. `first + count - 1`: the min and the max of the values stamped in
    it (NaN where it has none). `t` need not be sorted (batches of two sources interleave)."""
    if col_ns <= 0 or count <= 0:
        raise ValueError(f"col_ns and count must be positive, got {col_ns} and {count}")
    lo = np.full(count, np.inf)
    hi = np.full(count, -np.inf)
    if len(t):
        idx = t // col_ns - first
        keep = (idx >= 0) & (idx < count) & np.isfinite(v)
        idx, vals = idx[keep], v[keep]
        np.minimum.at(lo, idx, vals)
        np.maximum.at(hi, idx, vals)
    empty = lo == np.inf
    lo[empty] = np.nan
    hi[empty] = np.nan
    return lo, hi


def column_ns(window_ns: int, width_px: int) -> int:
    """The column width for a window drawn in `width_px` pixels (at least 1 µs)."""
    return max(1000, window_ns // max(1, width_px))
