"""Derivation of instance configs from a site and its flows (no I/O beyond tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.flow import parse_flow
from edgefleet.site.derive import derive
from edgefleet.site.load import load_site
from edgefleet.site.model import SiteSpec
from services.actuator.config import ActuatorConfig
from services.aligner.config import AlignerConfig
from services.forwarder.config import ForwarderConfig
from services.inference.config import InferenceConfig
from services.modbus.config import ModbusConfig
from services.mqtt_ingest.config import IngestConfig
from shared.codec import Encoding
from shared.config import ServiceConfig
from shared.errors import ConfigError
from tests.site.helpers import FEATURES, flow_data, site_data, write_site

ACTION = {
    "when": "score > 0.8",
    "write": {"source": "plc1", "table": "coil", "address": 0, "value": True},
}


def test_one_instance_per_source_and_per_flow_role(tmp_path: Path) -> None:
    site = site_data("s1", 1883)
    site["sources"].append(
        {
            "name": "gw",
            "kind": "mqtt",
            "inputs": [{"topic": "plant/#", "signals": [{"name": "t", "path": "t"}]}],
        }
    )
    site["actuator"] = {"enabled": True, "dry_run": True}
    site["forwarder"] = {"queue_dir": "state/q"}
    flow = flow_data(actions=[ACTION], sinks=[{"kind": "sqlite", "path": "h.db"}])
    loaded = load_site(write_site(tmp_path, site, flow))
    instances = loaded.instances()
    assert {n: i.service for n, i in instances.items()} == {
        "modbus-plc1": "modbus",
        "ingest-gw": "mqtt-ingest",
        "aligner-pump": "aligner",
        "inference-pump": "inference",
        "actuator-pump": "actuator",
        "forwarder": "forwarder",
    }
    models: dict[str, type[ServiceConfig]] = {
        "modbus-plc1": ModbusConfig,
        "ingest-gw": IngestConfig,
        "aligner-pump": AlignerConfig,
        "inference-pump": InferenceConfig,
        "actuator-pump": ActuatorConfig,
        "forwarder": ForwarderConfig,
    }
    for name, inst in instances.items():
        config = models[name].model_validate(inst.config)
        assert (config.site, config.instance, config.broker.port) == ("s1", name, 1883)
        assert config.timings.status_interval_s == 0.5
    assert instances["modbus-plc1"].config["source"] == "plc1"
    assert instances["ingest-gw"].config["inputs"][0]["source"] == "gw"
    inference = instances["inference-pump"].config
    assert inference["flow"] == "pump" and inference["features"] == FEATURES
    assert inference["model"]["path"] == str(tmp_path / "flows" / "pump.onnx")  # flow-relative
    actuator = instances["actuator-pump"].config
    assert actuator["enabled"] is True and actuator["dry_run"] is True
    assert actuator["actions"][0]["write"]["address"] == 0
    forwarder = instances["forwarder"].config
    assert forwarder["flows"] == ["pump"]
    assert forwarder["queue_dir"] == str(tmp_path / "state" / "q")  # site.yaml-relative
    assert forwarder["sinks"] == [
        {"kind": "sqlite", "name": "sqlite", "path": str(tmp_path / "flows" / "h.db")}
    ]
    assert AlignerConfig.model_validate(instances["aligner-pump"].config).flow_spec().name == "pump"


def test_no_model_no_actions_no_sinks_means_only_adapters_and_aligner() -> None:
    site = SiteSpec.model_validate(site_data("s1", 1883))
    instances = derive(site, [parse_flow(flow_data(model=None))])
    assert sorted(instances) == ["aligner-pump", "modbus-plc1"]


def test_the_aligner_gets_the_flows_name_and_align_only_with_its_encoding() -> None:
    """`align.encoding: json` in a flow reaches the aligner; model and actions stay out of it."""
    site = SiteSpec.model_validate(site_data("s1", 1883))
    data = flow_data(actions=[ACTION])
    data["align"] = {**data["align"], "encoding": "json"}
    config = derive(site, [parse_flow(data)])["aligner-pump"].config
    assert sorted(config["flow"]) == ["align", "name"]
    assert config["flow"]["align"]["encoding"] == "json"
    aligner = AlignerConfig.model_validate(config)
    assert aligner.flow_spec().align.encoding == Encoding.JSON
    plain = derive(site, [parse_flow(flow_data())])["aligner-pump"].config
    assert AlignerConfig.model_validate(plain).flow_spec().align.encoding == Encoding.MSGPACK


def test_aligner_settings_come_from_site_yaml_and_the_flow_wins() -> None:
    """`aligner:` in site.yaml for every flow, `aligner:` in a flow file for its own; they are
    the aligner's top-level keys (live keys: a retained config changes them in place)."""
    site = SiteSpec.model_validate(
        site_data("s1", 1883, aligner={"max_ahead_ms": 5000, "use_complete": False})
    )
    own = parse_flow({**flow_data(), "aligner": {"max_ahead_ms": 250}})
    other = parse_flow({**flow_data(), "name": "other"})
    instances = derive(site, [own, other])
    mine = AlignerConfig.model_validate(instances["aligner-pump"].config)
    theirs = AlignerConfig.model_validate(instances["aligner-other"].config)
    assert (mine.max_ahead_ms, mine.use_complete) == (250, False)
    assert (theirs.max_ahead_ms, theirs.use_complete) == (5000, False)
    plain = AlignerConfig.model_validate(
        derive(SiteSpec.model_validate(site_data("s1", 1883)), [other])["aligner-other"].config
    )
    assert (plain.max_ahead_ms, plain.use_complete) == (60_000, True)  # the defaults


def test_a_bad_aligner_setting_names_its_file_line_and_key(tmp_path: Path) -> None:
    path = write_site(
        tmp_path,
        site_data("s1", 1883),
        flow_data(aligner={"use_complete": True, "max_ahead_ms": -1}),
    )
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert "pump.yaml:" in str(err.value) and "aligner.max_ahead_ms" in str(err.value)
    site = site_data("s1", 1883, aligner={"max_ahed_ms": 10})
    with pytest.raises(ConfigError, match=r"site.yaml:\d+: aligner.max_ahed_ms: unknown key"):
        load_site(write_site(tmp_path / "b", site, flow_data()))


def test_a_sink_declared_differently_by_two_flows_is_refused() -> None:
    site = SiteSpec.model_validate(site_data("s1", 1883))
    a = parse_flow(flow_data(sinks=[{"kind": "sqlite", "path": "/tmp/a.db"}]))
    b = parse_flow({**flow_data(sinks=[{"kind": "sqlite", "path": "/tmp/b.db"}]), "name": "b"})
    with pytest.raises(ConfigError, match="sink 'sqlite' is also declared"):
        derive(site, [a, b])
    same = parse_flow({**flow_data(sinks=[{"kind": "sqlite", "path": "/tmp/a.db"}]), "name": "c"})
    forwarder = derive(site, [a, same])["forwarder"].config
    assert forwarder["flows"] == ["pump", "c"] and len(forwarder["sinks"]) == 1


def test_start_local_is_not_passed_to_the_services() -> None:
    site = SiteSpec.model_validate(
        site_data("s1", 1884) | {"broker": {"port": 1884, "start_local": True}}
    )
    config = derive(site, [])["modbus-plc1"].config
    assert config["broker"] == {"port": 1884}


def test_example_site_is_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "site"
    instances = load_site(root / "site.yaml").instances()
    assert set(instances) == {
        "modbus-plc1",
        "opcua-opc1",
        "aligner-pump-anomaly",
        "inference-pump-anomaly",
        "actuator-pump-anomaly",
        "forwarder",
    }
