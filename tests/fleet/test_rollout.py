"""Staged rollouts against a real broker, S3 server and the fleet service; the test plays the
agents (their status and reports), as test_deploy.py does. With real agents:
tests/agent/test_rollout.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from edgefleet.fleet import api, deploy, library, stages
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.service import main
from shared.topics import Topics, fleet_deployments
from tests.agent.nodes import shown_when, states
from tests.fleet.conftest import fleet_of, wait_serving
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
from tests.helpers import Probe, running

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
    # the deployment's state and its last stage's move in the same commit
    done = await shown_when(fleet, dep, lambda s: s["deployment"]["state"] != "in_progress")
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


class Gate:
    """Stands in for the fleet's deploy lock (a real lock inside): while the test holds it
    closed, whoever takes the lock waits there, and `waiting` tells the test someone does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened = threading.Event()
        self.opened.set()
        self.waiting = threading.Event()

    def __enter__(self) -> None:
        if not self.opened.is_set():
            self.waiting.set()
            self.opened.wait()
        self.lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.lock.release()


def torn(shown: dict[str, Any]) -> list[str]:
    """What in one `deployment show` answer does not belong to one moment."""
    view, nodes = shown["deployment"], shown["nodes"]
    by_site = {n["site"]: n["state"] for n in nodes}
    wrong = []
    if Counter(by_site.values()) != Counter(view["counts"]):
        wrong.append(f"counts {view['counts']} but nodes {by_site}")
    for stage in view["stages"]:
        ended = all(by_site[s] in stages.STAGE_ENDED for s in stage["sites"])
        if stage["state"] == "in_progress" and ended:
            wrong.append(f"stage {stage['index'] + 1} in_progress, its nodes ended: {by_site}")
    if view["state"] in ("succeeded", "failed") and any(
        s["state"] != "held" for s in view["stages"]
    ):
        wrong.append(f"deployment {view['state']}, stages {[s['state'] for s in view['stages']]}")
    return wrong


async def test_the_last_stage_and_the_deployment_end_in_one_commit(
    fleet_config: dict[str, Any],
    broker: LocalBroker,
    probe: Probe,
    site: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[library.Fleet] = []
    real_open = library.Fleet.open.__func__  # type: ignore[attr-defined]

    def keep(cls: type[library.Fleet], config: Any) -> library.Fleet:
        opened.append(real_open(cls, config))
        return opened[-1]

    monkeypatch.setattr(library.Fleet, "open", classmethod(keep))
    # no timeout check while the gate is closed: only the reports' batch takes the lock
    config = fleet_of({**fleet_config, "deploy_check_interval_s": 600})
    async with (
        running(main(config)),
        connect(f"{broker.host}:{broker.port}", prefix=site) as fleet,
    ):
        await wait_serving(fleet)
        prefix = await watched(fleet, probe, site, tmp_path)
        for node in ("s1", "s2"):
            await announce(probe, prefix, node, {"role": "pump"})
        strategy = {"stages": ["1", "100%"], "soak_s": 0}
        result = await fleet.call(
            "deploy", {"flows": ["pump-anomaly@1"], "nodes": ["s1", "s2"], "strategy": strategy}
        )
        dep = result["deployment"]["id"]
        await probe.wait_for(Topics("s1", prefix).desired())
        await report(probe, prefix, "s1", 1, "applied")
        await probe.wait_for(Topics("s2", prefix).desired())

        # a status after it, seen stored: the batches before it are through (one at a time)
        await announce(probe, prefix, "s1", {"role": "pump", "seen": "1"})

        async def quiet() -> bool:
            shown = await fleet.call("node.show", {"site": "s1"})
            return bool(shown["node"]["labels"].get("seen") == "1")

        await eventually(quiet)
        (service_fleet,) = opened
        gate = Gate()
        service_fleet.deploy_lock = gate  # type: ignore[assignment]
        gate.opened.clear()
        try:
            await gated(fleet, probe, prefix, dep, service_fleet, gate)
        finally:
            gate.opened.set()  # a failure here must not leave the fleet's thread waiting


async def gated(
    fleet: FleetClient,
    probe: Probe,
    prefix: str,
    dep: str,
    service_fleet: library.Fleet,
    gate: Gate,
) -> None:
    """The last report in, the fleet held at its lock, then let go."""
    await report(probe, prefix, "s2", 1, "applied")
    # the fleet has the last report and stands at the lock: what a reader sees now
    assert await asyncio.to_thread(gate.waiting.wait, 60)
    for _ in range(10):
        shown = await fleet.call("deployment.show", {"id": dep})
        assert torn(shown) == []
    assert shown["deployment"]["state"] == "in_progress"

    # a reader as fast as the handler goes while the last stage completes
    seen: list[str] = []
    reads = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            shown = deploy.deployment_show(service_fleet, api.DeploymentRequest(id=dep))
            seen.extend(torn(shown.model_dump(mode="json")))
            reads += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        gate.opened.set()
        done = await shown_when(fleet, dep, lambda s: s["deployment"]["state"] != "in_progress")
    finally:
        stop.set()
        await asyncio.to_thread(reader.join)
    assert seen == [] and reads > 0
    assert done["deployment"]["state"] == "succeeded" and torn(done) == []
    assert [s["state"] for s in done["deployment"]["stages"]] == ["held", "held"]
    got = await probe.wait_for(fleet_deployments(prefix), lambda e: e["event"] == "finished")
    assert got[0]["state"] == "succeeded"
