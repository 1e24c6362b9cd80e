"""The arithmetic: fill or aggregate every feature at every sample time in a few numpy calls.

Inputs are the usable readings of all signals (`Packed`, sorted by signal then time) and the
sample times `grid` [n]. Outputs are [features, n] blocks of value (float64, NaN when missing),
state (`FeatureState`) and age in ms (float32, NaN when missing). The cost is a fixed number of
numpy calls per emit, whatever the number of features, readings or samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.aligner.store import Packed
from shared.messages import FeatureState

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
IP = npt.NDArray[np.intp]
Block = tuple[F64, U8, F32]

OBSERVED = np.uint8(FeatureState.OBSERVED)
HELD = np.uint8(FeatureState.HELD)
INTERPOLATED = np.uint8(FeatureState.INTERPOLATED)
MISSING = np.uint8(FeatureState.MISSING)
_MS = 1e-6


def _finish(value: F64, state: U8, age_ns: F64, ok: npt.NDArray[np.bool_]) -> Block:
    return (
        np.where(ok, value, np.nan),
        np.where(ok, state, MISSING).astype(np.uint8),
        np.where(ok, age_ns * _MS, np.nan).astype(np.float32),
    )


def fill(p: Packed, kind: str, sig: IP, max_age_ns: I64, grid: I64) -> Block:
    """`hold`, `linear` or `nearest` of signals `sig` [f] at each sample time, within max_age."""
    f, n = sig.shape[0], grid.shape[0]
    m = p.t.shape[0]
    if m == 0:
        return _finish(
            np.zeros((f, n)),
            np.zeros((f, n), np.uint8),
            np.zeros((f, n)),
            np.zeros((f, n), np.bool_),
        )
    col = sig[:, None]
    ia = np.searchsorted(p.key, p.keys(col, grid[None, :]), side="right") - 1
    has_a = ia >= p.first[col]  # the last usable reading at or before t_k is this signal's
    ia_c = np.maximum(ia, 0)
    ta, va = p.t[ia_c], p.v[ia_c]
    da = (grid - ta).astype(np.float64)  # >= 0 wherever has_a
    exact = has_a & (da == 0)
    limit = max_age_ns[:, None]
    if kind == "hold":
        state = np.where(exact, OBSERVED, HELD)
        return _finish(va, state, da, has_a & (da <= limit))
    ib = ia + 1  # the first usable reading after t_k
    has_b = ib < p.first[col + 1]
    ib_c = np.minimum(ib, m - 1)
    tb, vb = p.t[ib_c], p.v[ib_c]
    if kind == "linear":
        gap = (tb - ta).astype(np.float64)
        ok = exact | (has_a & has_b & (gap <= limit))
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
        ok = (has_a | has_b) & (dist <= limit)
        return _finish(np.where(take_a, va, vb), state, dist, ok)
    raise ValueError(f"unknown fill {kind!r}")


class Periods:
    """The usable readings of some signals grouped by period (t_k - period, t_k].

    Built once per emit for all aggregated signals; each aggregate is then one or two calls.
    Row `a` of every result belongs to `sig[a]`.
    """

    def __init__(self, p: Packed, sig: IP, grid: I64, period_ns: int) -> None:
        a, n = sig.shape[0], grid.shape[0]
        self.n = n
        start = grid[0] - period_ns
        lo = np.searchsorted(p.key, p.keys(sig, np.full(a, start)), side="right")
        hi = np.searchsorted(p.key, p.keys(sig, np.full(a, grid[-1])), side="right")
        per_sig = hi - lo
        # Indices of all readings in range, signal after signal, without a Python loop.
        idx = np.arange(int(per_sig.sum())) + np.repeat(
            lo - (np.cumsum(per_sig) - per_sig), per_sig
        )
        self.t, self.v = p.t[idx], p.v[idx]
        # The grid is uniform, so a reading's period is arithmetic, not a search.
        seg = (self.t - start - 1) // period_ns
        self.group = np.repeat(np.arange(a) * n, per_sig) + seg
        self.count = np.bincount(self.group, minlength=a * n)
        self.nonempty = self.count > 0
        self.end = np.cumsum(self.count) - 1  # each group's last reading, where nonempty
        end_c = np.maximum(self.end, 0)
        flat_grid = np.tile(grid, a)
        self.age_ns = np.zeros(a * n)
        if self.t.shape[0]:
            self.age_ns = (flat_grid - self.t[end_c]).astype(np.float64)
        self._sum: F64 | None = None

    def _mean(self) -> F64:
        if self._sum is None:
            self._sum = np.bincount(self.group, self.v, minlength=self.count.shape[0]).astype(
                np.float64
            )
        out: F64 = self._sum / np.maximum(self.count, 1)
        return out

    def values(self, kind: str) -> F64:
        """One value per (signal, period), flat [a * n]; NaN where a period is empty."""
        if kind == "count":
            return self.count.astype(np.float64)
        if self.t.shape[0] == 0:
            return np.full(self.count.shape[0], np.nan)
        safe = np.maximum(self.count, 1)
        if kind == "last":
            last: F64 = self.v[np.maximum(self.end, 0)]
            return last
        if kind == "mean":
            return self._mean()
        if kind == "rms":
            out: F64 = np.sqrt(
                np.bincount(self.group, self.v * self.v, minlength=safe.shape[0]) / safe
            )
            return out
        if kind == "std":
            dev = self.v - self._mean()[self.group]  # two passes: no cancellation at offsets
            out = np.sqrt(np.bincount(self.group, dev * dev, minlength=safe.shape[0]) / safe)
            return out
        if kind in ("min", "max"):
            ufunc = np.minimum if kind == "min" else np.maximum
            out = np.full(safe.shape[0], np.nan)
            starts = (self.end - self.count + 1)[self.nonempty]
            # Empty groups hold no readings, so consecutive non-empty starts bound each group.
            out[self.nonempty] = ufunc.reduceat(self.v, starts)
            return out
        raise ValueError(f"unknown aggregate {kind!r}")

    def block(self, kind: str, rows: IP) -> Block:
        """The aggregate `kind` for signal rows `rows`, as [len(rows), n] blocks."""
        value = self.values(kind).reshape(-1, self.n)[rows]
        nonempty = self.nonempty.reshape(-1, self.n)[rows]
        age = self.age_ns.reshape(-1, self.n)[rows]
        if kind == "count":
            # A count is never missing (0 readings is an observation); its age is NaN at 0.
            age_ms = np.where(nonempty, age * _MS, np.nan).astype(np.float32)
            return value, np.full(value.shape, OBSERVED, np.uint8), age_ms
        return _finish(value, np.full(value.shape, OBSERVED, np.uint8), age, nonempty)
