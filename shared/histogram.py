"""Cumulative histograms a service keeps for its status, in the shape Prometheus reads.

A window's percentiles (services/inference/health.py) answer "how is it now" on one node but
cannot be added up across nodes or over time; bucket counts can. So a service keeps both: the
counts only grow during a run (a restart starts them at zero again, which Prometheus reads as a
counter reset), and the site's `/metrics` renders them as a histogram as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.health import HistogramHealth

# Bounds of the histograms edgefleet keeps (upper bounds; +Inf is implied).
RUN_SECONDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
               0.1, 0.25, 0.5, 1.0)  # fmt: skip
LATENCY_SECONDS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0)  # fmt: skip
BATCH_SIZE = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Bucket counts of a stream of values, observed a batch at a time (no per-value Python)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.per_bucket = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last: above every bound
        self.sum = 0.0

    def observe(self, values: Any) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if not len(v):
            return
        # side="left": a value equal to a bound belongs to that bound's bucket (le = "<=")
        self.per_bucket += np.bincount(
            np.searchsorted(self.bounds, v, side="left"), minlength=len(self.per_bucket)
        )
        self.sum += float(v.sum())

    def report(self) -> HistogramHealth:
        cumulative = np.cumsum(self.per_bucket)
        return HistogramHealth(
            bounds=self.bounds.tolist(),
            counts=cumulative[:-1].tolist(),
            count=int(cumulative[-1]),
            sum=self.sum,
        )
