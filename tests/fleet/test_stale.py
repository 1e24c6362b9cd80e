"""A node whose agent said `online` and then fell silent shows `stale`, with its age: the
fleet service on a real broker; the test plays the agent's retained status, or runs a real
service runtime whose status loop is the agent's heartbeat."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from shared.config import ServiceConfig
from shared.runtime import Runtime
from shared.topics import Topics
from tests.fleet.test_deploy import announce, eventually, probe
from tests.helpers import Probe

__all__ = ["probe"]

STALE_AFTER_S = 1.0


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any]) -> dict[str, Any]:
    return {**fleet_config, "node_stale_after_s": STALE_AFTER_S}


async def node_when(fleet: FleetClient, site: str, check: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    async def ok() -> bool:
        nonlocal shown
        listed = await fleet.call("node.list")
        shown = next((n for n in listed["nodes"] if n["site"] == site), {})
        return bool(shown and check(shown))

    await eventually(ok, timeout=30)
    return shown


async def test_a_silent_online_node_shows_stale_until_it_is_heard_again(
    fleet: FleetClient, probe: Probe, site: str
) -> None:
    await announce(probe, site, "n1", {"role": "pump"})
    fresh = await node_when(fleet, "n1", lambda n: n["online"] == "online")
    assert fresh["seen_ago_s"] is not None and fresh["seen_ago_s"] <= STALE_AFTER_S
    # no heartbeat comes (the whole site died and its will never reached this broker)
    stale = await node_when(fleet, "n1", lambda n: n["online"] != "online")
    assert stale["online"] == "stale" and stale["seen_ago_s"] >= STALE_AFTER_S  # rounded
    shown = await fleet.call("node.show", {"site": "n1"})
    assert shown["node"]["online"] == "stale"
    await announce(probe, site, "n1", {"role": "pump"})  # heard again
    await node_when(fleet, "n1", lambda n: n["online"] == "online")
    # a node that said it is gone stays what it said, however long ago
    await announce(probe, site, "n1", {}, state="offline")
    gone = await node_when(fleet, "n1", lambda n: (n["seen_ago_s"] or 0) > STALE_AFTER_S)
    assert gone["online"] == "offline"


async def test_the_status_heartbeat_keeps_a_live_node_online(
    fleet: FleetClient, broker: LocalBroker, probe: Probe, site: str
) -> None:
    # the agent's status comes from the service runtime's status loop, as every service's
    config = ServiceConfig.model_validate(
        {
            "site": "h1",
            "instance": "agent",
            "prefix": site,
            "broker": {"host": broker.host, "port": broker.port},
            "timings": {"status_interval_s": STALE_AFTER_S / 4},
        }
    )
    rt = Runtime("agent", config)
    topic = Topics("h1", site).status("agent")
    await probe.subscribe(topic)
    serving = asyncio.create_task(rt.serve(handle_signals=False))
    try:
        await node_when(fleet, "h1", lambda n: n["online"] == "online")
        # over many heartbeats, well past the bound: never stale
        for beats in range(1, 13):
            await probe.wait_for(topic, count=beats + 1, timeout=30)
            node = (await fleet.call("node.show", {"site": "h1"}))["node"]
            assert node["online"] == "online", node
    finally:
        rt.stop.set()
        await serving
    await probe.wait_for(topic, lambda s: s["state"] == "stopped", timeout=30)
