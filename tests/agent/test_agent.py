"""The agent end to end: a real fleet (mosquitto, SeaweedFS, fleet service) holds the model and
the flow; the test plays the fleet's deploy (a signed, retained desired state); the site runs
under the supervisor against the simulator, and its agent applies, refuses or rolls back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import sqlite_utils
import yaml

from edgefleet.agent.state import Revision, StateFile
from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared.messages import DeployedFlow, DesiredState, PinnedResource
from shared.signing import SigningKey
from shared.topics import Topics
from tests.agent.nodes import write_node
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data

KEY = SigningKey.generate()
TIMEOUT = 60


async def push(
    fleet: FleetClient,
    tmp: Path,
    model: str,
    seed: int,
    signal_source: str = "plc1",
    **extra: Any,
) -> dict[str, Any]:
    """Push a model version and a flow `pump` that uses it: the flow version the fleet shows."""
    model_file = mlp(tmp / f"{model}-{seed}.onnx", f=len(FEATURES), seed=seed)
    ref = (await fleet.push(model_file, model, "model"))["resource"]["ref"]
    flow = flow_data(model=None, **extra)
    for feature in flow["align"]["features"]:
        feature["signal"] = feature["signal"].replace("plc1/", f"{signal_source}/")
    flow["model"] = {"ref": ref}
    pushed = await fleet.call(
        "flow.push", {"text": yaml.safe_dump(flow, sort_keys=False), "filename": "pump.yaml"}
    )
    view: dict[str, Any] = pushed["flow"]
    return view


def desired(
    site: str, revision: int, *views: dict[str, Any], key: SigningKey | None = KEY
) -> dict[str, Any]:
    """What the fleet's deploy publishes: every flow pinned with its digests, signed."""
    state = DesiredState(
        site=site,
        revision=revision,
        deployment=f"d{revision}",
        flows=[
            DeployedFlow(
                name=v["name"],
                version=v["version"],
                flow=v["text"],
                resources=[
                    PinnedResource(kind=p["kind"], ref=p["ref"], sha256=p["sha256"], size=p["size"])
                    for p in v["pins"].values()
                ],
            )
            for v in views
        ],
    )
    wire = state.to_wire()
    return key.sign(wire) if key is not None else wire


def issued(tmp_path: Path, wire: dict[str, Any]) -> None:
    """Record `wire` in the fleet's database as its deploy does when it signs one: the fleet
    gives a site download URLs only for what a desired state it issued to that site pins."""
    db = sqlite_utils.Database(tmp_path / "fleet" / "fleet.db")
    db["desired"].upsert(  # type: ignore[union-attr]
        {"site": wire["site"], "revision": wire["revision"], "deployment_id": wire["deployment"],
         "wire": json.dumps(wire), "changes": "", "issued_ns": time.time_ns()},
        pk=("site", "revision"),
    )  # fmt: skip
    db.close()


async def deploy(probe: Probe, site: str, wire: dict[str, Any], tmp_path: Path) -> None:
    """A desired state as the fleet's deploy publishes it (recorded, then published)."""
    await asyncio.to_thread(issued, tmp_path, wire)
    await probe.publish(Topics(site, site).desired(), wire, qos=1, retain=True)


async def reported(probe: Probe, site: str, revision: int, state: str) -> dict[str, Any]:
    found = await probe.wait_for(
        Topics(site, site).reported(),
        lambda r: r["revision"] == revision and r["state"] == state,
        timeout=TIMEOUT,
    )
    report: dict[str, Any] = found[0]
    return report


async def result_from(probe: Probe, site: str, sha256: str) -> None:
    await probe.wait_for(
        Topics(site, site).results("pump"),
        lambda r: r["model"]["sha256"] == sha256,
        timeout=TIMEOUT,
    )


