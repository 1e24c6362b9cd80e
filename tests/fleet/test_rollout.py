"""Staged rollouts against a real broker, S3 server and the fleet service; the test plays the
agents (their status and reports), as test_deploy.py does. With real agents:
tests/agent/test_rollout.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect
from shared.topics import Topics, fleet_deployments
from tests.agent.nodes import shown_when, states
from tests.fleet.test_deploy import (
    announce,
    desired_of,
    eventually,
    fleet_config,
    flow_versions,
    key_path,
    probe,
    report,
)
from tests.fleet.test_fleet_process import FleetProcess, cli_of, fleet_process, wait_ready
from tests.helpers import Probe

__all__ = ["fleet_config", "fleet_process", "key_path", "probe"]


async def watched(fleet: FleetClient, probe: Probe, prefix: str, tmp_path: Path) -> str:
    """The flow versions pushed; the probe sees every desired state and deployment move."""
    await flow_versions(fleet, tmp_path)
    await probe.subscribe(f"{prefix}/+/desired")
    await probe.subscribe(fleet_deployments(prefix))
    return prefix


async def test_an_offline_canary_holds_its_stage_until_the_timeout(
    fleet: FleetClient, probe: Probe, site: str, tmp_path: Path
) -> None:
    prefix = await watched(fleet, probe, site, tmp_path)
    for node in ("n2", "n3", "n4"):
        await announce(probe, prefix, node, {"role": "pump"})
    # n1 is offline: named, never heard from; it is in the first stage (site order)
    result = await fleet.call(
        "deploy",
        {
            "flows": ["pump-anomaly@1"],
            "nodes": ["n1", "n2", "n3", "n4"],
            "timeout_s": 2.0,
            "strategy": {"stages": ["2", "100%"], "abort_above": "1"},
        },
    )
    dep = result["deployment"]["id"]
    assert [(p["site"], p["stage"]) for p in result["plan"]] == [
        ("n1", 0), ("n2", 0), ("n3", 1), ("n4", 1)
    ]  # fmt: skip
    await probe.wait_for(f"{prefix}/+/desired", count=2)
    await report(probe, prefix, "n2", 1, "applied")
    # the stage waits for n1 up to the timeout, then counts it as failed (1 allowed): goes on
    shown = await shown_when(fleet, dep, lambda s: states(s)["n3"] == "pending")
    n1 = next(n for n in shown["nodes"] if n["site"] == "n1")
    assert n1["state"] == "failed" and n1["error"].startswith("timeout: not applied within 2 s")
    assert shown["deployment"]["stages"][0]["state"] == "held"
    assert shown["deployment"]["stage"] == 1
    (d3,) = await probe.wait_for(Topics("n3", prefix).desired())
    (d1,) = desired_of(probe, prefix, "n1")
    assert d3["issued"] >= d1["issued"] + 2e9  # not before n1's timeout
    for node in ("n3", "n4"):
        await report(probe, prefix, node, 1, "applied")
    # the deployment's state follows its rows at once, its last stage once the rollout has
    # moved on (a step of its own): wait for that step
    done = await shown_when(
        fleet, dep, lambda s: s["deployment"]["stages"][-1]["state"] != "in_progress"
    )
    assert done["deployment"]["state"] == "failed"  # n1 failed, within the threshold
    assert [s["state"] for s in done["deployment"]["stages"]] == ["held", "held"]
    # n1 comes back: its retained desired state is there; its late report updates its row
    await report(probe, prefix, "n1", 1, "applied")
    late = await shown_when(fleet, dep, lambda s: states(s)["n1"] == "applied")
    assert late["deployment"]["state"] == "succeeded"
    # and other systems followed it on ef/fleet/deployments
    got = await probe.wait_for(fleet_deployments(prefix), count=4)
    assert [(e["event"], e["stage"], e["stages"]) for e in got] == [
        ("stage_started", 1, 2), ("stage_held", 1, 2), ("stage_started", 2, 2), ("finished", 2, 2)
    ]  # fmt: skip
    assert got[1]["counts"] == {"applied": 1, "failed": 1} and got[3]["state"] == "failed"
    assert probe.received(fleet_deployments(prefix))[0].content_type == "application/json"


async def test_a_failure_beyond_the_threshold_aborts_and_reverts(
    fleet: FleetClient, probe: Probe, site: str, tmp_path: Path
) -> None:
    prefix = await watched(fleet, probe, site, tmp_path)
    nodes = ["a1", "a2", "a3", "a4"]
    first = await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": nodes})
    await probe.wait_for(f"{prefix}/+/desired", count=4)
    for node in nodes:
        await report(probe, prefix, node, 1, "applied")
    await shown_when(
        fleet, first["deployment"]["id"], lambda s: s["deployment"]["state"] == "succeeded"
    )
    assert first["deployment"]["strategy"] is None

    result = await fleet.call(
        "deploy",
        {
            "flows": ["pump-anomaly@2"],
            "nodes": nodes,
            "strategy": {"stages": ["50%", "100%"], "abort_above": "0"},
        },
    )
    dep = result["deployment"]["id"]
    await probe.wait_for(f"{prefix}/+/desired", lambda d: d["revision"] == 2, count=2)
    await report(probe, prefix, "a1", 2, "applied")
    await report(probe, prefix, "a2", 2, "rolled_back", error="health gate: no results")
    shown = await shown_when(fleet, dep, lambda s: s["deployment"]["state"] == "aborted")
    assert states(shown) == {"a1": "reverted", "a2": "rolled_back", "a3": "skipped",
                             "a4": "skipped"}  # fmt: skip
    view = shown["deployment"]
    assert "stage 1 of 2: 1 of 2 node(s) failed" in view["reason"]
    assert "a2: health gate: no results" in view["reason"]
    assert [s["state"] for s in view["stages"]] == ["failed", "skipped"]
    (aborted,) = await probe.wait_for(fleet_deployments(prefix), lambda e: e["event"] == "aborted")
    assert aborted["deployment"] == dep and aborted["reason"] == view["reason"]
    assert aborted["counts"] == {"reverted": 1, "rolled_back": 1}
    # both nodes of the stage go back to revision 1's flows, as revision 3
    for node in ("a1", "a2"):
        (back,) = await probe.wait_for(Topics(node, prefix).desired(), lambda d: d["revision"] == 3)
        assert [f["version"] for f in back["flows"]] == [1] and "deployment" not in back
    history = await fleet.call("node.history", {"site": "a1"})
    assert history["revisions"][-1]["changes"].startswith(f"abort of {dep}, back to revision 1")
    # the later stage never got anything from this deployment
    for node in ("a3", "a4"):
        assert [d["revision"] for d in desired_of(probe, prefix, node)] == [1]
    # nor does a late report bring a settled row back
    await report(probe, prefix, "a1", 3, "applied")
    await report(probe, prefix, "a3", 2, "applied")

    async def a3_reported() -> bool:
        node = (await fleet.call("node.show", {"site": "a3"}))["node"]
        return bool(node["reported_revision"] == 2)

    await eventually(a3_reported)
    assert states(await fleet.call("deployment.show", {"id": dep}))["a3"] == "skipped"


async def test_cli_stages_dry_run_pause_resume(
    fleet_process: FleetProcess, broker: LocalBroker, probe: Probe, site: str, tmp_path: Path
) -> None:
    arun = cli_of(broker, site)

    await asyncio.to_thread(wait_ready, broker, site)
    async with connect(f"{broker.host}:{broker.port}", prefix=site) as fleet:
        await flow_versions(fleet, tmp_path)
        await probe.subscribe(f"{site}/+/desired")
        await probe.subscribe(fleet_deployments(site))
        target = ("--nodes", "p1,p2,p3", "--canary", "1", "--abort-above", "50%")
        dry = await arun("deploy", "pump-anomaly@1", *target, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)["plan"]
        assert [(p["site"], p["stage"]) for p in plan] == [("p1", 0), ("p2", 1), ("p3", 1)]
        table = (await arun("deploy", "pump-anomaly@1", *target, "--dry-run")).stdout
        assert "dry run: nothing published" in table and table.count("pump-anomaly 1") == 0
        assert (await fleet.call("deployment.list"))["deployments"] == []

        done = await arun("deploy", "pump-anomaly@1", *target, "--json")
        dep = json.loads(done.stdout)["deployment"]["id"]
        paused = await arun("deployment", "pause", dep)
        assert paused.returncode == 0 and "paused" in paused.stdout
        await report(probe, site, "p1", 1, "applied")
        held = await shown_when(
            fleet, dep, lambda s: s["deployment"]["stages"][0]["state"] == "held"
        )
        assert held["deployment"]["state"] == "paused"
        assert states(held) == {"p1": "applied", "p2": "waiting", "p3": "waiting"}
        assert [d["site"] for d in probe.decoded(f"{site}/+/desired")] == ["p1"]
        resumed = await arun("deployment", "resume", dep, "--json")
        assert resumed.returncode == 0, resumed.stderr
        got = await probe.wait_for(f"{site}/+/desired", count=3)
        assert sorted(d["site"] for d in got) == ["p1", "p2", "p3"]
        events = await probe.wait_for(
            fleet_deployments(site), lambda e: e["event"] == "stage_started", count=2
        )
        assert [e["stage"] for e in events] == [1, 2]
        kinds = [e["event"] for e in probe.decoded(fleet_deployments(site))]
        assert kinds[:4] == ["stage_started", "paused", "stage_held", "resumed"]
        shown = await arun("deployment", "show", dep)
        assert "stage 1: held" in shown.stdout and "stage 2: in_progress" in shown.stdout
        at_once = await fleet.call("deploy", {"flows": ["pump-anomaly@2"], "nodes": ["p9"]})
        whole = await arun("deployment", "pause", at_once["deployment"]["id"])
        assert whole.returncode == 1 and "has no stages" in whole.stderr

        keys = await arun("keys", "status", "--json")
        assert keys.returncode == 0, keys.stderr
        assert json.loads(keys.stdout)["rotation"] is None
        missing = await arun("keys", "rotate", str(tmp_path / "none.key"))
        assert missing.returncode == 1 and "cannot read the signing key" in missing.stderr
