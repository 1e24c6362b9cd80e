"""The fleet end to end, as a user runs it: `edgefleet cloud up` (cloud broker, SeaweedFS, the
fleet service) and three sites, each an `edgefleet up` with its own mosquitto bridged to the
cloud, its own plant simulator and its agent; two are labelled `role=pump`, one `role=press`.

One cloud and three sites serve the whole module (starting them is most of its time), so the
cases run in order and each starts from what the one before left: every site runs revision
`applied` of the first deployment, or nothing for the press.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from edgefleet.fleet.client import FleetClient, connect
from shared.topics import Topics
from tests.agent.sites import Cloud, Simulator, Site
from tests.agent.test_agent import push
from tests.fleet.conftest import wait_serving
from tests.helpers import Probe

pytestmark = pytest.mark.slow
TIMEOUT = 90
PUMPS, PRESS = ("e2e-pump1", "e2e-pump2"), "e2e-press1"
LABELS = {PUMPS[0]: {"role": "pump"}, PUMPS[1]: {"role": "pump"}, PRESS: {"role": "press"}}


class Fleet:
    """The cloud and the three sites of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cloud = Cloud(root / "cloud")
        self.sims: list[Simulator] = []
        self.sites: dict[str, Site] = {}

    def start(self) -> None:
        self.cloud.start()
        for name, labels in LABELS.items():
            sim = Simulator(self.root / f"{name}-sim.log")
            self.sims.append(sim)
            self.sites[name] = Site(
                self.root / name, name, sim.port, labels, self.cloud.key,
                fleet_port=self.cloud.port, health_timeout_s=12,
            ).start()  # fmt: skip

    def stop(self) -> None:
        for site in self.sites.values():
            site.stop()
        for sim in self.sims:
            sim.stop()
        self.cloud.stop()

    def pids(self) -> set[int]:
        """Every process of the module's fleet, with its children."""
        roots: list[subprocess.Popen[Any] | None] = [
            self.cloud.process, *(s.process for s in self.sims),
            *(s.process for s in self.sites.values()),
        ]  # fmt: skip
        found: set[int] = set()
        for process in roots:
            if process is None or process.poll() is not None:
                continue
            found.add(process.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                found |= {c.pid for c in psutil.Process(process.pid).children(recursive=True)}
        return found


@pytest.fixture(scope="module")
def fleet_of_three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("three-sites"))
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(autouse=True)
def no_leftover_processes(fleet_of_three: Fleet) -> Iterator[None]:
    """The conftest's check, but the module's cloud and sites live on between its cases."""
    yield
    ours = fleet_of_three.pids()
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in ours]
    for child in left:
        child.kill()
    if left:
        pytest.fail(f"the test left processes running: {', '.join(str(c.pid) for c in left)}")


@pytest.fixture
async def client(fleet_of_three: Fleet) -> AsyncIterator[FleetClient]:
    async with connect(f"127.0.0.1:{fleet_of_three.cloud.port}") as c:
        await wait_serving(c)
        yield c


@pytest.fixture
async def probes(fleet_of_three: Fleet) -> AsyncIterator[dict[str, Probe]]:
    """A probe on each site's own broker, following all of that site's topics."""
    out: dict[str, Probe] = {}
    try:
        for name, site in fleet_of_three.sites.items():
            probe = out[name] = await Probe("127.0.0.1", site.port).__aenter__()
            await probe.subscribe(Topics(name).everything())
        yield out
    finally:
        for probe in out.values():
            await probe.__aexit__(None, None, None)


async def reported(probe: Probe, site: str, deployment: str, state: str) -> dict[str, Any]:
    found = await probe.wait_for(
        Topics(site).reported(),
        lambda r: r.get("deployment") == deployment and r["state"] == state,
        timeout=TIMEOUT,
    )
    report: dict[str, Any] = found[0]
    return report


async def results_from(probe: Probe, site: str, sha256: str, after: int = 0) -> None:
    """A result on the site's own broker from the model `sha256`, past the first `after`."""
    topic = Topics(site).results("pump")
    await probe.wait_until(
        lambda: any(r["model"]["sha256"] == sha256 for r in probe.decoded(topic)[after:]),
        timeout=TIMEOUT,
    )


async def deploy(client: FleetClient, version: int) -> str:
    deployment, _ = await deploy_plan(client, version)
    return deployment


async def deploy_plan(client: FleetClient, version: int) -> tuple[str, dict[str, int]]:
    """`deploy pump@N --to pumps`: the deployment id and each node's new revision."""
    result = await client.call("deploy", {"flows": [f"pump@{version}"], "group": "pumps"})
    plan = {p["site"]: p["revision"] for p in result["plan"]}
    assert sorted(plan) == sorted(PUMPS)
    return result["deployment"]["id"], plan


async def node_states(client: FleetClient, deployment: str) -> dict[str, str]:
    shown = await client.call("deployment.show", {"id": deployment})
    return {n["site"]: n["state"] for n in shown["nodes"]}


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Until `check()`: the fleet's answers announce no change, so they are asked again."""
    async with asyncio.timeout(TIMEOUT):
        while not await check():  # noqa: ASYNC110 (no event to await: the fleet is asked)
            await asyncio.sleep(0.2)