async def test_applies_a_signed_desired_state_and_refuses_the_rest(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    view = await push(fleet, tmp_path, "pump-ae", seed=2)
    sha = view["pins"]["model"]["sha256"]
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY, 20)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), tmp_path / "w") as sup:
            status = await probe.wait_for(
                Topics(site, site).status("agent"), lambda s: "agent" in s.get("health", {})
            )
            health = status[0]["health"]["agent"]
            assert health["labels"] == {"role": "pump"}
            assert health["versions"]["onnxruntime"] and health["revision"] == 0
            assert health["cpu_count"] >= 1 and health["disk_free_mb"] > 0
            assert "inference-pump" not in sup.instances

            await deploy(probe, site, desired(site, 5, view), tmp_path)
            applied = await reported(probe, site, 5, "applied")
            steps = [r["state"] for r in probe.decoded(Topics(site, site).reported())]
            assert steps == ["received", "downloading", "verifying", "activating", "applied"]
            assert applied["flows"][0]["model_sha256"] == sha
            assert {"download", "verify", "activate", "health", "total"} <= set(
                applied["timings_ms"]
            )
            await result_from(probe, site, sha)
            assert (tmp_path / "w" / "agent" / "cache" / "sha256" / sha).is_file()
            deployed = yaml.safe_load((tmp_path / "w" / "deployed" / "5" / "pump.yaml").read_text())
            assert deployed["model"] == {  # the cached blob, named as in the library
                "path": str(tmp_path / "w" / "agent" / "cache" / "sha256" / sha),
                "name": "pump-ae",
                "version": "1",
            }
            pid = sup.instances["inference-pump"].pid

            other = SigningKey.generate()
            for wire, reason in (
                (desired(site, 6, view, key=None), "signature"),
                (desired(site, 7, view, key=other), "signature"),
                (desired(site, 3, view), "replayed"),
                (desired("elsewhere", 8, view), "wrong_site"),
            ):
                await deploy(probe, site, wire, tmp_path)
                report = await reported(probe, site, wire["revision"], "failed")
                assert f"refused ({reason})" in report["error"]
                needle = f"refused ({reason})"

                def names_it(e: dict[str, Any], needle: str = needle) -> bool:
                    return needle in e["reason"]

                await probe.wait_for(Topics(site, site).errors("agent"), names_it)
            assert sup.instances["inference-pump"].pid == pid  # nothing changed
            state = json.loads((tmp_path / "w" / "agent" / "state.json").read_text())
            assert state["current"]["revision"] == 5 and state["pending"] is None

            # a desired state without the flow: its instances are stopped
            await deploy(probe, site, desired(site, 9), tmp_path)
            await reported(probe, site, 9, "applied")
            assert "inference-pump" not in sup.instances and "aligner-pump" not in sup.instances
            assert "modbus-plc1" in sup.instances


async def test_a_revision_that_fails_its_health_gate_is_rolled_back(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    good = await push(fleet, tmp_path, "pump-ae", seed=2)
    good_sha = good["pins"]["model"]["sha256"]
    # a new model whose flow reads a source no device of this site feeds: no samples, no results
    bad = await push(fleet, tmp_path, "pump-ae", seed=5, signal_source="plc9")
    bad_sha = bad["pins"]["model"]["sha256"]
    assert bad_sha != good_sha
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), tmp_path / "w") as sup:
            await deploy(probe, site, desired(site, 1, good), tmp_path)
            await reported(probe, site, 1, "applied")
            await deploy(probe, site, desired(site, 2, bad), tmp_path)
            report = await reported(probe, site, 2, "rolled_back")
            assert "no results from the new model on pump" in report["error"]
            assert report["last_good"] == 1 and "rollback" in report["timings_ms"]
            n = len(probe.received(Topics(site, site).results("pump")))
            # the last good revision runs again: results from its model
            await probe.wait_until(
                lambda: any(
                    r["model"]["sha256"] == good_sha
                    for r in probe.decoded(Topics(site, site).results("pump"))[n:]
                ),
                timeout=TIMEOUT,
            )
            assert sup.instances["aligner-pump"].online
            state = json.loads((tmp_path / "w" / "agent" / "state.json").read_text())
            assert state["current"]["revision"] == 1 and state["taken"] == 2
            sup_config = yaml.safe_load(sup.instances["inference-pump"].config_file.read_text())
            assert sup_config["model"]["path"].endswith(good_sha)


async def test_a_rollback_that_cannot_restore_the_last_good_says_so_and_blocks_nothing(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    good = await push(fleet, tmp_path, "pump-ae", seed=2)
    bad = await push(fleet, tmp_path, "pump-ae", seed=5, signal_source="plc9")
    after = await push(fleet, tmp_path, "pump-ae", seed=7)
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY)
    work = tmp_path / "w"
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), work) as sup:
            await deploy(probe, site, desired(site, 1, good), tmp_path)
            await reported(probe, site, 1, "applied")
            # the last good revision's model is gone from the cache (a disk cleaned by hand)
            (work / "agent" / "cache" / "sha256" / good["pins"]["model"]["sha256"]).unlink()
            await deploy(probe, site, desired(site, 2, bad), tmp_path)
            report = await reported(probe, site, 2, "rollback_failed")
            assert "no results from the new model on pump" in report["error"]
            assert "restoring revision 1 failed" in report["error"]
            assert "is not in the cache" in report["error"]
            assert "runs none of the deployed flows" in report["error"]
            assert report.get("last_good") is None
            # the revision that failed its gate is not left running, the adapter is
            assert "inference-pump" not in sup.instances and "aligner-pump" not in sup.instances
            assert sup.instances["modbus-plc1"].online
            # reported on the errors topic too (once per error_report_interval_s: it may come
            # after the reported state)
            await probe.wait_for(
                Topics(site, site).errors("agent"),
                lambda e: "restoring revision 1 failed" in e["reason"],
                timeout=TIMEOUT,
            )
            state = json.loads((work / "agent" / "state.json").read_text())
            assert state["current"] is None and state["pending"] is None and state["taken"] == 2
            # the next deployment is not blocked: downloaded, applied, running
            await deploy(probe, site, desired(site, 3, after), tmp_path)
            report = await reported(probe, site, 3, "applied")
            assert report.get("last_good") is None
            await result_from(probe, site, after["pins"]["model"]["sha256"])


