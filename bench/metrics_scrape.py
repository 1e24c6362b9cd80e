"""Cost of a site's `/metrics` scrape for N instances, against bare prometheus-client.

The site's figure: `generate_latest` of the registry `edgefleet up` serves (SiteCollector over
a StatusBook of N instances' statuses, shaped as the services report them: modbus adapters,
and per flow an aligner, an inference with 8 features and its three histograms, an actuator;
a forwarder with two sinks and the agent), with CPU and RSS read from /proc for each instance
as the supervisor does. The raw limit in the same run: `generate_latest` of a registry of plain
prometheus-client Counter/Gauge/Histogram children holding the same series with the same
labels (what a service instrumenting itself would have). Also one scrape over HTTP (urllib).

    PYTHONPATH=. .venv/bin/python bench/metrics_scrape.py [--instances 10 50 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.site.metrics import Process, SiteCollector, StatusBook
from shared.histogram import BATCH_SIZE, LATENCY_SECONDS, RUN_SECONDS
from shared.histogram import Histogram as Buckets
from shared.messages import Status
from shared.metrics import MetricsServer, MetricsSettings

FEATURES = [f"f{i}" for i in range(8)]


def runtime(i: int) -> dict[str, Any]:
    return {"uptime_s": 100.0, "received": 1000 + i, "published": 900 + i, "rejected": 3,
            "errors": 1, "revision": 2, "reconnects": 1, "buffered": 0, "dropped": 0,
            "clock_skew_ms": {}, "pid": os.getpid(), "cpu_percent": 1.0, "cpu_seconds": 2.5,
            "rss_mb": 60.0}  # fmt: skip


def histogram(bounds: tuple[float, ...], scale: float) -> dict[str, Any]:
    h = Buckets(bounds)
    h.observe(np.random.default_rng(0).exponential(scale, 500))
    return h.report().to_wire()


def site_statuses(instances: int) -> tuple[dict[str, Status], dict[str, tuple[str, str, str]]]:
    flows = max(1, instances // 4)
    sources = max(1, instances - 3 * flows - 2)
    out: dict[str, Status] = {}
    roles: dict[str, tuple[str, str, str]] = {}

    def put(name: str, service: str, health: dict[str, Any], flow: str = "", src: str = "") -> None:
        out[name] = Status(instance=name, service=service, state="online", since=1, health=health)
        roles[name] = (service, flow, src)

    for s in range(sources):
        modbus = {"readings": 10**6, "bad": 2, "device_down": False, "connects": 1,
                  "errors": {"timeout": 3, "0x02": 1}, "requests": 4, "strings": {},
                  "writes": 5}  # fmt: skip
        put(f"modbus-plc{s}", "modbus", {**runtime(s), "modbus": modbus}, src=f"plc{s}")
    for f in range(flows):
        flow = f"flow{f}"
        aligner = {"flow": flow, "batches": 10**5, "readings": 10**6, "late": 4,
                   "late_by_source": {"plc0": 4}, "ahead": 0, "ahead_by_source": {},
                   "ahead_skew_ms": {}, "duplicate": 0, "unusable": 0, "grid_points": 10**5,
                   "incomplete": 2, "skipped_grid": 0, "published_samples": 10**5,
                   "held_readings": 40, "emitted_until_ns": time.time_ns(),
                   "emit_delay_ms": {"p50": 1.0, "p99": 3.0}}  # fmt: skip
        put(f"aligner-{flow}", "aligner", {**runtime(f), "aligner": aligner}, flow=flow)
        model = {"name": "m", "version": "3", "sha256": "ab" * 32,
                 "health": {"drift": {x: 0.3 for x in FEATURES},
                            "psi": {x: 0.05 for x in FEATURES}}}  # fmt: skip
        inference = {"model": model, "samples": 10**5, "results": 10**5, "runs": 10**4,
                     "queued": 0, "run_seconds": histogram(RUN_SECONDS, 1e-4),
                     "latency_seconds": histogram(LATENCY_SECONDS, 2e-3),
                     "batch_size": histogram(BATCH_SIZE, 8)}  # fmt: skip
        put(f"inference-{flow}", "inference", {**runtime(f), "inference": inference}, flow=flow)
        actuator = {"enabled": True, "dry_run": False, "decisions": {"write": 3, "hold": 10,
                    "none": 10**5}, "suppressed_rows": {"stale": 1}, "late_answers": 0,
                    "actions": {"a1": {"active": False, "held": False, "hold": None},
                                "a2": {"active": True, "held": False, "hold": None}}}  # fmt: skip
        put(f"actuator-{flow}", "actuator", {**runtime(f), "actuator": actuator}, flow=flow)
    sink = {"queued": 0, "queued_results": 0, "queued_bytes": 0, "oldest_age_s": None,
            "dead_letters": 0, "sent": 10**5, "sent_messages": 10**4, "dropped": 0,
            "dropped_messages": 0, "failed": 2, "dead_lettered_messages": 0,
            "last_error": None}  # fmt: skip
    put("forwarder", "forwarder", {**runtime(0), "sink_cloud": sink, "sink_history": sink})
    agent = {"revision": 7, "state": "idle", "cache_mb": 120.0, "disk_free_mb": 9000}
    put("agent", "agent", {**runtime(0), "agent": agent})
    return out, roles


def bare_registry(text: str) -> CollectorRegistry:
    """The same series as plain prometheus-client metrics, set to the same values."""
    registry = CollectorRegistry()
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            les = sorted({float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")})
            labels = sorted({k for s in fam.samples for k in s.labels if k != "le"})
            bounds = [b for b in les if b != float("inf")]
            hist = Histogram(fam.name, fam.documentation, labels, registry=registry, buckets=bounds)
            for s in fam.samples:
                if s.name.endswith("_count"):
                    child = hist.labels(**s.labels)
                    for _ in range(3):  # values do not change the rendering cost
                        child.observe(bounds[0])
            continue
        kind: Callable[..., Any] = Counter if fam.type == "counter" else Gauge
        labels = sorted({k for s in fam.samples for k in s.labels})
        metric = kind(fam.name, fam.documentation, labels, registry=registry)
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            child = metric.labels(**s.labels)
            if fam.type == "counter":
                child.inc(s.value)
            else:
                child.set(s.value)
    return registry


def per_call_ms(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--n", type=int, default=20, help="scrapes per round and figure")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    disable_created_metrics()  # the site exports no `_created` series: neither does the bare one
    print(f"{'instances':>9} {'series':>7} {'site ms':>8} {'bare ms':>8} {'ratio':>6} "
          f"{'HTTP ms':>8} {'bytes':>8}")  # fmt: skip
    for n in args.instances:
        statuses, roles = site_statuses(n)
        book = StatusBook()
        for name, status in statuses.items():
            book.put(name, status)
        procs = {name: Process(os.getpid(), 0, roles[name][0]) for name in statuses}
        collector = SiteCollector("bench", book, lambda r=roles: r, lambda p=procs: p)
        site = CollectorRegistry(auto_describe=False)
        site.register(collector)
        text = generate_latest(site).decode()
        series = sum(not line.startswith("#") for line in text.splitlines() if line)
        bare = bare_registry(text)
        bare_series = sum(
            not line.startswith("#") for line in generate_latest(bare).decode().splitlines() if line
        )
        assert abs(bare_series - series) <= series * 0.02, (bare_series, series)
        server = MetricsServer(collector, MetricsSettings(port=0, host="127.0.0.1"))
        server.start()
        url = f"http://127.0.0.1:{server.port}/metrics"
        figures: list[tuple[float, float, float]] = []
        try:  # interleaved rounds, the median of each: the machine is shared and noisy
            for _ in range(args.rounds):
                figures.append(
                    (
                        per_call_ms(lambda s=site: generate_latest(s), args.n),
                        per_call_ms(lambda b=bare: generate_latest(b), args.n),
                        per_call_ms(lambda u=url: urllib.request.urlopen(u, timeout=10).read(), 5),
                    )
                )
        finally:
            server.stop()
        ours, raw, http = (float(np.median(column)) for column in zip(*figures, strict=True))
        ratio = float(np.median([a / b for a, b, _ in figures]))  # per round: same conditions
        print(f"{len(statuses):>9} {series:>7} {ours:>8.2f} {raw:>8.2f} {ratio:>6.2f} "
              f"{http:>8.2f} {len(text):>8}")  # fmt: skip


if __name__ == "__main__":
    main()
