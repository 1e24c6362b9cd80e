"""The fleet service's `/metrics`, scraped over HTTP while it serves real commands and real
reports (real broker, real S3 server, the fleet's SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker, free_port
from edgefleet.fleet.client import connect
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.metrics import NAMES
from edgefleet.fleet.service import main
from tests.fleet.conftest import fleet_of, wait_serving
from tests.fleet.test_deploy import (
    announce,
    deployment_state,
    fleet_config,
    flow_versions,
    key_path,
    nodes_known,
    report,
)
from tests.helpers import Probe, running
from tests.site.test_metrics import family_of, scrape, value

__all__ = ["fleet_config", "key_path"]  # the fixtures of test_deploy.py, used here too


async def test_the_fleet_exports_nodes_deployments_convergence_and_commands(
    fleet_config: dict[str, Any], broker: LocalBroker, site: str, tmp_path: Path
) -> None:
    port = free_port()
    config = fleet_of({**fleet_config, "metrics": {"port": port, "host": "127.0.0.1"}})
    async with (
        running(main(config)),
        connect(f"{broker.host}:{broker.port}", prefix=site) as fleet,
        Probe(broker.host, broker.port) as probe,
    ):
        await wait_serving(fleet)
        _, before = await asyncio.to_thread(scrape, port)
        served = value(before, "edgefleet_fleet_commands_total", outcome="served")
        await flow_versions(fleet, tmp_path)
        for node in ("n1", "n2", "n3"):
            await announce(probe, site, node, {"role": "pump"})
        await nodes_known(fleet, 3)
        await announce(probe, site, "n3", {}, state="offline")
        result = await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["n1", "n2"]})
        dep = result["deployment"]["id"]
        await report(probe, site, "n1", 1, "applied")
        await report(probe, site, "n2", 1, "failed", error="model rejected")
        await deployment_state(fleet, dep, "n1", "applied")
        await deployment_state(fleet, dep, "n2", "failed")
        shown = await fleet.call("node.show", {"site": "n3"})
        assert shown["node"]["online"] == "offline"
        with pytest.raises(FleetError):
            await fleet.call("group.create", {"name": "bad", "selector": "role in pump"})

        _, after = await asyncio.to_thread(scrape, port)
        assert value(after, "edgefleet_fleet_nodes", state="online") == 2
        assert value(after, "edgefleet_fleet_nodes", state="offline") == 1
        assert value(after, "edgefleet_fleet_node_online", node="n3") == 0
        assert value(after, "edgefleet_fleet_node_revision", node="n1", kind="reported") == 1
        assert value(after, "edgefleet_fleet_deployments", state="failed") == 1
        assert value(after, "edgefleet_fleet_deployments", state="in_progress") == 0
        assert value(after, "edgefleet_fleet_deployment_nodes", state="applied") == 1
        assert value(after, "edgefleet_fleet_deployment_nodes", state="failed") == 1
        assert value(after, "edgefleet_fleet_convergence_seconds_count") == 1  # n1 only
        inf = value(after, "edgefleet_fleet_convergence_seconds_bucket", le="+Inf")
        assert inf == 1 and value(after, "edgefleet_fleet_convergence_seconds_sum") >= 0
        assert value(after, "edgefleet_fleet_commands_total", outcome="served") > served + 5
        assert value(after, "edgefleet_fleet_commands_total", outcome="refused") >= 1
        assert {family_of(n, NAMES) for n in after} <= NAMES
