"""A shadow model across the fleet, end to end: a real fleet service (mosquitto, SeaweedFS,
signed deployments) and a real site (supervisor, agent, aligner, inference) on the simulator.

deploy --shadow → the agent downloads and verifies the candidate, inference runs it beside the
live model (a hot swap: nothing restarts) → shadow report from the node's inference status →
promote (a new flow version, the previous one the rollback target) → shadow stop; and a
promotion in stages to two sites (`--canary 1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet import cli
from edgefleet.broker import LocalBroker
from edgefleet.fleet import api
from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.shadow import overall
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from services.inference.health import score_sums
from shared import codec
from shared.signing import PublicKey, SigningKey
from shared.topics import Topics
from tests.agent.nodes import write_node, write_nodes
from tests.agent.test_agent import push
from tests.fleet.test_deploy import fleet_config, key_path, public_key
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.site.conftest import simulator
from tests.site.helpers import FEATURES

__all__ = ["fleet_config", "key_path", "public_key", "simulator"]  # fixtures

TIMEOUT = 90


async def applied(fleet: FleetClient, deployment: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            shown = await fleet.call("deployment.show", {"id": deployment})
            states = {n["state"] for n in shown["nodes"]}
            if states == {"applied"}:
                return
            assert not states & {"failed", "rolled_back"}, shown["nodes"]
            await asyncio.sleep(0.2)


async def rolled_out(fleet: FleetClient, deployment: str) -> dict[str, Any]:
    """The staged deployment once the rollout's step after the last report was taken (its
    state follows the rows at once, its last stage one step of the fleet later)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            shown: dict[str, Any] = (await fleet.call("deployment.show", {"id": deployment}))[
                "deployment"
            ]
            if shown["stages"][-1]["state"] != "in_progress":
                return shown
            await asyncio.sleep(0.2)


async def report_where(fleet: FleetClient, flow: str, check: Any) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            with_nodes = True
            try:
                result: dict[str, Any] = await fleet.call("shadow.report", {"flow": flow})
            except FleetError:
                with_nodes = False
            if with_nodes and check(result):
                return result
            await asyncio.sleep(0.2)


def agreement(status: dict[str, Any]) -> dict[str, Any]:
    """The shadow agreement an inference status carries ({} without a shadow)."""
    shadow = status.get("health", {}).get("inference", {}).get("shadow") or {}
    found: dict[str, Any] = shadow.get("agreement") or {}
    return found


