"""Bad deployments: the fleet service deploys to nodes in this process (each a site under its
supervisor, with its agent, on the simulator's Modbus device) while a node is offline across
several deployments, while a node flaps (its site and agent stopped and started at drawn
moments, mid-apply too), with a version that fails its health gate, and with one whose rollback
cannot restore the last good revision (its model removed from or changed in the node's cache).
Figures: converged once to the latest, intermediate revisions applied (0), deployments blocked
by an earlier failure (0), rollbacks done by the node itself, failed rollbacks reported as such."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.nodes import IN_PROGRESS
from faults.conftest import Figure, scaled
from shared.signing import SigningKey
from shared.topics import Topics
from tests.agent.nodes import Node, shown_when, states, write_node
from tests.agent.test_agent import push
from tests.fleet.test_deploy import fleet_config, key_path
from tests.helpers import Probe

__all__ = ["fleet_config", "key_path"]  # the fleet signs with a key of the test's

# minutes each, on a loaded machine: past the suite's 300 s per test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
TIMEOUT = 180
ENDS = ("applied", "failed", "rolled_back", "rollback_failed")


class Fleet:
    """The fleet client, the nodes by name and a probe on every node's reports and results."""

    def __init__(self, fleet: FleetClient, probe: Probe, prefix: str, nodes: dict[str, Node]):
        self.fleet, self.probe, self.prefix, self.nodes = fleet, probe, prefix, nodes

    async def deploy(self, version: int, nodes: list[str]) -> tuple[str, dict[str, int]]:
        """The deployment id and each node's new revision."""
        args = {"flows": [f"pump@{version}"], "nodes": nodes, "timeout_s": 3600}
        result = await self.fleet.call("deploy", args)
        return result["deployment"]["id"], {p["site"]: p["revision"] for p in result["plan"]}

    def reports(self, node: str) -> list[dict[str, Any]]:
        return list(self.probe.decoded(Topics(node, self.prefix).reported()))

    async def ended(self, node: str, revision: int) -> dict[str, Any]:
        """The node's end state for `revision` (or for a newer one: this one was superseded)."""
        found = await self.probe.wait_for(
            Topics(node, self.prefix).reported(),
            lambda r: r["revision"] >= revision and r["state"] in ENDS,
            timeout=TIMEOUT,
        )
        report: dict[str, Any] = found[0]
        return report

    async def results_from(self, node: str, sha256: str, after: int) -> bool:
        """A result from model `sha256` on the node, past its first `after` results."""
        topic = Topics(node, self.prefix).results("pump")
        try:
            await self.probe.wait_until(
                lambda: any(r["model"]["sha256"] == sha256
                            for r in self.probe.decoded(topic)[after:]),
                timeout=TIMEOUT,
            )  # fmt: skip
        except TimeoutError:
            return False
        return True

    def results_seen(self, node: str) -> int:
        return len(self.probe.received(Topics(node, self.prefix).results("pump")))


@contextlib.asynccontextmanager
async def fleet_of(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    names: str,
) -> AsyncIterator[Fleet]:
    key = SigningKey.load(Path(fleet_config["signing_key"]))
    nodes = {}
    for x in names:
        name = f"{site}{x}"
        path = write_node(tmp_path / name, name, site, broker, simulator, key, health_timeout_s=12)
        nodes[name] = Node(tmp_path, name, path)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(f"{site}/+/reported")
        await probe.subscribe(f"{site}/+/results/pump")
        try:
            yield Fleet(fleet, probe, site, nodes)
        finally:
            for node in nodes.values():
                await node.stop()


WHY = ("is not in the cache", "changed on disk")  # what the node says, per way of spoiling


def spoil(node: Node, blobs: set[str], r: int) -> None:
    """The blobs removed from the node's cache (even rounds) or changed on disk (odd ones)."""
    for sha in blobs:
        if r % 2 == 0:
            node.blob(sha).unlink(missing_ok=True)
        else:
            node.blob(sha).write_bytes(b"changed on disk")


def _model(revision: dict[str, Any]) -> str:
    sha: str = revision["desired"]["flows"][0]["resources"][0]["sha256"]
    return sha


