"""The Grafana dashboards and the Prometheus configs of the compose stacks stay true to what
the endpoints export (no Docker engine needed: the files are read as Grafana and Prometheus
would read them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.fleet import metrics as fleet_metrics
from edgefleet.site import metric_families as site_metrics
from shared.metrics import Family

COMPOSE = Path(__file__).resolve().parents[1] / "compose"
GRAFANA = COMPOSE / "grafana"
BOARDS = {
    "site.json": {f.name: f for f in site_metrics.FAMILIES},
    "fleet.json": {f.name: f for f in fleet_metrics.FAMILIES},
}
SELECTOR = re.compile(r"\b(edgefleet_[a-z0-9_]+)(\{([^}]*)\})?")
MATCHER = re.compile(r'([a-z_][a-z0-9_]*)\s*(=~|!~|!=|=)\s*"')


def exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def family(name: str, families: dict[str, Family]) -> tuple[Family, str]:
    """The family a queried series belongs to, and the extra label a histogram's buckets have."""
    if name in families:
        return families[name], ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = families.get(name.removesuffix(suffix))
        if name.endswith(suffix) and base is not None and base.kind == "histogram":
            return base, "le" if suffix == "_bucket" else ""
    raise AssertionError(f"{name} is queried but not exported")


@pytest.mark.parametrize("file", sorted(BOARDS))
def test_every_queried_metric_and_label_is_exported(file: str) -> None:
    board = json.loads((GRAFANA / "dashboards" / file).read_text())
    families = BOARDS[file]
    assert board["uid"] and board["title"] and board["panels"]
    queried = set()
    for expr in exprs(board):
        for name, _, matchers in SELECTOR.findall(expr):
            fam, extra = family(name, families)
            queried.add(fam.name)
            for label, _ in MATCHER.findall(matchers):
                assert label in (*fam.labels, extra), f"{file}: {name} has no label {label!r}"
            for grouped in re.findall(r"\bby \(([^)]*)\)", expr):
                for label in (g.strip() for g in grouped.split(",")):
                    assert label in (*fam.labels, "le"), f"{file}: by ({label}) in {expr}"
    # the dashboard shows most of what is exported (a new family wants a panel)
    assert len(queried) >= 0.6 * len(families), sorted(set(families) - queried)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/edgefleet.yml").read_text())
    (provider,) = providers["providers"]
    for stack in ("site.yml", "cloud.yml"):
        services = yaml.safe_load((COMPOSE / stack).read_text())["services"]
        grafana = services["grafana"]["volumes"]
        assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana
        assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
        home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert Path(home).name in BOARDS
        assert "prometheus" in services["grafana"]["depends_on"]


def targets(config: str) -> list[str]:
    scrape = yaml.safe_load((COMPOSE / "prometheus" / config).read_text())["scrape_configs"]
    return [t for job in scrape for static in job["static_configs"] for t in static["targets"]]


def test_prometheus_scrapes_the_port_each_endpoint_serves() -> None:
    site = yaml.safe_load((COMPOSE / "site" / "site.yaml").read_text())
    services = yaml.safe_load((COMPOSE / "site.yml").read_text())["services"]
    assert services["metrics"]["command"] == ["metrics", "/config/site.yaml"]
    assert targets("site.yml") == [f"metrics:{site['metrics']['port']}"]
    prom = services["prometheus"]["volumes"]
    assert "./prometheus/site.yml:/etc/prometheus/prometheus.yml:ro" in prom

    fleet = yaml.safe_load((COMPOSE / "cloud" / "fleet.yaml").read_text())
    cloud = yaml.safe_load((COMPOSE / "cloud.yml").read_text())["services"]
    assert targets("cloud.yml") == [f"fleet:{fleet['metrics']['port']}"]
    assert (
        "./prometheus/cloud.yml:/etc/prometheus/prometheus.yml:ro" in cloud["prometheus"]["volumes"]
    )