async def test_deploy_report_promote_stop(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    site: str,
    simulator: int,
    public_key: PublicKey,
) -> None:
    live = await push(fleet, tmp_path, "pump-ae", seed=2)  # pump-ae@1, flow pump@1
    candidate = mlp(tmp_path / "candidate.onnx", f=len(FEATURES), seed=7)
    cand = (await fleet.push(candidate, "pump-ae", "model"))["resource"]
    wide = mlp(tmp_path / "wide.onnx", f=len(FEATURES) + 1, seed=3)
    await fleet.push(wide, "wide-ae", "model")
    path = write_node(tmp_path / "site", site, site, broker, simulator, public_key, 20)
    topics = Topics(site, site)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topics.everything())
        async with SiteSupervisor(load_site(path), tmp_path / "w") as sup:
            first = await fleet.call("deploy", {"flows": [live["ref"]], "nodes": [site]})
            await applied(fleet, first["deployment"]["id"])
            pids = {n: s.pid for n, s in sup.instances.items()}

            # a candidate that does not fit the flow is refused before anything is issued
            with pytest.raises(FleetError) as info:
                await fleet.call(
                    "deploy", {"flows": [live["ref"]], "nodes": [site], "shadow": "wide-ae@1"}
                )
            assert info.value.code == "does_not_fit" and "wide-ae@1" in info.value.message

            shadowed = await fleet.call(
                "deploy", {"flows": [live["ref"]], "nodes": [site], "shadow": cand["ref"]}
            )
            await applied(fleet, shadowed["deployment"]["id"])
            assert shadowed["plan"][0]["changes"] == f"pump shadow +{cand['ref']}"
            desired = probe.decoded(topics.desired())[-1]
            assert desired["flows"][0]["shadow"]["sha256"] == cand["sha256"]
            assert "signature" in desired
            cached = tmp_path / "w" / "agent" / "cache" / "sha256" / cand["sha256"]
            assert cached.is_file()
            with pytest.raises(FleetError) as info:  # running in shadow: not deletable
                await fleet.call("library.delete", {"ref": cand["ref"]})
            assert info.value.code == "in_use" and "shadow" in info.value.message
            listed = (await fleet.call("library.list", {"kind": "model"}))["resources"]
            assert (
                f"{cand['ref']} (1)"
                in next(r for r in listed if r["name"] == "pump-ae")["deployed"]
            )
            # the node's own figures, and the fleet's report of them
            await probe.wait_for(
                topics.shadow("pump"),
                lambda r: r["model"]["sha256"] == cand["sha256"],
                timeout=TIMEOUT,
            )
            result = await report_where(fleet, "pump", lambda r: r["nodes"][0]["compared"] >= 20)
            assert {n: s.pid for n, s in sup.instances.items()} == pids  # a hot swap only
            node = result["nodes"][0]
            assert node["site"] == site and node["flow"] == live["ref"]
            assert node["desired_shadow"] == cand["ref"] and node["state"] == "online"
            assert node["shadow_sha256"] == cand["sha256"]
            assert node["score_corr"] is not None and -1 <= node["score_corr"] <= 1
            assert node["score_diff"]["p99"] > 0  # two different models
            assert node["shadow_run_us"]["p99"] > 0 and node["live_run_us"]["p99"] > 0
            # what the node said: the fleet heard that status on its own connection, the
            # probe hears it on another, maybe later
            said = await probe.wait_for(
                topics.status("inference-pump"),
                lambda s: agreement(s).get("compared") == node["compared"],
                timeout=TIMEOUT,
            )
            assert said
            o = result["overall"]
            assert o["nodes"] == o["reporting"] == 1 and o["compared"] == node["compared"]
            assert o["score_corr"] == node["score_corr"]

            # the CLI shows the same
            fleet_addr = f"{broker.host}:{broker.port}"
            code = await asyncio.to_thread(
                cli.main, ["shadow", "report", "pump", "--fleet", fleet_addr, "--prefix", site]
            )
            assert code == 0

            # promote: a new flow version with the candidate live, the old one to roll back to
            promoted = await fleet.call("promote", {"flow": "pump", "nodes": [site]})
            assert promoted["previous"] == live["ref"] and promoted["model"] == cand["ref"]
            new_flow = (await fleet.call("flow.show", {"ref": promoted["flow"]}))["flow"]
            assert new_flow["version"] == live["version"] + 1
            assert new_flow["pins"]["model"]["sha256"] == cand["sha256"]
            assert "shadow" not in new_flow["pins"]
            await applied(fleet, promoted["deploy"]["deployment"]["id"])
            await probe.wait_for(
                topics.results("pump"),
                lambda r: r["model"]["sha256"] == cand["sha256"],
                timeout=TIMEOUT,
            )
            after = await report_where(
                fleet, "pump", lambda r: r["nodes"][0]["flow"] == promoted["flow"]
            )
            assert after["nodes"][0]["desired_shadow"] is None

            # the old model back as a shadow of the new version, then stopped
            again = await fleet.call(
                "deploy",
                {
                    "flows": [promoted["flow"]],
                    "nodes": [site],
                    "shadow": live["pins"]["model"]["ref"],
                },
            )
            await applied(fleet, again["deployment"]["id"])
            await report_where(fleet, "pump", lambda r: r["nodes"][0]["compared"] > 0)
            n = len(probe.decoded(topics.status("inference-pump")))
            await probe.wait_until(  # the status the fleet heard, once the probe has it too
                lambda: any(
                    agreement(s).get("compared", 0) > 0
                    for s in probe.decoded(topics.status("inference-pump"))[n - 1 :]
                ),
                timeout=TIMEOUT,
            )
            running = probe.decoded(topics.status("inference-pump"))[-1]["health"]["inference"]
            assert running["shadow"]["sha256"] == live["pins"]["model"]["sha256"]
            stopped = await fleet.call("shadow.stop", {"flow": "pump"})
            (deployment,) = stopped["deployments"]
            assert deployment["plan"][0]["changes"] == "pump shadow -"
            await applied(fleet, deployment["deployment"]["id"])
            await probe.wait_for(
                topics.status("inference-pump"),
                lambda s: (
                    s.get("health", {}).get("inference", {}).get("shadow", 0) is None
                    and s["health"]["inference"]["revision"] > running["revision"]
                ),
                timeout=TIMEOUT,
            )
            with pytest.raises(FleetError) as info:
                await fleet.call("shadow.stop", {"flow": "pump"})
            assert info.value.code == "no_nodes"
            assert {n: s.pid for n, s in sup.instances.items()} == pids  # still hot swaps


