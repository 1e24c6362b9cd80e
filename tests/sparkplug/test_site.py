"""A site.yaml with a `kind: sparkplug` source and a flow with a `kind: sparkplug` sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.site.load import load_site
from services.forwarder.config import ForwarderConfig, SparkplugSink
from services.sparkplug.config import SparkplugSourceConfig
from shared.errors import ConfigError
from tests.site.helpers import flow_data, site_data, write_site

SINK = {"kind": "sparkplug", "broker": "127.0.0.1:1884", "group_id": "plant"}


def test_sparkplug_source_and_sink_derive_their_instances(tmp_path: Path) -> None:
    site = site_data("s1", 1883)
    site["sources"].append(
        {"name": "spb", "kind": "sparkplug", "group_id": "plant", "edge_nodes": ["edge1"]}
    )
    loaded = load_site(write_site(tmp_path, site, flow_data(sinks=[SINK])))
    instances = loaded.instances()
    source = SparkplugSourceConfig.model_validate(instances["sparkplug-spb"].config)
    assert instances["sparkplug-spb"].service == "sparkplug"
    assert (source.source, source.group_id, source.edge_nodes) == ("spb", "plant", ["edge1"])
    assert source.server is None  # the edge nodes publish on the site broker
    forwarder = ForwarderConfig.model_validate(instances["forwarder"].config)
    (sink,) = forwarder.sinks
    assert isinstance(sink, SparkplugSink)
    assert (sink.name, sink.broker.port, sink.edge_node_id) == ("sparkplug", 1884, None)


def test_a_wrong_key_of_a_sparkplug_source_points_at_site_yaml(tmp_path: Path) -> None:
    site = site_data("s1", 1883)
    site["sources"].append({"name": "spb", "kind": "sparkplug", "group": "plant"})
    with pytest.raises(ConfigError) as err:
        load_site(write_site(tmp_path, site, flow_data())).instances()
    text = str(err.value)
    assert "site.yaml" in text and "sources.1.group" in text and "unknown key" in text
    assert "sources.1: Field required" in text  # group_id, missing