async def test_a_new_model_only_is_swapped_in_without_a_restart(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    first = await push(fleet, tmp_path, "pump-ae", seed=2)
    second = await push(fleet, tmp_path, "pump-ae", seed=7)
    new_sha = second["pins"]["model"]["sha256"]
    assert second["version"] == first["version"] + 1
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY, 20)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), tmp_path / "w") as sup:
            await deploy(probe, site, desired(site, 1, first), tmp_path)
            await reported(probe, site, 1, "applied")
            pids = {n: s.pid for n, s in sup.instances.items()}
            await deploy(probe, site, desired(site, 2, second), tmp_path)
            report = await reported(probe, site, 2, "applied")
            assert report["flows"][0]["model_sha256"] == new_sha
            await result_from(probe, site, new_sha)
            assert {n: s.pid for n, s in sup.instances.items()} == pids  # nothing restarted
            config = await probe.wait_for(Topics(site, site).config("inference-pump"))
            assert config[0]["revision"] == 1 and config[0]["config"]["model"]["path"].endswith(
                new_sha
            )

        # a restart of the site runs the applied revision again, from the agent's state
        async with SiteSupervisor(load_site(path), tmp_path / "w") as sup:
            n = len(probe.received(Topics(site, site).results("pump")))
            await sup.wait_online(TIMEOUT, ["aligner-pump", "inference-pump"])
            await probe.wait_until(
                lambda: any(
                    r["model"]["sha256"] == new_sha
                    for r in probe.decoded(Topics(site, site).results("pump"))[n:]
                ),
                timeout=TIMEOUT,
            )
            file = yaml.safe_load(sup.instances["inference-pump"].config_file.read_text())
            assert file["revision"] == 1  # the retained config is not newer: not taken again


async def test_a_revision_cut_short_is_applied_again_after_a_restart(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    first = await push(fleet, tmp_path, "pump-ae", seed=2)
    second = await push(fleet, tmp_path, "pump-ae", seed=7)
    new_sha = second["pins"]["model"]["sha256"]
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY, 20)
    work = tmp_path / "w"
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), work):
            await deploy(probe, site, desired(site, 1, first), tmp_path)
            await reported(probe, site, 1, "applied")
        # what a SIGKILL in the middle of a download leaves: the state saved at `downloading`
        # and a partial blob; the desired state of revision 2 is retained on the broker
        state = StateFile(work / "agent" / "state.json")
        wire = desired(site, 2, second)
        cut = state.load().begin(Revision(revision=2, deployment="d2", desired=wire))
        state.save(cut.step("downloading"))
        partial = work / "agent" / "cache" / "sha256" / f".{new_sha}.1234.part"
        partial.write_bytes(b"half a model")
        await deploy(probe, site, wire, tmp_path)
        async with SiteSupervisor(load_site(path), work):
            await reported(probe, site, 2, "applied")
            await result_from(probe, site, new_sha)
            assert not partial.exists()
            after = state.load()
            assert after.current and after.current.revision == 2
            assert after.last_good and after.last_good.revision == 1 and after.pending is None


async def test_only_the_revisions_a_rollback_can_need_stay_deployed(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int
) -> None:
    # the flow keeps its history in a relative path: one file for every revision
    sinks = [{"kind": "sqlite", "path": "history.db"}]
    one = await push(fleet, tmp_path, "pump-ae", seed=2, sinks=sinks)
    two = await push(fleet, tmp_path, "pump-ae", seed=3, sinks=sinks)
    bad = await push(fleet, tmp_path, "pump-ae", seed=5, signal_source="plc9", sinks=sinks)
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY)
    work = tmp_path / "w"

    def folders() -> set[int]:
        return {int(p.name) for p in (work / "deployed").iterdir()}

    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        async with SiteSupervisor(load_site(path), work):
            for revision in range(1, 5):
                await deploy(
                    probe, site, desired(site, revision, (one, two)[revision % 2]), tmp_path
                )
                await reported(probe, site, revision, "applied")
                # the running revision and the last good one (what a rollback goes back to)
                assert folders() == {revision, revision - 1} - {0}
            # a revision that fails its gate: back to 4, which runs from its kept files
            await deploy(probe, site, desired(site, 5, bad), tmp_path)
            report = await reported(probe, site, 5, "rolled_back")
            assert report["last_good"] == 4
            n = len(probe.received(Topics(site, site).results("pump")))
            await probe.wait_until(
                lambda: any(
                    r["model"]["sha256"] == one["pins"]["model"]["sha256"]
                    for r in probe.decoded(Topics(site, site).results("pump"))[n:]
                ),
                timeout=TIMEOUT,
            )
            assert folders() == {3, 4}  # the failed revision's files went too
            assert not list((work / "deployed").glob("*/history.db"))
            history = sqlite_utils.Database(work / "flows" / "pump" / "history.db")
            models = {r["model"] for r in history.query("SELECT DISTINCT model FROM results")}
            # results of both model versions, across revisions 1-5, in the one file
            assert {one["pins"]["model"]["ref"], two["pins"]["model"]["ref"]} <= models
            state = StateFile(work / "agent" / "state.json").load()
            assert state.current is not None and state.current.revision == 4
            assert state.last_good is not None and state.last_good.revision == 3