async def until_states(client: FleetClient, deployment: str, want: dict[str, str]) -> None:
    """The fleet's view follows the reported states the bridges carry out."""

    async def reached() -> bool:
        return await node_states(client, deployment) == want

    await eventually(reached)


def state_of(fleet: Fleet, site: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (fleet.sites[site].workdir / "agent" / "state.json").read_text()
    )
    return data


async def test_a_group_deployment_runs_on_its_members_only(
    fleet_of_three: Fleet, client: FleetClient, probes: dict[str, Probe], tmp_path: Path
) -> None:
    # every agent announces itself through its site's bridge, labels included
    nodes: dict[str, Any] = {}

    async def all_online() -> bool:
        nodes.update({n["site"]: n for n in (await client.call("node.list"))["nodes"]})
        return all(nodes.get(s, {}).get("online") == "online" for s in LABELS)

    await eventually(all_online)
    assert {s: nodes[s]["labels"] for s in LABELS} == LABELS
    await client.call("group.create", {"name": "pumps", "selector": "role=pump"})
    shown = await client.call("group.show", {"name": "pumps"})
    assert sorted(shown["group"]["members"]) == sorted(PUMPS)

    view = await push(client, tmp_path, "pump-ae", seed=2)
    sha = view["pins"]["model"]["sha256"]
    deployment = await deploy(client, view["version"])
    for site in PUMPS:
        report = await reported(probes[site], site, deployment, "applied")
        assert report["flows"][0]["model_sha256"] == sha
        await results_from(probes[site], site, sha)  # the flow runs on the site's own broker
    await until_states(client, deployment, dict.fromkeys(PUMPS, "applied"))

    press = probes[PRESS]  # untouched: no desired state, no flow, no report
    status = await press.wait_for(
        Topics(PRESS).status("agent"), lambda s: "agent" in s.get("health", {})
    )
    assert status[0]["health"]["agent"]["flows"] == []
    assert status[0]["health"]["agent"]["revision"] == 0
    assert not press.received(Topics(PRESS).desired())
    assert not press.received(Topics(PRESS).reported())
    assert not press.received(Topics(PRESS).results("pump"))


async def test_a_broken_version_is_rolled_back_on_every_member(
    fleet_of_three: Fleet, client: FleetClient, probes: dict[str, Probe], tmp_path: Path
) -> None:
    good = state_of(fleet_of_three, PUMPS[0])["current"]
    good_sha = good["desired"]["flows"][0]["resources"][0]["sha256"]
    # a new model whose flow reads a source no device of these sites feeds: no results
    bad = await push(client, tmp_path, "pump-ae", seed=5, signal_source="plc9")
    deployment = await deploy(client, bad["version"])
    for site in PUMPS:
        n = len(probes[site].received(Topics(site).results("pump")))
        report = await reported(probes[site], site, deployment, "rolled_back")
        assert "no results from the new model on pump" in report["error"]
        assert report["last_good"] == good["revision"]
        await results_from(probes[site], site, good_sha, after=n)
        assert state_of(fleet_of_three, site)["current"]["revision"] == good["revision"]
    await until_states(client, deployment, dict.fromkeys(PUMPS, "rolled_back"))


async def test_a_site_offline_during_two_deployments_applies_only_the_last(
    fleet_of_three: Fleet, client: FleetClient, probes: dict[str, Probe], tmp_path: Path
) -> None:
    online, away = PUMPS
    before = state_of(fleet_of_three, away)
    fleet_of_three.sites[away].stop()
    second = await push(client, tmp_path, "pump-ae", seed=7)
    third = await push(client, tmp_path, "pump-ae", seed=8)
    first_d, plan = await deploy_plan(client, second["version"])
    await reported(probes[online], online, first_d, "applied")
    # the fleet hears the report over the bridge, after the probe on the site's broker: a
    # deployment issued before then supersedes the row the report was about to close
    await until_states(client, first_d, {online: "applied", away: "pending"})
    last_d = await deploy(client, third["version"])
    await reported(probes[online], online, last_d, "applied")
    await until_states(client, first_d, {online: "applied", away: "superseded"})

    fleet_of_three.sites[away].start()
    async with Probe("127.0.0.1", fleet_of_three.sites[away].port) as probe:
        await probe.subscribe(Topics(away).everything())
        await reported(probe, away, last_d, "applied")
        await results_from(probe, away, third["pins"]["model"]["sha256"])
    await until_states(client, last_d, dict.fromkeys(PUMPS, "applied"))
    after = state_of(fleet_of_three, away)
    # the revision of the first deployment was never taken in: the last one follows the
    # revision that ran before the site went away
    assert after["current"]["deployment"] == last_d
    assert after["last_good"]["revision"] == before["current"]["revision"]
    assert after["current"]["revision"] == after["taken"]
    deployed = fleet_of_three.sites[away].workdir / "deployed"
    assert not (deployed / str(plan[away])).exists()
    flow = yaml.safe_load((deployed / str(after["current"]["revision"]) / "pump.yaml").read_text())
    assert flow["model"]["path"].endswith(third["pins"]["model"]["sha256"])