async def versions(fleet: FleetClient, tmp_path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` good flow versions, each with a model of its own."""
    return [await push(fleet, tmp_path, "pump-ae", seed=seed + i) for i in range(n)]


async def test_a_node_offline_across_deployments_converges_once_to_the_latest(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    figure: Figure,
) -> None:
    rounds, per_round = scaled(3), 3
    views = await versions(fleet, tmp_path, 1 + rounds * per_round, seed=10)
    async with fleet_of(tmp_path, broker, fleet, fleet_config, site, simulator, "ab") as f:
        a, b = f.nodes
        for node in f.nodes.values():
            await node.start()
        _, plan = await f.deploy(views[0]["version"], [a, b])
        for n in (a, b):
            assert (await f.ended(n, plan[n]))["state"] == "applied"
        converged, intermediate_applied, intermediate_touched = 0, 0, 0
        for r in range(rounds):
            await f.nodes[b].stop()
            issued = []
            for view in views[1 + r * per_round : 1 + (r + 1) * per_round]:
                dep, plan = await f.deploy(view["version"], [a, b])
                assert (await f.ended(a, plan[a]))["state"] == "applied"
                issued.append((dep, plan, view))
            seen = len(f.reports(b))
            await f.nodes[b].start()
            last_dep, last_plan, last_view = issued[-1]
            report = await f.ended(b, last_plan[b])
            shown = await shown_when(
                fleet, last_dep, lambda s: set(states(s).values()) <= {"applied", *ENDS[1:]}
            )
            others = {p[b] for _, p, _ in issued[:-1]}
            touched = [x for x in f.reports(b)[seen:] if x["revision"] in others]
            intermediate_touched += len(touched) + len(f.nodes[b].deployed() & others)
            intermediate_applied += sum(x["state"] == "applied" for x in touched)
            superseded = [
                states(await fleet.call("deployment.show", {"id": d}))[b] == "superseded"
                for d, _, _ in issued[:-1]
            ]
            state = f.nodes[b].state()
            converged += (
                report["revision"] == last_plan[b] and report["state"] == "applied"
                and states(shown) == {a: "applied", b: "applied"} and all(superseded)
                and state["current"]["revision"] == last_plan[b] and state["pending"] is None
                and report["flows"][0]["model_sha256"] == last_view["pins"]["model"]["sha256"]
            )  # fmt: skip
    ok = converged == rounds and intermediate_applied == intermediate_touched == 0
    figure(
        "bad deployments: node offline",
        f"a node offline while {per_round} deployments were issued (another node applied each), "
        f"then back, ×{rounds}",
        f"converged to the latest {converged}/{rounds} (its rows of the earlier ones superseded); "
        f"intermediate revisions applied {intermediate_applied}, taken in at all "
        f"{intermediate_touched}",
        ok,
    )
    assert ok, (converged, intermediate_applied, intermediate_touched)


async def test_a_flapping_node_converges_to_the_latest_and_blocks_nothing(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    figure: Figure,
) -> None:
    deployments = scaled(12, least=3)
    views = await versions(fleet, tmp_path, 1 + deployments, seed=40)
    rng = random.Random(11)
    async with fleet_of(tmp_path, broker, fleet, fleet_config, site, simulator, "ac") as f:
        a, c = f.nodes
        for node in f.nodes.values():
            await node.start()
        _, plan = await f.deploy(views[0]["version"], [a, c])
        for n in (a, c):
            assert (await f.ended(n, plan[n]))["state"] == "applied"
        issued, flaps = [], 0
        for view in views[1:]:
            issued.append(await f.deploy(view["version"], [a, c]))
            # the node goes down or comes up a drawn moment later: before, during or after
            # it applies; deployments come faster than a node applies, too
            await asyncio.sleep(rng.uniform(0.2, 4.0))
            if f.nodes[c].running:
                await f.nodes[c].stop()
            else:
                await f.nodes[c].start()
            flaps += 1
        if not f.nodes[c].running:
            await f.nodes[c].start()
        last_dep, last_plan = issued[-1]
        ends = {n: await f.ended(n, last_plan[n]) for n in (a, c)}
        shown = await shown_when(
            fleet, last_dep, lambda s: not set(states(s).values()) & set(IN_PROGRESS)
        )
        stuck = 0
        for dep, _ in issued[:-1]:
            old = await fleet.call("deployment.show", {"id": dep})
            stuck += sum(s in IN_PROGRESS for s in states(old).values())
        applied = [x["revision"] for x in f.reports(c) if x["state"] == "applied"]
        backwards = sum(x < max(applied[:i], default=0) for i, x in enumerate(applied))
        file = f.nodes[c].state()
        converged = sum(
            ends[n]["revision"] == last_plan[n] and ends[n]["state"] == "applied" for n in ends
        )
        converged = converged if states(shown) == dict.fromkeys(ends, "applied") else 0
        clean = file["pending"] is None and file["current"]["revision"] == last_plan[c]
    ok = converged == 2 and stuck == 0 and backwards == 0 and clean
    figure(
        "bad deployments: node flapping",
        f"{deployments} deployments issued 0.2-4 s apart to two nodes; one of them (site and "
        f"agent) stopped or started after each, {flaps} flaps ({f.nodes[c].cut_short} stops "
        "while it applied)",
        f"converged to the latest {converged}/2 nodes; deployments left in progress (blocked) "
        f"{stuck}; an older revision applied after a newer {backwards}; revisions the flapping "
        f"node applied on the way {len(set(applied))} of {deployments + 1}",
        ok,
    )
    assert ok, (converged, stuck, backwards, file)


async def test_a_failing_gate_rolls_back_and_a_failing_rollback_says_so_blocking_nothing(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    figure: Figure,
) -> None:
    rounds = scaled(2)
    goods = await versions(fleet, tmp_path, 1 + 3 * rounds, seed=70)
    # each bad version reads a source no device feeds: no results, its health gate fails
    bads = [
        await push(fleet, tmp_path, "pump-ae", seed=90 + i, signal_source="plc9")
        for i in range(3 * rounds)
    ]
    self_rolled, back_to_good, gate_runs = 0, 0, 0
    clear, left_running, rollback_runs, fell_back, fallback_runs = 0, 0, 0, 0, 0
    blocked, nexts = 0, 0
    async with fleet_of(tmp_path, broker, fleet, fleet_config, site, simulator, "ab") as f:
        a, b = f.nodes
        for node in f.nodes.values():
            await node.start()
        _, plan = await f.deploy(goods[0]["version"], [a, b])
        for n in (a, b):
            assert (await f.ended(n, plan[n]))["state"] == "applied"
        good = goods[0]

        async def next_deployment(view: dict[str, Any]) -> None:
            nonlocal blocked, nexts
            _, plan = await f.deploy(view["version"], [a, b])
            for n in (a, b):
                nexts += 1
                blocked += (await f.ended(n, plan[n]))["state"] != "applied"

        for r in range(rounds):
            # a version that fails its health gate on both: each node rolls back by itself
            seen = {n: f.results_seen(n) for n in (a, b)}
            dep, plan = await f.deploy(bads[3 * r]["version"], [a, b])
            for n in (a, b):
                gate_runs += 1
                report = await f.ended(n, plan[n])
                self_rolled += report["state"] == "rolled_back" and "health gate" in report["error"]
                sha = good["pins"]["model"]["sha256"]
                back_to_good += await f.results_from(n, sha, seen[n])
            good = goods[1 + 3 * r]
            await next_deployment(good)

            # the same on both, but node a's last good model is gone from its cache or changed:
            # it goes back to the revision before that one instead
            gone = f.nodes[a].blobs("current")
            spoil(f.nodes[a], gone, r)
            dep, plan = await f.deploy(bads[3 * r + 1]["version"], [a, b])
            fallback_runs += 1
            seen_a = f.results_seen(a)
            report = await f.ended(a, plan[a])
            before = f.nodes[a].state()["current"]
            fell_back += (
                report["state"] == "rolled_back"
                and f"restoring revision {plan[a] - 1} failed" in report["error"]
                and WHY[r % 2] in report["error"]
                and before is not None and before["revision"] == report["last_good"]
                and await f.results_from(a, _model(before), seen_a)
            )  # fmt: skip
            assert (await f.ended(b, plan[b]))["state"] == "rolled_back"
            good = goods[2 + 3 * r]
            await next_deployment(good)

            # and with the revision before that one spoiled too: nothing to go back to
            spoil(f.nodes[a], f.nodes[a].blobs("current") | f.nodes[a].blobs("last_good"), r)
            dep, plan = await f.deploy(bads[3 * r + 2]["version"], [a, b])
            rollback_runs += 1
            report = await f.ended(a, plan[a])
            clear += (
                report["state"] == "rollback_failed"
                and f"restoring revision {plan[a] - 1} failed" in report["error"]
                and WHY[r % 2] in report["error"]
                and "runs none of the deployed flows" in report["error"]
            )
            sup = f.nodes[a].sup
            assert sup is not None
            left_running += any(name.endswith("-pump") for name in sup.instances)
            assert (await f.ended(b, plan[b]))["state"] == "rolled_back"
            shown = await shown_when(
                fleet, dep, lambda s: s["deployment"]["state"] != "in_progress"
            )
            clear -= states(shown)[a] != "rollback_failed"  # the fleet shows it as it came
            good = goods[3 + 3 * r]
            await next_deployment(good)
    ok = self_rolled == back_to_good == gate_runs and clear == rollback_runs
    ok = ok and fell_back == fallback_runs and left_running == 0 and blocked == 0
    figure(
        "bad deployments: health gate fails",
        f"a version whose flow gets no data deployed to two nodes, ×{rounds} ({gate_runs} gates)",
        f"rolled back by the node itself {self_rolled}/{gate_runs}, results from the last good "
        f"model again {back_to_good}/{gate_runs}; next deployment blocked {blocked}/{nexts} "
        "(with the row below)",
        self_rolled == back_to_good == gate_runs and blocked == 0,
    )
    figure(
        "bad deployments: rollback fails",
        f"{fallback_runs + rollback_runs} failing versions deployed while the node's last good "
        f"model was removed from its cache or changed on disk ({fallback_runs}), and the one "
        f"before it too ({rollback_runs})",
        f"went back to the one before, said why, results again {fell_back}/{fallback_runs}; "
        f"reported `rollback_failed` with the revision and the reason {clear}/{rollback_runs} "
        f"(node and fleet), the failed revision left running {left_running}; next deployment "
        f"blocked {blocked}/{nexts} (before the fix: `rolled_back` reported, the failed "
        "revision left running, the state file naming a revision that did not run)",
        clear == rollback_runs
        and fell_back == fallback_runs
        and left_running == 0
        and blocked == 0,
    )
    assert ok, (self_rolled, back_to_good, gate_runs, fell_back, clear, left_running, blocked)
