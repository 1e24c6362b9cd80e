"""The production compose files stay true to the site they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet.broker import bridge_config
from edgefleet.site.load import check_site, load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared.errors import ConfigError

COMPOSE = Path(__file__).resolve().parents[1] / "compose"


def test_the_site_runs_up_with_its_agent_beside_the_broker() -> None:
    """One edgefleet container runs `up` on the whole site.yaml (supervisor, agent and every
    instance, as `edgefleet up` does on one machine), with its state on a volume."""
    site = COMPOSE / "site" / "site.yaml"
    assert check_site(site) == []
    spec = load_site(site).spec
    assert spec.fleet is not None and spec.fleet.broker is not None  # the agent runs
    services = yaml.safe_load((COMPOSE / "site.yml").read_text())["services"]
    ups = [n for n, svc in services.items() if svc.get("command", [])[:1] == ["up"]]
    assert ups == ["edgefleet"] and "broker" in services
    edgefleet = services["edgefleet"]
    command = edgefleet["command"]
    assert command[:2] == ["up", "/config/site.yaml"] and "--only" not in command
    workdir = command[command.index("--workdir") + 1]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in edgefleet["volumes"]}
    assert any(workdir.startswith(mount) for mount, src in volumes.items() if "/" not in src)
    assert volumes["/config"] == "./site"
    assert spec.broker.host == "broker" and not spec.broker.start_local
    for flow in load_site(site).flows:  # every model path is inside a mount
        if flow.model is not None and flow.model.path is not None:
            assert any(str(flow.model.path).startswith(m + "/") for m in volumes), flow.model.path
    for name in edgefleet.get("environment", {}):
        assert f"${{{name}" in (COMPOSE / "site.yml").read_text()


def test_only_refuses_an_instance_the_site_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no instance modbus-nope"):
        SiteSupervisor(COMPOSE / "site" / "site.yaml", tmp_path, only=["modbus-nope"])
    supervisor = SiteSupervisor(COMPOSE / "site" / "site.yaml", tmp_path, only=["forwarder"])
    assert list(supervisor.instances) == ["forwarder"]


def test_the_cloud_runs_the_fleet_service_with_a_valid_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.fleet.config import Config
    from edgefleet.fleet.service import check
    from shared.config import load_config

    services = yaml.safe_load((COMPOSE / "cloud.yml").read_text())["services"]
    assert services["fleet"]["command"] == ["run", "fleet", "--config", "/config/fleet.yaml"]
    assert "./cloud:/config:ro" in services["fleet"]["volumes"]
    for name in services["fleet"]["environment"]:
        monkeypatch.setenv(name, "x")
    config = load_config(COMPOSE / "cloud" / "fleet.yaml", Config)
    check(config)
    assert (config.broker.host, config.s3.endpoint) == ("broker", "minio:9000")


def test_the_site_broker_config_shows_the_bridge_that_bridge_config_writes() -> None:
    text = (COMPOSE / "mosquitto" / "site.conf").read_text()
    block = bridge_config(
        "plant1",
        "cloud.example:8883",
        settings=(
            "bridge_cafile /mosquitto/config/tls/ca.crt",
            "remote_username site-plant1",
            "remote_password <from the site's secret store>",
        ),
    )
    commented = "".join(f"# {line}\n" for line in block.splitlines())
    assert commented in text
    assert "# topic ef/plant1/debug/data/# out 0\n" in text
