"""Nodes, groups and deployments against a real broker, S3 server and the fleet service.

The test plays the agents: it publishes their retained `status/agent` (with labels) and their
reported states, and reads the desired states the fleet publishes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.service import main
from edgefleet.fleet.store import MIGRATIONS, Store
from shared.messages import ReportedState, Status
from shared.signing import PublicKey, SignatureError, SigningKey, verify
from shared.topics import Topics
from tests.fleet.conftest import fleet_of, wait_serving
from tests.fleet.test_fleet_process import FleetProcess, cli_of, fleet_process, wait_ready
from tests.fleet.test_flows import flow_text, push_flow

__all__ = ["fleet_process"]  # the fixture, shared with test_fleet_process.py
from tests.helpers import Probe, running
from tests.inference import models


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.key"
    SigningKey.generate().save(path)
    return path


@pytest.fixture
def public_key(key_path: Path) -> PublicKey:
    return SigningKey.load(key_path).public


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], key_path: Path) -> dict[str, Any]:
    return {**fleet_config, "signing_key": str(key_path), "deploy_check_interval_s": 0.1}


@pytest.fixture
async def probe(broker: LocalBroker) -> Any:
    async with Probe(broker.host, broker.port) as p:
        yield p


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Until the fleet's answer shows `check`: the fleet announces no event for these."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (no event to await: a command answer)
            await asyncio.sleep(0.05)


async def announce(
    probe: Probe, prefix: str, node: str, labels: dict[str, str], state: str = "online"
) -> None:
    # as the agent's runtime says it: health while online, none in the last will
    health = {"agent": {"labels": labels, "versions": {"edgefleet": "0.4.0"}}}
    health = health if state == "online" else {}
    status = Status(instance="agent", service="agent", state=state, health=health)  # type: ignore[arg-type]
    await probe.publish(Topics(node, prefix).status("agent"), status.to_wire(), qos=1, retain=True)


async def report(
    probe: Probe, prefix: str, node: str, revision: int, state: str, **kw: Any
) -> None:
    body = ReportedState(site=node, revision=revision, state=state, **kw)  # type: ignore[arg-type]
    await probe.publish(Topics(node, prefix).reported(), body.to_wire(), qos=1, retain=True)


async def nodes_known(fleet: FleetClient, count: int) -> None:
    async def check() -> bool:
        listed = await fleet.call("node.list")
        return bool(sum(n["online"] == "online" for n in listed["nodes"]) >= count)

    await eventually(check)


async def flow_versions(fleet: FleetClient, tmp_path: Path) -> None:
    """pump-anomaly@1 and @2 (a different delay), both pinning pump-ae@1."""
    await fleet.push(models.isolation_forest(tmp_path / "a.onnx"), "pump-ae", "model")
    await push_flow(fleet, flow_text({"ref": "pump-ae"}))
    text = flow_text({"ref": "pump-ae"})
    await push_flow(fleet, text.replace("max_delay_ms: 200", "max_delay_ms: 300"))


def desired_of(probe: Probe, prefix: str, node: str) -> list[dict[str, Any]]:
    return [d for d in probe.decoded(Topics(node, prefix).desired())]


async def deployment_state(fleet: FleetClient, dep: str, node: str, state: str) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal shown
        shown = await fleet.call("deployment.show", {"id": dep})
        return any(n["site"] == node and n["state"] == state for n in shown["nodes"])

    await eventually(check)
    return shown


async def test_deploy_to_a_group_reaches_only_its_members(
    fleet: FleetClient, probe: Probe, site: str, tmp_path: Path, public_key: PublicKey
) -> None:
    prefix = site
    await flow_versions(fleet, tmp_path)
    await announce(probe, prefix, "n1", {"role": "pump", "plant": "p1"})
    await announce(probe, prefix, "n2", {"role": "pump", "plant": "p2"})
    await announce(probe, prefix, "n3", {"role": "fan", "plant": "p1"})
    await nodes_known(fleet, 3)

    group = await fleet.call("group.create", {"name": "pumps", "selector": "role = pump"})
    assert group["group"]["selector"] == "role=pump"
    assert group["group"]["members"] == ["n1", "n2"]
    why = await fleet.call("group.show", {"name": "pumps", "node": "n3"})
    assert why["explain"]["member"] is False
    assert why["explain"]["why"] == [
        {"requirement": "role=pump", "ok": False, "reason": "role=fan, not pump"}
    ]
    with pytest.raises(FleetError) as bad:
        await fleet.call("group.create", {"name": "bad", "selector": "role in pump"})
    assert bad.value.code == "invalid" and "column 9" in bad.value.message

    await probe.subscribe(f"{prefix}/+/desired")
    result = await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "group": "pumps"})
    dep = result["deployment"]["id"]
    assert [p["site"] for p in result["plan"]] == ["n1", "n2"]
    got = await probe.wait_for(f"{prefix}/+/desired", count=2)
    assert sorted(d["site"] for d in got) == ["n1", "n2"]
    library = (await fleet.call("library.show", {"ref": "pump-ae@1"}))["resource"]
    for d in got:
        assert verify(d, [public_key]).key_id == public_key.key_id
        assert d["revision"] == 1 and d["deployment"] == dep
        (flow,) = d["flows"]
        assert (flow["name"], flow["version"]) == ("pump-anomaly", 1)
        assert "pump-ae@1" in flow["flow"]  # references pinned in the text the node gets
        assert flow["resources"] == [
            {"kind": "model", "ref": "pump-ae@1", "sha256": library["sha256"],
             "size": library["size"]}
        ]  # fmt: skip
        with pytest.raises(SignatureError):
            verify({**d, "revision": 9}, [public_key])
    assert desired_of(probe, prefix, "n3") == []
    # an agent gets a download URL only for what its desired states name
    url = await fleet.call("library.download_url", {"ref": "pump-ae@1", "site": "n1"})
    assert url["sha256"] == library["sha256"]
    with pytest.raises(FleetError) as denied:
        await fleet.call("library.download_url", {"ref": "pump-ae@1", "site": "n3"})
    assert denied.value.code == "not_allowed"
    listed_flows = (await fleet.call("flow.list"))["flows"]
    assert listed_flows[0]["deployed"] == ["pump-anomaly@1 (2)"]
    assert (await fleet.call("library.list"))["resources"][0]["deployed"] == ["pump-ae@1 (2)"]

    # per node the deployment follows what the node reports for that revision
    await report(probe, prefix, "n1", 1, "applied", timings_ms={"download": 12.5})
    await report(probe, prefix, "n2", 1, "failed", error="model rejected: opset 21")
    shown = await deployment_state(fleet, dep, "n2", "failed")
    shown = await deployment_state(fleet, dep, "n1", "applied")
    by_node = {n["site"]: n for n in shown["nodes"]}
    assert by_node["n1"]["timings_ms"] == {"download": 12.5}
    assert by_node["n2"]["error"] == "model rejected: opset 21"
    assert shown["deployment"]["state"] == "failed"
    node = (await fleet.call("node.show", {"site": "n1"}))["node"]
    assert node["reported_revision"] == 1 and node["reported_state"] == "applied"
    assert node["flows"] == ["pump-anomaly@1"] and node["agent"]["versions"]["edgefleet"]

    # a fleet label wins over the agent's; removing it shows the agent's again
    labelled = await fleet.call("node.label", {"site": "n3", "changes": ["role=pump"]})
    assert labelled["node"]["labels"]["role"] == "pump"
    assert (await fleet.call("group.show", {"name": "pumps"}))["group"]["members"] == [
        "n1", "n2", "n3"
    ]  # fmt: skip
    unlabelled = await fleet.call("node.label", {"site": "n3", "changes": ["role-"]})
    assert unlabelled["node"]["labels"]["role"] == "fan"

    # the next version to one node: its revision grows, only that flow changes
    nxt = await fleet.call("deploy", {"flows": ["pump-anomaly@2"], "nodes": ["n1"]})
    assert nxt["plan"][0]["revision"] == 2
    (d2,) = await probe.wait_for(Topics("n1", prefix).desired(), lambda d: d["revision"] == 2)
    assert [f["version"] for f in d2["flows"]] == [2]
    history = await fleet.call("node.history", {"site": "n1"})
    assert [(r["revision"], r["changes"]) for r in history["revisions"]] == [
        (1, "+pump-anomaly@1"),
        (2, "pump-anomaly 1→2"),
    ]
    assert history["revisions"][0]["state"] == "applied"

    # rollback: version 1 to every node that runs the flow
    back = await fleet.call("rollback", {"flow": "pump-anomaly", "to": 1})
    assert {(p["site"], p["revision"]) for p in back["plan"]} == {("n1", 3), ("n2", 2)}
    (d3,) = await probe.wait_for(Topics("n1", prefix).desired(), lambda d: d["revision"] == 3)
    assert [f["version"] for f in d3["flows"]] == [1]
    listed = await fleet.call("deployment.list")
    assert [d["id"] for d in listed["deployments"]][2] == dep


async def test_an_offline_node_gets_only_the_latest_when_it_comes_back(
    fleet: FleetClient, broker: LocalBroker, probe: Probe, site: str, tmp_path: Path
) -> None:
    prefix = site
    await flow_versions(fleet, tmp_path)
    await announce(probe, prefix, "n4", {"role": "pump"})
    await nodes_known(fleet, 1)
    await announce(probe, prefix, "n4", {}, state="offline")  # its last will

    async def offline() -> bool:
        return bool((await fleet.call("node.show", {"site": "n4"}))["node"]["online"] == "offline")

    await eventually(offline)
    for ref in ("pump-anomaly@1", "pump-anomaly@2", "pump-anomaly@1"):
        await fleet.call("deploy", {"flows": [ref], "selector": "role=pump"})
    node = (await fleet.call("node.show", {"site": "n4"}))["node"]
    assert node["labels"] == {"role": "pump"}  # the last will carries none: kept
    async with Probe(broker.host, broker.port) as later:
        await later.subscribe(Topics("n4", prefix).desired())
        (d,) = await later.wait_for(Topics("n4", prefix).desired())
        assert d["revision"] == 3 and [f["version"] for f in d["flows"]] == [1]
        assert d["deployment"] == (await fleet.call("deployment.list"))["deployments"][0]["id"]
    with pytest.raises(FleetError) as none:
        await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "selector": "role=fan"})
    assert none.value.code == "no_nodes"


async def test_every_reported_step_is_recorded_with_its_time_and_the_own_site_refused(
    fleet: FleetClient, probe: Probe, site: str, tmp_path: Path
) -> None:
    prefix = site
    await flow_versions(fleet, tmp_path)
    await announce(probe, prefix, "e1", {"role": "pump"})
    await nodes_known(fleet, 1)
    with pytest.raises(FleetError) as own:
        await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["e1", "cloud"]})
    assert own.value.code == "own_site" and "'cloud'" in own.value.message
    assert (await fleet.call("node.list"))["nodes"][0]["desired_revision"] == 0  # nothing issued

    dep = await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["e1"]})
    dep_id = dep["deployment"]["id"]
    steps = ["received", "downloading", "verifying", "activating", "applied"]
    for step in steps[:-1]:
        await report(probe, prefix, "e1", 1, step, deployment=dep_id)
    last = ReportedState(site="e1", revision=1, deployment=dep_id, state="applied")
    for _ in range(2):  # the retained report again (a reconnect): one event
        await probe.publish(Topics("e1", prefix).reported(), last.to_wire(), qos=1, retain=True)
    await report(probe, prefix, "e1", 2, "received")  # stored after both: in arrival order

    async def stored() -> bool:
        node = (await fleet.call("node.show", {"site": "e1"}))["node"]
        return bool(node["reported_revision"] == 2)

    await eventually(stored)
    shown = await fleet.call("deployment.show", {"id": dep_id})
    events = shown["nodes"][0]["events"]
    assert [e["state"] for e in events] == steps
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert all(e["error"] is None for e in events)
    history = await fleet.call("node.history", {"site": "e1"})
    assert [e["state"] for e in history["revisions"][0]["events"]] == steps


async def test_timeout_supersede_cancel_and_dry_run(
    fleet: FleetClient, probe: Probe, site: str, tmp_path: Path
) -> None:
    prefix = site
    await flow_versions(fleet, tmp_path)
    await probe.subscribe(f"{prefix}/+/desired")

    dry = await fleet.call(
        "deploy", {"flows": ["pump-anomaly@1"], "nodes": ["a", "b"], "dry_run": True}
    )
    assert dry["deployment"] is None and [p["revision"] for p in dry["plan"]] == [1, 1]
    assert (await fleet.call("deployment.list"))["deployments"] == []

    # timeout: nobody reports
    quick = await fleet.call(
        "deploy", {"flows": ["pump-anomaly@1"], "nodes": ["a"], "timeout_s": 0.3}
    )
    shown = await deployment_state(fleet, quick["deployment"]["id"], "a", "failed")
    assert shown["nodes"][0]["error"].startswith("timeout: not applied within 0.3 s")
    # the first desired state anyone saw is revision 1 of the real deployment: the dry run
    # published nothing and took no revision
    (first,) = await probe.wait_for(f"{prefix}/+/desired")
    assert (first["site"], first["revision"]) == ("a", 1)
    assert first["deployment"] == quick["deployment"]["id"]

    # supersede: a newer deployment to b replaces the one in progress there
    old = (await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["b"]}))["deployment"]
    new = await fleet.call("deploy", {"flows": ["pump-anomaly@2"], "nodes": ["b"]})
    assert new["plan"][0]["superseded"] == old["id"]
    older = await fleet.call("deployment.show", {"id": old["id"]})
    assert older["deployment"]["state"] == "superseded"
    assert older["nodes"][0]["error"] == f"superseded by {new['deployment']['id']}"
    # a late report for the superseded revision does not bring it back
    await report(probe, prefix, "b", 1, "applied")
    await report(probe, prefix, "b", 2, "downloading")
    await deployment_state(fleet, new["deployment"]["id"], "b", "downloading")
    assert (await fleet.call("deployment.show", {"id": old["id"]}))["nodes"][0][
        "state"
    ] == "superseded"

    # cancel: b goes back to what it had before (revision 1's flows), as revision 3
    cancelled = await fleet.call(
        "deployment.cancel", {"id": new["deployment"]["id"], "author": "ana@laptop"}
    )
    assert cancelled["deployment"]["state"] == "cancelled"
    assert cancelled["deployment"]["cancelled_by"] == "ana@laptop"  # who, kept with it
    again = await fleet.call("deployment.cancel", {"id": new["deployment"]["id"], "author": "bo"})
    assert again["deployment"]["cancelled_by"] == "ana@laptop"  # the first cancel stays
    assert cancelled["nodes"][0]["state"] == "cancelled"
    (back,) = await probe.wait_for(Topics("b", prefix).desired(), lambda d: d["revision"] == 3)
    assert [f["ref"] if "ref" in f else f"{f['name']}@{f['version']}" for f in back["flows"]] == [
        "pump-anomaly@1"
    ]
    assert "deployment" not in back
    await report(probe, prefix, "b", 3, "applied")

    async def back_applied() -> bool:
        node = (await fleet.call("node.show", {"site": "b"}))["node"]
        return bool(node["reported_revision"] == 3)

    await eventually(back_applied)
    history = await fleet.call("node.history", {"site": "b"})
    assert history["revisions"][-1]["state"] == "applied"
    assert history["revisions"][-1]["changes"].startswith(
        f"cancel of {new['deployment']['id']}, back to revision 1"
    )
    # the next deployment is not blocked by any of this
    again = await fleet.call("deploy", {"flows": ["pump-anomaly@2"], "nodes": ["a", "b"]})
    assert {(p["site"], p["revision"]) for p in again["plan"]} == {("a", 2), ("b", 4)}


async def test_cli_nodes_groups_deploy(
    fleet_process: FleetProcess, broker: LocalBroker, probe: Probe, site: str, tmp_path: Path
) -> None:
    arun = cli_of(broker, site)

    await asyncio.to_thread(wait_ready, broker, site)
    model = models.isolation_forest(tmp_path / "m.onnx")
    assert (await arun("library", "push", str(model), "--name", "pump-ae")).returncode == 0
    flow = tmp_path / "pump-anomaly.yaml"
    flow.write_text(flow_text({"ref": "pump-ae"}))
    assert (await arun("flow", "push", str(flow))).returncode == 0
    await announce(probe, site, "plant1", {"role": "pump", "plant": "p1"})
    await announce(probe, site, "plant3", {"role": "fan"})

    async def two_nodes() -> bool:
        listed = await arun("node", "list", "--json")
        return len(json.loads(listed.stdout)["nodes"]) == 2

    await eventually(two_nodes, timeout=30)
    table = (await arun("node", "list")).stdout.splitlines()
    assert table[0].split()[:3] == ["SITE", "ONLINE", "LABELS"]
    assert table[1].split()[:3] == ["plant1", "online", "plant=p1,role=pump"]

    created = await arun("group", "create", "pumps", "role=pump,!retired")
    assert created.returncode == 0 and "plant1" in created.stdout
    why = await arun("group", "show", "pumps", "--node", "plant3")
    assert "plant3 is not a member of pumps" in why.stdout and "role=fan, not pump" in why.stdout
    bad = await arun("group", "create", "odd", "role in pump")
    assert bad.returncode == 1 and "column 9" in bad.stderr
    usage = await arun("deploy", "pump-anomaly@1")  # no target
    assert usage.returncode == 2

    dry = await arun("deploy", "pump-anomaly@1", "--to", "pumps", "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing published" in dry.stdout
    done = await arun(
        "deploy", "pump-anomaly@1", "--to", "pumps", "--health-timeout", "2m", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["deployment"]["timeout_s"] == 120 and result["plan"][0]["site"] == "plant1"
    shown = json.loads(
        (await arun("deployment", "show", result["deployment"]["id"], "--json")).stdout
    )
    assert [(n["site"], n["state"]) for n in shown["nodes"]] == [("plant1", "pending")]
    history = await arun("node", "history", "plant1")
    header = ["REVISION", "ISSUED", "DEPLOYMENT", "FLOWS", "CHANGES", "STATE"]
    assert history.stdout.split()[:6] == header
    revisions = json.loads((await arun("node", "history", "plant1", "--json")).stdout)["revisions"]
    assert [(r["revision"], r["changes"], r["state"]) for r in revisions] == [
        (1, "+pump-anomaly@1", "pending")
    ]


async def test_concurrent_deployments_leave_the_newest_retained(
    fleet: FleetClient, broker: LocalBroker, probe: Probe, site: str, tmp_path: Path
) -> None:
    await flow_versions(fleet, tmp_path)
    refs = ["pump-anomaly@1", "pump-anomaly@2"] * 4
    results = await asyncio.gather(
        *(fleet.call("deploy", {"flows": [ref], "nodes": ["c1"]}) for ref in refs)
    )
    revisions = sorted(r["plan"][0]["revision"] for r in results)
    assert revisions == list(range(1, len(refs) + 1))  # each got its own, none twice
    newest = max(results, key=lambda r: r["plan"][0]["revision"])
    async with Probe(broker.host, broker.port) as later:
        await later.subscribe(Topics("c1", site).desired())
        (d,) = await later.wait_for(Topics("c1", site).desired())
    assert d["revision"] == len(refs) and d["deployment"] == newest["deployment"]["id"]
    states = [
        (await fleet.call("deployment.show", {"id": r["deployment"]["id"]}))["deployment"]["state"]
        for r in results
    ]
    assert sorted(states) == ["in_progress"] + ["superseded"] * (len(refs) - 1)


async def test_malformed_reports_are_rejected_and_reported(
    fleet: FleetClient, probe: Probe, site: str
) -> None:
    errors = Topics("cloud", site).errors("fleet")
    await probe.subscribe(errors)
    await probe.publish(Topics("m1", site).reported(), {"kind": "reported", "state": "odd"}, qos=1)
    await probe.publish(Topics("m2", site).status("agent"), [1, 2, 3], qos=1)
    await probe.publish(
        Topics("m3", site).reported(),
        ReportedState(site="other", revision=1, state="applied").to_wire(),
        qos=1,
    )
    got = await probe.wait_for(errors, count=3)
    reasons = " | ".join(e["reason"] for e in got)
    assert "invalid ReportedState" in reasons and "invalid Status" in reasons
    assert "for site 'other' on m3's topic" in reasons
    await report(probe, site, "m4", 1, "applied")  # and the watch goes on

    async def m4_known() -> bool:
        listed = await fleet.call("node.list")
        return [n["site"] for n in listed["nodes"]] == ["m4"]

    await eventually(m4_known)


def test_a_schema_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    MIGRATIONS[0](db)
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version() == len(MIGRATIONS) == 7
    with store.read() as db2:
        tables = {"nodes", "groups", "deployments", "deployment_nodes", "desired", "node_events"}
        assert tables | {"inference_status"} <= set(db2.table_names())
        assert "archived_by" in db2.table("resources").columns_dict
        assert "cancelled_by" in db2.table("deployments").columns_dict


async def test_a_restarted_fleet_publishes_the_latest_desired_states_again(
    fleet_config: dict[str, Any], broker: LocalBroker, probe: Probe, site: str, tmp_path: Path
) -> None:
    topic = Topics("r1", site).desired()
    async with (
        running(main(fleet_of(fleet_config))),
        connect(f"{broker.host}:{broker.port}", prefix=site) as client,
    ):
        await wait_serving(client)
        await flow_versions(client, tmp_path)
        await client.call("deploy", {"flows": ["pump-anomaly@1"], "nodes": ["r1"]})
        await client.call("deploy", {"flows": ["pump-anomaly@2"], "nodes": ["r1"]})
    # as if the publish had never reached the broker: no retained desired state there
    assert (await probe.publish_raw(topic, b"", qos=1, retain=True)).ok
    async with running(main(fleet_of(fleet_config))):
        await probe.subscribe(topic)
        (d,) = await probe.wait_for(topic, lambda d: isinstance(d, dict))
    assert d["revision"] == 2 and [f["version"] for f in d["flows"]] == [2]
