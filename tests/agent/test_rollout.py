"""Staged rollouts end to end: the fleet service deploys in stages to three real sites (each
under its supervisor, with its agent, against the simulator): dry run, pause, resume, and a
broken model whose canary fails its health gate, which aborts the deployment."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared.signing import SigningKey
from shared.topics import Topics
from tests.agent.nodes import shown_when, states, write_node, write_nodes
from tests.agent.test_agent import TIMEOUT, push
from tests.fleet.test_deploy import eventually, fleet_config, key_path
from tests.helpers import Probe

__all__ = ["fleet_config", "key_path"]  # the fleet signs with a key of the test's


async def test_canary_then_the_rest_pause_resume_and_an_abort(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
) -> None:
    key = SigningKey.load(Path(fleet_config["signing_key"]))
    good = await push(fleet, tmp_path, "pump-ae", seed=2)
    # the next version reads a source no device feeds: no results, its health gate fails
    bad = await push(fleet, tmp_path, "pump-ae", seed=5, signal_source="plc9")
    a, b, c = (f"{site}{x}" for x in "abc")
    paths = write_nodes(tmp_path, (a, b, c), site, broker, simulator, key)
    staged = {"stages": ["1", "100%"], "abort_above": "0"}
    request = {"flows": [f"pump@{good['version']}"], "nodes": [a, b, c], "strategy": staged}

    def run(node: str) -> SiteSupervisor:
        return SiteSupervisor(load_site(paths[node]), tmp_path / "w" / node)

    async with Probe(broker.host, broker.port) as probe, contextlib.AsyncExitStack() as stack:
        await probe.subscribe(f"{site}/+/desired")
        await probe.subscribe(f"{site}/+/reported")
        for node in (b, c):  # running: they would take a desired state at once
            await stack.enter_async_context(run(node))

        dry = await fleet.call("deploy", {**request, "dry_run": True})
        assert [(p["site"], p["stage"]) for p in dry["plan"]] == [(a, 0), (b, 1), (c, 1)]
        assert (await fleet.call("deployment.list"))["deployments"] == []

        # the canary (first by site id) is offline: its stage waits; pause meanwhile
        dep = (await fleet.call("deploy", {**request, "timeout_s": 2 * TIMEOUT}))["deployment"]
        await probe.wait_for(Topics(a, site).desired())
        paused = await fleet.call("deployment.pause", {"id": dep["id"]})
        assert paused["deployment"]["state"] == "paused"
        await stack.enter_async_context(run(a))
        held = await shown_when(
            fleet, dep["id"], lambda s: s["deployment"]["stages"][0]["state"] == "held"
        )
        assert states(held) == {a: "applied", b: "waiting", c: "waiting"}
        assert held["deployment"]["state"] == "paused"
        assert [d["site"] for d in probe.decoded(f"{site}/+/desired")] == [a]

        await fleet.call("deployment.resume", {"id": dep["id"]})
        done = await shown_when(
            fleet, dep["id"], lambda s: s["deployment"]["state"] != "in_progress"
        )
        assert done["deployment"]["state"] == "succeeded", done
        assert states(done) == {a: "applied", b: "applied", c: "applied"}

        # a broken model: the canary's agent rolls back by itself, the fleet aborts
        broken = await fleet.call(
            "deploy", {**request, "flows": [f"pump@{bad['version']}"], "timeout_s": 2 * TIMEOUT}
        )
        aborted = await shown_when(
            fleet,
            broken["deployment"]["id"],
            lambda s: s["deployment"]["state"] == "aborted",
        )
        assert states(aborted) == {a: "rolled_back", b: "skipped", c: "skipped"}
        assert "no results from the new model" in aborted["deployment"]["reason"]
        # the canary gets the flows it ran before as a new revision, and applies it
        (back,) = await probe.wait_for(
            Topics(a, site).desired(), lambda d: d["revision"] == 3, timeout=TIMEOUT
        )
        assert [f["version"] for f in back["flows"]] == [good["version"]]
        await probe.wait_for(
            Topics(a, site).reported(),
            lambda r: r["revision"] == 3 and r["state"] == "applied",
            timeout=TIMEOUT,
        )
        # the others never received a desired state from the broken deployment
        for node in (b, c):
            assert [d["revision"] for d in probe.decoded(Topics(node, site).desired())] == [1]


async def test_a_key_rotation_moves_a_node_to_the_new_key_and_retires_the_old(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
) -> None:
    old = SigningKey.load(Path(fleet_config["signing_key"]))
    new_path = tmp_path / "fleet-2.key"
    new = SigningKey.generate()
    new.save(new_path)
    good = await push(fleet, tmp_path, "pump-ae", seed=2)
    node = f"{site}k"
    path = write_node(tmp_path / node, node, site, broker, simulator, old)  # trusts old only
    desired_topic, reported_topic = Topics(node, site).desired(), Topics(node, site).reported()

    async def reported(revision: int, state: str) -> dict[str, Any]:
        (got,) = await probe.wait_for(
            reported_topic,
            lambda r: r["revision"] == revision and r["state"] == state,
            timeout=TIMEOUT,
        )
        return dict(got)

    async with (
        Probe(broker.host, broker.port) as probe,
        SiteSupervisor(load_site(path), tmp_path / "w") as sup,
    ):
        await probe.subscribe(desired_topic)
        await probe.subscribe(reported_topic)
        ref = f"pump@{good['version']}"
        deployed = await fleet.call("deploy", {"flows": [ref], "nodes": [node]})
        await reported(1, "applied")

        async def ended() -> bool:  # the node's report is processed after it reached us
            shown = await fleet.call("deployment.show", {"id": deployed["deployment"]["id"]})
            return bool(shown["deployment"]["state"] == "succeeded")

        await eventually(ended, timeout=TIMEOUT)  # a rotation waits for no deployment
        started = await fleet.call("keys.rotate", {"new_key": str(new_path)})
        assert started["rotation"]["phase"] == "announcing"
        assert started["trust"] == [old.public.text(), new.public.text()]
        # 2: trust both, under the old key; 3: trust the new one only, under the new key
        (announce,) = await probe.wait_for(desired_topic, lambda d: d["revision"] == 2)
        assert announce["signature"]["key_id"] == old.public.key_id
        assert announce["trusted_keys"] == [old.public.text(), new.public.text()]
        assert [f["version"] for f in announce["flows"]] == [good["version"]]
        (switch,) = await probe.wait_for(
            desired_topic, lambda d: d["revision"] == 3, timeout=TIMEOUT
        )
        assert switch["signature"]["key_id"] == new.public.key_id
        assert switch["trusted_keys"] == [new.public.text()]
        await reported(3, "applied")

        async def retired() -> bool:
            shown = await fleet.call("keys.status")
            return bool(shown["rotation"]["phase"] == "retired")

        await eventually(retired, timeout=TIMEOUT)
        state = yaml.safe_load((tmp_path / "w" / "agent" / "state.json").read_text())
        assert state["trusted_keys"] == [new.public.text()]
        assert sup.agent is not None  # debug sessions are verified against the same keys
        assert [k.key_id for k in sup.agent.debug.trusted] == [new.public.key_id]

        # the next deployment is signed by the new key and applied
        await fleet.call("deploy", {"flows": [ref], "nodes": [node]})
        (fourth,) = await probe.wait_for(desired_topic, lambda d: d["revision"] == 4)
        assert fourth["signature"]["key_id"] == new.public.key_id and "trusted_keys" not in fourth
        await reported(4, "applied")
        # a state signed by the retired key is refused
        forged = old.sign({**fourth, "revision": 5})
        await probe.publish(desired_topic, forged, qos=1, retain=True)
        refused = await reported(5, "failed")
        assert "refused (signature)" in refused["error"] and old.public.key_id in refused["error"]
