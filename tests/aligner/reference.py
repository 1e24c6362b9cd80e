"""A slow, obvious implementation of the alignment rules, one sample and one feature at a time.

The property tests hold the vectorized engine to it. It reads the rules straight from
docs/aligner.md; it shares no code with the engine beyond the spec model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.aligner.config import AlignSpec, FeatureSpec
from shared.messages import FeatureState

MS = 1_000_000


@dataclass(frozen=True)
class R:
    """One reading of one signal."""

    t: int
    v: float
    good: bool = True


def usable(readings: list[R]) -> list[R]:
    """First reading of each time wins; only good, finite values are usable."""
    seen: set[int] = set()
    out = []
    for r in sorted(readings, key=lambda r: r.t):  # sorted() is stable: first arrival wins
        if r.t in seen:
            continue
        seen.add(r.t)
        if r.good and math.isfinite(r.v):
            out.append(r)
    return out


def feature_at(f: FeatureSpec, rs: list[R], tk: int, period: int) -> tuple[float, int, float]:
    """(value, state, age_ms) of feature `f` at sample time `tk` from usable readings `rs`."""
    miss = (math.nan, int(FeatureState.MISSING), math.nan)
    if f.agg is not None:
        vals = [r.v for r in rs if tk - period < r.t <= tk]
        last_t = max((r.t for r in rs if tk - period < r.t <= tk), default=None)
        age = math.nan if last_t is None else (tk - last_t) / MS
        if f.agg == "count":
            return float(len(vals)), int(FeatureState.OBSERVED), age
        if not vals:
            return miss
        a = np.array(vals)
        value = {
            "mean": lambda: float(np.mean(a)),
            "min": lambda: float(np.min(a)),
            "max": lambda: float(np.max(a)),
            "rms": lambda: float(np.sqrt(np.mean(a * a))),
            "last": lambda: float(a[-1]),
            "std": lambda: float(np.std(a)),
        }[f.agg]()
        return value, int(FeatureState.OBSERVED), age
    assert f.max_age_ns is not None
    max_age = f.max_age_ns
    before = [r for r in rs if r.t <= tk]
    after = [r for r in rs if r.t > tk]
    prev = before[-1] if before else None
    nxt = after[0] if after else None
    if prev is not None and prev.t == tk:
        return prev.v, int(FeatureState.OBSERVED), 0.0
    if f.fill == "hold":
        if prev is None or tk - prev.t > max_age:
            return miss
        return prev.v, int(FeatureState.HELD), (tk - prev.t) / MS
    if f.fill == "linear":
        if prev is None or nxt is None or nxt.t - prev.t > max_age:
            return miss
        value = prev.v + (nxt.v - prev.v) * ((tk - prev.t) / (nxt.t - prev.t))
        return value, int(FeatureState.INTERPOLATED), (nxt.t - prev.t) / MS
    # nearest: the earlier reading wins prev tie
    cands = []
    if prev is not None:
        cands.append((tk - prev.t, 0, prev))
    if nxt is not None:
        cands.append((nxt.t - tk, 1, nxt))
    if not cands:
        return miss
    dist, _, r = min(cands, key=lambda c: (c[0], c[1]))
    if dist > max_age:
        return miss
    state = FeatureState.OBSERVED if dist == 0 else FeatureState.HELD
    return r.v, int(state), dist / MS


def reference(
    spec: AlignSpec, readings: dict[str, list[R]], grid: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (float64, NaN when missing), state and age_ms, each [len(grid), features]."""
    use = {sig: usable(rs) for sig, rs in readings.items()}
    n, nf = len(grid), len(spec.features)
    x = np.full((n, nf), np.nan)
    state = np.zeros((n, nf), np.uint8)
    age = np.full((n, nf), np.nan)
    for i, tk in enumerate(grid):
        for j, f in enumerate(spec.features):
            x[i, j], state[i, j], age[i, j] = feature_at(
                f, use.get(f.signal, []), tk, spec.period_ns
            )
    return x, state, age
