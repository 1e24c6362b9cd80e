"""Serving Prometheus metrics: the `/metrics` endpoint of a site and of the fleet service.

One place for the HTTP side (prometheus-client's own threaded server, so the text format,
OpenMetrics negotiation and gzip are the library's, not ours) and for the families a collector
declares. A collector declares each family once (`Family`), adds samples with `Samples.add`, and
`Samples.families()` renders them as prometheus-client metric families: names, types and label
sets stay in one table, which the naming test and the dashboards test read too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import Field

from shared.config import StrictModel
from shared.errors import ConfigError

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
SITE_PORT = 9720  # a site's /metrics when site.yaml's `metrics:` gives no port
FLEET_PORT = 9721  # the fleet service's


class MetricsSettings(StrictModel):
    """Where `/metrics` is served."""

    port: int = Field(
        SITE_PORT, ge=0, le=65535, description="TCP port of /metrics; 0 picks a free one (tests)"
    )
    host: str = Field(default="0.0.0.0", description="address to listen on (0.0.0.0: all)")


@dataclass(frozen=True)
class Family:
    """One metric family: `name` as scraped (a counter's ends in `_total`), its labels in order."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        """The name prometheus-client takes (it adds `_total` to a counter itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


class Samples:
    """The samples of one scrape, by family."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.table = {f.name: f for f in families}
        self._values: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        self._histograms: dict[str, list[tuple[tuple[str, ...], list[tuple[str, float]], float]]]
        self._histograms = {}

    def add(self, name: str, labels: Mapping[str, str], value: float | int | bool | None) -> None:
        """One sample; None (not reported) adds nothing. `labels` has all the family's."""
        if value is None:
            return
        family = self.table[name]
        key = tuple(str(labels[label]) for label in family.labels)
        self._values.setdefault(name, []).append((key, float(value)))

    def add_histogram(
        self,
        name: str,
        labels: Mapping[str, str],
        buckets: Sequence[tuple[str, float]],
        total: float,
    ) -> None:
        """Cumulative `(le, count)` buckets ending with `+Inf`, and the sum of all observations."""
        family = self.table[name]
        key = tuple(str(labels[label]) for label in family.labels)
        self._histograms.setdefault(name, []).append((key, list(buckets), total))

    def families(self) -> Iterator[Metric]:
        for name, family in self.table.items():
            labels = list(family.labels)
            if family.kind == "histogram":
                hist = HistogramMetricFamily(family.base, family.help, labels=labels)
                for key, buckets, total in self._histograms.get(name, []):
                    hist.add_metric(list(key), buckets, total)
                metric: Metric = hist
            else:
                kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
                plain = kind(family.base, family.help, labels=labels)
                for key, value in self._values.get(name, []):
                    plain.add_metric(list(key), value)
                metric = plain
            if metric.samples:
                yield metric


class MetricsServer:
    """`/metrics` of one collector over HTTP, served from a thread of prometheus-client's.

    A scrape runs `collector.collect()` in that thread: collectors read snapshots the event loop
    replaces whole, under a lock of their own."""

    def __init__(self, collector: Collector, settings: MetricsSettings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.settings = settings
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the free one picked for port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen and serve; `ConfigError` when the port cannot be had (in use, bad host)."""
        try:
            self._server, self._thread = start_http_server(
                self.settings.port, self.settings.host, self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self.settings.host}:{self.settings.port}: {exc}; "
                "set metrics.port to a free port"
            ) from None
        log.info("metrics on http://%s:%d/metrics", self.settings.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
