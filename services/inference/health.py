"""Model health over bounded recent windows: latency, input drift, output distribution, agreement.

Everything is kept in fixed-size numpy rings filled one batch at a time (no per-sample Python);
figures are computed only when the status asks for them.

Drift score, per feature: |mean_live − mean_train| / std_train, with mean_live over the last
`window` samples and mean/std of the training data from the model's `edgefleet.train_stats`
metadata. It reads as "how many training standard deviations the live mean has moved": 0 means
no shift, above ~0.5 is worth a look, above 1–2 the model sees data unlike what it learned from.

A mean can stay put while the spread or the shape changes (a sensor that starts to oscillate
around the same value), so each feature also gets a population stability index over the training
quantiles the model carries (`quantiles` in `edgefleet.train_stats`): the live values are put in
the bins between those quantiles and PSI = Σ (live − train) · ln(live / train) over the bins'
fractions. The usual reading: below 0.1 no change, 0.1–0.25 a moderate one, above 0.25 a
distribution the model did not learn from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.messages import ResultBatch

from .batching import Rows

PERCENTILES = (50, 90, 99)


class Ring:
    """The last `size` rows of a stream of arrays of one row shape."""

    def __init__(self, size: int, row_shape: tuple[int, ...] = (), dtype: Any = np.float64) -> None:
        self.data = np.zeros((size, *row_shape), dtype)
        self.size = size
        self.next = 0  # where the next row goes
        self.count = 0  # rows held, at most size

    def extend(self, rows: np.ndarray[Any, Any]) -> None:
        n = len(rows)
        if n == 0:
            return
        if n >= self.size:
            self.data[:] = rows[-self.size :]
            self.next, self.count = 0, self.size
            return
        end = self.next + n
        if end <= self.size:
            self.data[self.next : end] = rows
        else:
            first = self.size - self.next
            self.data[self.next :] = rows[:first]
            self.data[: n - first] = rows[first:]
        self.next = end % self.size
        self.count = min(self.size, self.count + n)

    def values(self) -> np.ndarray[Any, Any]:
        """The rows held (in no particular order: the figures here do not need it)."""
        return self.data[: self.count]


def percentiles(values: np.ndarray[Any, Any], qs: tuple[int, ...] = PERCENTILES) -> dict[str, Any]:
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, np.percentile(values, qs), strict=True)}


def train_mean_std(stats: dict[str, Any] | None, features: list[str]) -> tuple[Any, Any] | None:
    """Training mean and std in feature order, from `{"mean": [...], "std": [...]}` or from
    `{feature: {"mean": m, "std": s}}`; None when the metadata does not cover every feature."""
    if not stats:
        return None
    try:
        if isinstance(stats.get("mean"), list):
            mean, std = np.asarray(stats["mean"], float), np.asarray(stats["std"], float)
        else:
            mean = np.asarray([stats[f]["mean"] for f in features], float)
            std = np.asarray([stats[f]["std"] for f in features], float)
    except (KeyError, TypeError, ValueError):
        return None
    if mean.shape != (len(features),) or std.shape != (len(features),):
        return None
    return mean, np.where(std > 0, std, np.nan)


PSI_FLOOR = 1e-4  # a bin without any sample would make the logarithm infinite


@dataclass(frozen=True)
class Bins:
    """One feature's training quantiles as bins: (-inf, e0], (e0, e1], …, (e_last, inf)."""

    edges: np.ndarray[Any, Any]
    expected: np.ndarray[Any, Any]  # the training fraction in each bin (len(edges) + 1)

    def psi(self, values: np.ndarray[Any, Any]) -> float | None:
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return None
        counts = np.bincount(np.searchsorted(self.edges, values), minlength=len(self.expected))
        live = np.maximum(counts / len(values), PSI_FLOOR)
        train = np.maximum(self.expected, PSI_FLOOR)
        return float(np.sum((live - train) * np.log(live / train)))