def test_overall_pools_nodes_exactly() -> None:
    """Agreement weighted by each node's window, correlation from the summed sums: the same
    as computing over every node's samples at once."""
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=n) for n in (50, 200)]
    ys = [x * 0.8 + rng.normal(scale=0.5, size=len(x)) + i for i, x in enumerate(xs)]
    nodes = [
        api.ShadowNode(
            site=f"n{i}",
            flow="f@1",
            desired_shadow="m@2",
            running_shadow="m 2",
            shadow_sha256=None,
            live_model="m 1",
            state="online",
            compared=len(x),
            window_samples=len(x),
            label_agreement=agree,
            decisions_differ=i,
            score_sums=score_sums(x, y),
        )
        for i, (x, y, agree) in enumerate(zip(xs, ys, (1.0, 0.5), strict=True))
    ]
    o = overall(nodes)
    pooled = np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1]
    assert o.score_corr == pytest.approx(pooled, abs=1e-5)
    assert o.label_agreement == pytest.approx((50 * 1.0 + 200 * 0.5) / 250)
    assert o.compared == 250 and o.decisions_differ == 1 and o.reporting == 2


async def test_promote_in_stages_canary_first_then_the_rest(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = SigningKey.load(Path(fleet_config["signing_key"]))
    live = await push(fleet, tmp_path, "pump-ae", seed=2)
    candidate = mlp(tmp_path / "candidate.onnx", f=len(FEATURES), seed=7)
    cand = (await fleet.push(candidate, "pump-ae", "model"))["resource"]
    a, b = f"{site}a", f"{site}b"
    paths = write_nodes(tmp_path, (a, b), site, broker, simulator, key)
    cli_args = ["promote", "pump", "--nodes", f"{a},{b}", "--canary", "1"]
    cli_args += ["--fleet", f"{broker.host}:{broker.port}", "--prefix", site]
    async with Probe(broker.host, broker.port) as probe, contextlib.AsyncExitStack() as stack:
        await probe.subscribe(f"{site}/+/desired")
        await probe.subscribe(f"{site}/+/reported")
        for n in (a, b):
            await stack.enter_async_context(SiteSupervisor(load_site(paths[n]), tmp_path / "w" / n))
        shadowed = await fleet.call(
            "deploy", {"flows": [live["ref"]], "nodes": [a, b], "shadow": cand["ref"]}
        )
        await applied(fleet, shadowed["deployment"]["id"])

        # a dry run shows each node's stage: the canary (first by site id), then the rest
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, [*cli_args, "--dry-run"]) == 0
        shown = capsys.readouterr().out
        assert "dry run: nothing published" in shown
        rows = [line.split() for line in shown.splitlines() if a in line or b in line]
        assert [(r[1], r[0]) for r in rows] == [(a, "1"), (b, "2")], shown
        assert (await fleet.call("flow.show", {"ref": "pump"}))["flow"]["version"] == 1

        assert await asyncio.to_thread(cli.main, [*cli_args, "--json"]) == 0
        promoted = json.loads(capsys.readouterr().out)
        dep = promoted["deploy"]["deployment"]
        assert dep["strategy"]["stages"] == ["1", "100%"]
        assert [(p["site"], p["stage"]) for p in promoted["deploy"]["plan"]] == [(a, 0), (b, 1)]
        await applied(fleet, dep["id"])
        view = await rolled_out(fleet, dep["id"])
        assert view["state"] == "succeeded" and view["strategy"] == dep["strategy"]
        assert [s["state"] for s in view["stages"]] == ["held", "held"]

        # b got the promotion's desired state only once the canary had reported it applied
        def first(topic: str, check: Any) -> tuple[int, Any]:
            return next(
                (i, body)
                for i, m in enumerate(probe.messages)
                if m.topic == topic and check(body := codec.decode(m.payload, m.content_type))
            )

        ta, tb = Topics(a, site), Topics(b, site)
        a_desired, got = first(ta.desired(), lambda d: d["deployment"] == dep["id"])
        a_applied, _ = first(
            ta.reported(), lambda r: r["revision"] == got["revision"] and r["state"] == "applied"
        )
        b_desired, _ = first(tb.desired(), lambda d: d["deployment"] == dep["id"])
        assert a_desired < a_applied < b_desired
