"""The `/metrics` HTTP server (shared/metrics.py) on real sockets."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import ConfigError
from shared.metrics import Family, MetricsServer, MetricsSettings, Samples

FAMILIES = (
    Family("edgefleet_test_things_total", "counter", "things", ("kind",)),
    Family("edgefleet_test_depth", "gauge", "depth"),
)


class Collector:
    def __init__(self) -> None:
        self.things = 0

    def collect(self) -> Iterator[Metric]:
        s = Samples(FAMILIES)
        s.add("edgefleet_test_things_total", {"kind": "a"}, self.things)
        s.add("edgefleet_test_depth", {}, None)  # not reported: no sample, no family
        yield from s.families()


def test_serves_what_the_collector_has_at_each_scrape_and_stops() -> None:
    collector = Collector()
    server = MetricsServer(collector, MetricsSettings(port=0, host="127.0.0.1"))
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        for things in (0, 5):
            collector.things = things
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            (family,) = text_string_to_metric_families(text)
            assert (family.name, family.type) == ("edgefleet_test_things", "counter")
            assert [(s.name, s.labels, s.value) for s in family.samples] == [
                ("edgefleet_test_things_total", {"kind": "a"}, things)
            ]
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_a_port_in_use_is_a_config_error_that_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(Collector(), MetricsSettings(port=port, host="127.0.0.1"))
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*metrics.port"):
            server.start()
