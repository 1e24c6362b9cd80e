"""The per-feature arithmetic: fill or aggregate one signal at many sample times at once.

Inputs are the signal's usable readings (sorted times `tg` in ns, values `vg`) and the sample
times `grid`; outputs are one column each of value (float64, NaN when missing), state
(`FeatureState`) and age in ms (float32, NaN when missing). Every function is a handful of
numpy calls whatever the number of readings or samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.messages import FeatureState

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
Column = tuple[F64, U8, F32]

OBSERVED = np.uint8(FeatureState.OBSERVED)
HELD = np.uint8(FeatureState.HELD)
INTERPOLATED = np.uint8(FeatureState.INTERPOLATED)
MISSING = np.uint8(FeatureState.MISSING)
_MS = 1e-6


def _missing(n: int) -> Column:
    return (
        np.full(n, np.nan),
        np.full(n, MISSING, np.uint8),
        np.full(n, np.nan, np.float32),
    )


def _finish(value: F64, state: U8, age_ns: F64, ok: npt.NDArray[np.bool_]) -> Column:
    value = np.where(ok, value, np.nan)
    state = np.where(ok, state, MISSING).astype(np.uint8)
    age = np.where(ok, age_ns * _MS, np.nan).astype(np.float32)
    return value, state, age


def fill(kind: str, tg: I64, vg: F64, grid: I64, max_age_ns: int) -> Column:
    """`hold`, `linear` or `nearest` of the readings at each sample time, within max_age."""
    n, m = grid.shape[0], tg.shape[0]
    if m == 0:
        return _missing(n)
    ia = np.searchsorted(tg, grid, side="right") - 1  # last usable reading at or before t_k
    has_a = ia >= 0
    ia_c = np.maximum(ia, 0)
    ta, va = tg[ia_c], vg[ia_c]
    da = (grid - ta).astype(np.float64)  # >= 0 wherever has_a
    exact = has_a & (da == 0)
    if kind == "hold":
        state = np.where(exact, OBSERVED, HELD)
        return _finish(va, state, da, has_a & (da <= max_age_ns))
    ib = ia + 1  # first usable reading after t_k
    has_b = ib < m
    ib_c = np.minimum(ib, m - 1)
    tb, vb = tg[ib_c], vg[ib_c]
    if kind == "linear":
        gap = (tb - ta).astype(np.float64)
        ok = exact | (has_a & has_b & (gap <= max_age_ns))
        with np.errstate(invalid="ignore", divide="ignore"):
            interp = va + (vb - va) * (da / gap)
        value = np.where(exact, va, interp)
        state = np.where(exact, OBSERVED, INTERPOLATED)
        # The age of an interpolated value is the gap it spans: the quantity max_age limits.
        return _finish(value, state, np.where(exact, 0.0, gap), ok)
    if kind == "nearest":
        db = (tb - grid).astype(np.float64)
        take_a = has_a & (~has_b | (da <= db))  # a tie goes to the earlier reading
        dist = np.where(take_a, da, db)
        state = np.where(dist == 0, OBSERVED, HELD)
        ok = (has_a | has_b) & (dist <= max_age_ns)
        return _finish(np.where(take_a, va, vb), state, dist, ok)
    raise ValueError(f"unknown fill {kind!r}")


def aggregate(kind: str, tg: I64, vg: F64, grid: I64, period_ns: int) -> Column:
    """`kind` over the readings in (t_k - period, t_k] for each sample time t_k."""
    n = grid.shape[0]
    start = grid[0] - period_ns
    lo = int(np.searchsorted(tg, start, side="right"))
    hi = int(np.searchsorted(tg, grid[-1], side="right"))
    rt, rv = tg[lo:hi], vg[lo:hi]
    # The grid is uniform, so a reading's period is arithmetic, not a search.
    seg = (rt - start - 1) // period_ns
    counts = np.bincount(seg, minlength=n)
    nonempty = counts > 0
    ends = np.cumsum(counts) - 1  # index of each period's last reading (valid where nonempty)
    ends_c = np.maximum(ends, 0)
    age_ns = np.zeros(n)
    if rt.shape[0]:
        age_ns = (grid - rt[ends_c]).astype(np.float64)
    if kind == "count":
        age = np.where(nonempty, age_ns * _MS, np.nan).astype(np.float32)
        return counts.astype(np.float64), np.full(n, OBSERVED, np.uint8), age
    state = np.full(n, OBSERVED, np.uint8)
    if rt.shape[0] == 0:
        return _missing(n)
    safe = np.maximum(counts, 1)
    if kind == "last":
        value = rv[ends_c]
    elif kind == "mean":
        value = np.bincount(seg, rv, minlength=n) / safe
    elif kind == "rms":
        value = np.sqrt(np.bincount(seg, rv * rv, minlength=n) / safe)
    elif kind == "std":
        mean = np.bincount(seg, rv, minlength=n) / safe
        dev = rv - mean[seg]  # two passes: no cancellation for large offsets
        value = np.sqrt(np.bincount(seg, dev * dev, minlength=n) / safe)
    elif kind in ("min", "max"):
        ufunc = np.minimum if kind == "min" else np.maximum
        value = np.full(n, np.nan)
        starts = (ends - counts + 1)[nonempty]
        # Empty periods hold no readings, so consecutive non-empty starts bound each period.
        value[nonempty] = ufunc.reduceat(rv, starts)
    else:
        raise ValueError(f"unknown aggregate {kind!r}")
    return _finish(value, state, age_ns, nonempty)