def train_bins(stats: dict[str, Any] | None, features: list[str]) -> list[Bins | None] | None:
    """Per feature, the bins of its training quantiles, from `{"quantiles": [[...] per feature],
    "quantile_p": [...]}` or `{feature: {"quantiles": [...]}}`; `quantile_p` (the probability
    of each quantile) defaults to equal steps (deciles for nine). None without quantiles."""
    if not stats:
        return None
    try:
        if isinstance(stats.get("quantiles"), list):
            per_feature = stats["quantiles"]
        else:
            per_feature = [stats[f].get("quantiles") if f in stats else None for f in features]
        if len(per_feature) != len(features):
            return None
        probs = stats.get("quantile_p")
        out: list[Bins | None] = []
        for q in per_feature:
            if not q:
                out.append(None)
                continue
            edges = np.asarray(q, float)
            p = np.asarray(probs if probs is not None else _steps(len(edges)), float)
            if edges.ndim != 1 or p.shape != edges.shape or np.any(np.diff(edges) < 0):
                return None
            # tied quantiles (a discrete feature) merge: the training CDF at an edge is its last p
            unique, last = np.unique(edges[::-1], return_index=True)
            cdf = p[::-1][last]
            out.append(Bins(unique, np.diff(np.concatenate([[0.0], cdf, [1.0]]))))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return out if any(b is not None for b in out) else None


def _steps(k: int) -> list[float]:
    return [(i + 1) / (k + 1) for i in range(k)]


class ModelHealth:
    """What one model did over the recent window: run time, latency, inputs and outputs."""

    def __init__(
        self, window: int, features: list[str], train_stats: dict[str, Any] | None
    ) -> None:
        self.window = window
        self.features = features
        self.run_us = Ring(window)  # one value per model run
        self.latency_us = Ring(window)  # one value per sample: arrival to result
        self.inputs = Ring(window, (len(features),))
        self.outputs: dict[str, Ring] = {}
        self.labels: dict[str, Ring] = {}  # string labels: how often each was given, recently
        self.train = train_mean_std(train_stats, features)
        self.bins = train_bins(train_stats, features)

    def observe(self, rows: Rows, result: ResultBatch | None, run_us: float | None) -> None:
        x = rows.x[:, -1, :] if rows.x.ndim == 3 else rows.x  # a window's newest sample
        self.inputs.extend(x)
        if run_us is not None:
            self.run_us.extend(np.asarray([run_us]))
        if result is None:
            return
        self.latency_us.extend(result.latency_us)
        for name, column in numeric_columns(result.outputs).items():
            ring = self.outputs.get(name)
            if ring is None:
                ring = self.outputs[name] = Ring(self.window)
            ring.extend(column)
        for name, value in result.outputs.items():
            if np.asarray(value).dtype.kind == "U":
                ring = self.labels.get(name)
                if ring is None:
                    ring = self.labels[name] = Ring(self.window, dtype=object)
                ring.extend(np.asarray(value, dtype=object))

    def report(self) -> dict[str, Any]:
        x = self.inputs.values()
        with np.errstate(all="ignore"):
            mean = np.nanmean(x, axis=0) if len(x) else np.full(len(self.features), np.nan)
            std = np.nanstd(x, axis=0) if len(x) else np.full(len(self.features), np.nan)
        inputs: dict[str, Any] = {
            f: {"mean": _num(mean[i]), "std": _num(std[i])} for i, f in enumerate(self.features)
        }
        drift = None
        if self.train is not None and len(x):
            train_mean, train_std = self.train
            score = np.abs(mean - train_mean) / train_std
            drift = {f: _num(score[i]) for i, f in enumerate(self.features)}
            for i, f in enumerate(self.features):
                inputs[f]["train_mean"] = _num(train_mean[i])
                inputs[f]["drift"] = _num(score[i])
        psi = None
        if self.bins is not None and len(x):
            psi = {
                f: _opt(b.psi(x[:, i]) if b else None)
                for i, (f, b) in enumerate(zip(self.features, self.bins, strict=True))
            }
            for f, value in psi.items():
                inputs[f]["psi"] = value
        outputs = {}
        for name, ring in self.outputs.items():
            v = ring.values()
            outputs[name] = {
                "mean": _num(np.mean(v)) if len(v) else None,
                **percentiles(v, (50, 95)),
            }
        for name, ring in self.labels.items():
            labels, counts = np.unique(ring.values().astype(np.str_), return_counts=True)
            outputs[name] = {"counts": dict(zip(labels.tolist(), counts.tolist(), strict=True))}
        return {
            "window_samples": int(self.inputs.count),
            "run_us": percentiles(self.run_us.values()),
            "latency_us": percentiles(self.latency_us.values()),
            "inputs": inputs,
            "drift": drift,
            "drift_max": _num(np.nanmax(score)) if drift and np.isfinite(score).any() else None,
            "psi": psi,
            "psi_max": max((v for v in (psi or {}).values() if v is not None), default=None),
            "outputs": outputs,
        }


