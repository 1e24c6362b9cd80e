"""A site gone as a whole (its broker SIGKILLed, the agent's last will with it): the site
bridge's notification on the cloud broker (`bridge`, `0` as the bridge's last will) makes the
fleet show the node offline, and online again once the bridge is back. Real mosquittos: the
cloud broker and a site broker bridged to it by `bridge_config`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker, bridge_config
from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.errors import FleetError
from shared.messages import Status
from shared.topics import Topics
from tests.helpers import Probe

TIMEOUT = 30


@pytest.fixture
def site_broker(tmp_path: Path, broker: LocalBroker, site: str) -> Iterator[LocalBroker]:
    """The site's mosquitto, bridged to the cloud broker (`broker`) as production does."""
    bridge = bridge_config(
        site, f"{broker.host}:{broker.port}", prefix=site, settings=("restart_timeout 1 2",)
    )
    b = LocalBroker(tmp_path / "site-broker", extra_config=bridge).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def cloud(broker: LocalBroker, site: str) -> AsyncIterator[Probe]:
    """The cloud broker's view of the site's bridge notification."""
    async with Probe(broker.host, broker.port) as p:
        await p.subscribe(Topics(site, site).bridge())
        yield p


def agent_status(state: str = "online") -> dict[str, Any]:
    health = {"agent": {"labels": {"role": "pump"}}} if state == "online" else {}
    status = {"instance": "agent", "service": "agent", "state": state, "health": health}
    return Status.model_validate(status).to_wire()


async def node_shows(fleet: FleetClient, site: str, online: str, bridge: str) -> None:
    """Until `node show` says so: the fleet stores what it observes in a loop of its own and
    announces nothing."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                node = (await fleet.call("node.show", {"site": site}))["node"]
                if (node["online"], node["bridge"]) == (online, bridge):
                    return
            except FleetError:
                pass  # not heard from yet
            await asyncio.sleep(0.05)


async def bridge_says(cloud: Probe, site: str, payload: bytes, after: int) -> None:
    topic = Topics(site, site).bridge()
    await cloud.wait_until(
        lambda: any(m.payload == payload for m in cloud.received(topic)[after:]), timeout=TIMEOUT
    )


async def test_a_killed_site_broker_makes_its_node_offline_and_a_restart_online_again(
    fleet: FleetClient, broker: LocalBroker, site_broker: LocalBroker, cloud: Probe, site: str
) -> None:
    topics = Topics(site, site)
    await bridge_says(cloud, site, b"1", 0)
    async with Probe(site_broker.host, site_broker.port) as local:  # as the agent announces
        await local.publish(topics.status("agent"), agent_status(), qos=1, retain=True)
        await node_shows(fleet, site, "online", "up")

    seen = len(cloud.received(topics.bridge()))
    site_broker.kill()  # SIGKILL: the agent's last will, held there, is lost with it
    await bridge_says(cloud, site, b"0", seen)  # the bridge's will, on the cloud broker
    await node_shows(fleet, site, "offline", "down")
    # the agent's retained `online` seen again meanwhile (a fleet restart) changes nothing
    async with Probe(broker.host, broker.port) as stale:
        await stale.publish(topics.status("agent"), agent_status(), qos=1, retain=True)
    await node_shows(fleet, site, "offline", "down")

    seen = len(cloud.received(topics.bridge()))
    site_broker.start()
    await bridge_says(cloud, site, b"1", seen)
    await node_shows(fleet, site, "online", "up")


async def test_a_bridge_up_does_not_make_a_node_whose_agent_is_offline_online(
    fleet: FleetClient, site_broker: LocalBroker, cloud: Probe, site: str
) -> None:
    topics = Topics(site, site)
    async with Probe(site_broker.host, site_broker.port) as local:
        await local.publish(topics.status("agent"), agent_status("offline"), qos=1, retain=True)
    await node_shows(fleet, site, "offline", "up")


async def test_a_bad_bridge_notification_is_refused(
    fleet: FleetClient, broker: LocalBroker, site: str
) -> None:
    async with Probe(broker.host, broker.port) as p:
        await p.subscribe(Topics("cloud", site).errors("fleet"))
        await p.publish_raw(Topics(site, site).bridge(), b"up", qos=1)
        found = await p.wait_for(Topics("cloud", site).errors("fleet"), timeout=TIMEOUT)
    assert "0 or 1" in found[0]["reason"]
