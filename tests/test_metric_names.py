"""Every exported metric follows Prometheus' naming conventions (prometheus.io, "Metric and
label naming"): one prefix, snake_case, base units in the name, `_total` exactly on counters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgefleet.fleet.metrics import FAMILIES as FLEET
from edgefleet.site.metric_families import FAMILIES as SITE
from shared.metrics import Family

NAME = re.compile(r"^edgefleet_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# units Prometheus wants as base units: seconds and bytes, never these
NOT_BASE = {"ms", "us", "ns", "millis", "milliseconds", "microseconds", "minutes", "hours",
            "kb", "mb", "gb", "kilobytes", "megabytes", "percent"}  # fmt: skip
TIME_WORDS = {"latency", "delay", "age", "duration", "skew", "time", "timestamp", "convergence"}
SIZE_WORDS = {"memory", "bytes", "cache", "disk"}
RESERVED = {"le", "quantile"}  # le: histogram buckets; quantile: summaries
SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_gsum", "_gcount")


@pytest.mark.parametrize("family", [*SITE, *FLEET], ids=lambda f: f.name)
def test_names_follow_the_prometheus_conventions(family: Family) -> None:
    name, words = family.name, family.name.split("_")
    assert NAME.match(name), f"{name}: snake_case with the edgefleet_ prefix"
    assert family.help, f"{name}: a help text"
    assert not set(words) & NOT_BASE, f"{name}: base units (seconds, bytes) in the name"
    if family.kind == "counter":
        assert name.endswith("_total"), f"{name}: a counter ends in _total"
    else:
        assert "total" not in words, f"{name}: only counters end in _total"
    assert not name.endswith(SUFFIXES), f"{name}: a suffix Prometheus gives samples"
    unit = words[-2] if family.kind == "counter" else words[-1]
    if set(words) & TIME_WORDS:
        assert unit == "seconds", f"{name}: a time is in seconds, named _seconds"
    if set(words) & SIZE_WORDS:
        assert unit == "bytes", f"{name}: a size is in bytes, named _bytes"
    if unit in ("seconds", "bytes") and family.kind == "counter":
        assert words[-1] == "total", name
    for label in family.labels:
        assert LABEL.match(label), f"{name}: label {label!r} in snake_case"
        assert label not in RESERVED, f"{name}: label {label!r} is reserved"
    assert len(set(family.labels)) == len(family.labels), f"{name}: a label twice"


def test_each_name_is_exported_once() -> None:
    names = [f.name for f in (*SITE, *FLEET)]
    assert len(names) == len(set(names))
    # a histogram's sample names must not shadow another family
    for family in (*SITE, *FLEET):
        if family.kind == "histogram":
            assert not {family.name + s for s in SUFFIXES} & set(names), family.name


def test_the_metrics_page_lists_every_family() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    missing = [f.name for f in (*SITE, *FLEET) if f"`{f.name}`" not in page]
    assert not missing, f"docs/metrics.md does not list {missing}"
