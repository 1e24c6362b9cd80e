"""`fleet.broker` in site.yaml: the local broker's bridge to the fleet, control plane only."""

from __future__ import annotations

from typing import Any

from edgefleet.site.model import SiteSpec
from edgefleet.site.sitebroker import fleet_bridge
from shared.signing import SigningKey

KEY = SigningKey.generate().public.text()


def spec(**fleet: Any) -> SiteSpec:
    return SiteSpec.model_validate(
        {"site": "plant1", "prefix": "acme", "fleet": {"trusted_keys": [KEY], **fleet}}
    )


def test_no_fleet_broker_no_bridge() -> None:
    assert fleet_bridge(spec()) == ""
    assert fleet_bridge(SiteSpec.model_validate({"site": "plant1"})) == ""


def test_the_bridge_carries_desired_in_and_status_and_reported_out() -> None:
    lines = fleet_bridge(spec(broker={"host": "cloud.example", "port": 8883})).splitlines()
    assert "address cloud.example:8883" in lines
    assert "bridge_protocol_version mqttv50" in lines and "cleansession false" in lines
    topics = [line.split()[1] for line in lines if line.startswith("topic ")]
    assert {"acme/plant1/desired", "acme/plant1/status/+", "acme/plant1/reported"} <= set(topics)
    # no results, events or raw data: the forwarder carries those
    assert not [t for t in topics if "/results/" in t or "/events/" in t or "/raw/" in t]


def test_the_bridge_leaves_its_notification_under_the_site_tree_on_the_cloud() -> None:
    lines = fleet_bridge(spec(broker={"host": "cloud.example", "port": 8883})).splitlines()
    assert {"notifications true", "notifications_local_only false"} <= set(lines)
    assert "notification_topic acme/plant1/bridge" in lines
    # not under status/+ (JSON statuses) and not bridged out: the bridge writes it remotely
    topics = [line.split()[1] for line in lines if line.startswith("topic ")]
    assert "acme/plant1/bridge" not in topics