def numeric_columns(outputs: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """One 1-D column per numeric output field; [N, C] tensors become `name[c]`."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in outputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf" or arr.ndim == 0:
            continue
        if arr.ndim == 1:
            out[name] = arr
        elif arr.ndim == 2:
            for c in range(arr.shape[1]):
                out[f"{name}[{c}]"] = arr[:, c]
    return out


class Agreement:
    """Live against shadow on the same samples: label agreement, score difference, score
    correlation and the decisions that differ. `score_sums` are the sufficient statistics of
    the correlation over the window, so the fleet can pool nodes exactly."""

    def __init__(self, window: int, label: str | None, score: str | None) -> None:
        self.label, self.score = label, score
        self.equal = Ring(window, dtype=np.bool_)
        self.diff = Ring(window)
        self.live_score = Ring(window)
        self.shadow_score = Ring(window)
        self.compared = 0  # samples both models produced, since the shadow started
        self.differ = 0  # samples whose labels differ, since the shadow started

    def observe(self, live: ResultBatch, shadow: ResultBatch) -> None:
        _, li, si = np.intersect1d(live.t, shadow.t, assume_unique=True, return_indices=True)
        self.compared += len(li)
        if self.label is not None:
            a, b = live.outputs.get(self.label), shadow.outputs.get(self.label)
            if a is not None and b is not None:
                equal = np.asarray(a)[li] == np.asarray(b)[si]
                self.equal.extend(equal)
                self.differ += int(len(equal) - np.count_nonzero(equal))
        if self.score is not None:
            a, b = live.outputs.get(self.score), shadow.outputs.get(self.score)
            if a is not None and b is not None:
                x = np.asarray(a, np.float64)[li].reshape(len(li), -1)
                y = np.asarray(b, np.float64)[si].reshape(len(si), -1)
                self.diff.extend(np.abs(x - y).max(axis=1))
                self.live_score.extend(x[:, 0])  # the first column of a multi-column score
                self.shadow_score.extend(y[:, 0])

    def report(self) -> dict[str, Any]:
        eq = self.equal.values()
        sums = score_sums(self.live_score.values(), self.shadow_score.values())
        return {
            "compared": self.compared,
            "window_samples": int(max(self.equal.count, self.diff.count)),
            "label": self.label,
            "label_agreement": round(float(eq.mean()), 6) if len(eq) else None,
            "decisions_differ": self.differ,
            "score": self.score,
            "score_diff": percentiles(self.diff.values()),
            "score_corr": correlation(sums),
            "score_sums": sums,
        }


def score_sums(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> dict[str, float]:
    """n, Σx, Σy, Σx², Σy², Σxy of finite pairs: what a (pooled) correlation needs."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    return {
        "n": float(len(x)),
        "sx": float(x.sum()),
        "sy": float(y.sum()),
        "sxx": float((x * x).sum()),
        "syy": float((y * y).sum()),
        "sxy": float((x * y).sum()),
    }


def correlation(s: Mapping[str, float]) -> float | None:
    """Pearson's r from `score_sums` (also summed over nodes); None without spread."""
    n = s.get("n", 0.0)
    if n < 2:
        return None
    vx = s["sxx"] - s["sx"] ** 2 / n
    vy = s["syy"] - s["sy"] ** 2 / n
    if vx <= 1e-12 * max(1.0, s["sxx"]) or vy <= 1e-12 * max(1.0, s["syy"]):
        return None
    r = (s["sxy"] - s["sx"] * s["sy"] / n) / float(np.sqrt(vx * vy))
    return round(max(-1.0, min(1.0, r)), 6)


def pick_fields(
    live: Mapping[str, str], shadow: Mapping[str, str], label: str | None, score: str | None
) -> tuple[str | None, str | None]:
    """The label and score fields to compare: as configured, else the first integer field and
    the first float field both models produce (`live`/`shadow` map field → dtype kind); a
    string label counts as a label."""
    common = [f for f in live if f in shadow]
    if label is None:
        label = next((f for f in common if live[f] in "biuU" and shadow[f] in "biuU"), None)
    if score is None:
        score = next((f for f in common if live[f] == "f" and shadow[f] == "f"), None)
    return label, score


def _opt(v: float | None) -> float | None:
    return None if v is None else _num(v)


def _num(v: Any) -> float | None:
    f = float(v)
    return round(f, 6) if np.isfinite(f) else None
