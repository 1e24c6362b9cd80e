"""Cumulative histograms of a service's status (shared/histogram.py), as Prometheus reads them."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from shared.health import HistogramHealth
from shared.histogram import LATENCY_SECONDS, Histogram

values = st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=200)


@given(st.lists(values, max_size=5))
def test_counts_are_what_prometheus_means_by_le(batches: list[list[float]]) -> None:
    h = Histogram(LATENCY_SECONDS)
    for batch in batches:
        h.observe(np.asarray(batch))
    report = HistogramHealth.model_validate(h.report().to_wire())  # through the wire form
    every = np.asarray([v for b in batches for v in b], dtype=np.float64)
    for bound, count in zip(report.bounds, report.counts, strict=True):
        assert count == int((every <= bound).sum())
    assert report.count == len(every)
    assert np.isclose(report.sum, every.sum())
    buckets = report.buckets()
    assert buckets[-1] == ("+Inf", len(every))
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative


def test_nan_and_infinite_values_are_not_observations() -> None:
    h = Histogram((1.0, 2.0))
    h.observe([0.5, float("nan"), float("inf"), 2.0, 3.0])
    r = h.report()
    assert (r.counts, r.count, r.sum) == ([1, 2], 3, 5.5)
    assert r.buckets() == [("1.0", 1), ("2.0", 2), ("+Inf", 3)]
