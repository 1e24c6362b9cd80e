"""Shadow models across the fleet: deploy a candidate beside a flow's live model, report how the
two compare on every node, promote the candidate or stop it.

- `deploy FLOW@N --shadow MODEL@M` (deploy.py calls `attach`): the flow's entry in each node's
  desired state carries the candidate pinned with its digest (signed like the rest), after the
  same `check_fits` the inference service runs on a candidate. The agent downloads and
  verifies it like any blob, and the inference instance's shadow changes through its retained
  `config/{instance}`: a hot swap, the live model untouched.
- The fleet stores each node's inference status (retained `status/inference-{flow}`, bridged
  out) as it arrives; `report` reads the shadow's figures from them (per node, and pooled).
- `stop`: a new deployment of the same flow version without the shadow.
- `promote`: a new flow version, the flow with the candidate as its model, deployed to the
  nodes that run the shadow, in stages when the request has a strategy (as `deploy`). The
  version it replaces stays the rollback target
  (`edgefleet rollback FLOW --to N`), and the node's agent keeps it as its last good revision.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlite_utils
import yaml

from edgefleet.fleet import api, flows
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.nodes import latest_desired
from edgefleet.fleet.store import Row, one
from services.inference.health import correlation
from shared.messages import DeployedFlow, PinnedResource, Status, iso

INFERENCE_PREFIX = "inference-"  # the instance of a flow's model (edgefleet/site/derive.py)


# ---------------------------------------------------------------------------- deploy


def attach(fleet: Fleet, new: list[DeployedFlow], ref: str | None) -> list[DeployedFlow]:
    """The deployed flows with the shadow model pinned on the one flow; checked to fit it."""
    if ref is None:
        return new
    if len(new) != 1:
        raise FleetError("invalid", "shadow: deploy one flow version with --shadow")
    flow = new[0]
    name, version = api.split_ref(ref)
    model = fleet.store.resource(name, version, active=version is None)
    model_ref = f"{model['name']}@{model['version']}"
    if model["kind"] != "model":
        raise FleetError("invalid", f"shadow: {model_ref} is a {model['kind']}, not a model")
    if model["archived_ns"] is not None:
        raise FleetError("archived", f"shadow: {model_ref} is archived")
    row = fleet.store.flow(flow.name, flow.version)
    if "model" not in fleet.store.flow_refs(row["id"]):
        raise FleetError("invalid", f"shadow: {flow.ref} has no library model to shadow")
    flows.check_shadow(fleet, row, model)
    pin = PinnedResource(kind="model", ref=model_ref, sha256=model["sha256"], size=model["size"])
    return [flow.model_copy(update={"shadow": pin})]


def changes(previous: list[DeployedFlow], now: list[DeployedFlow]) -> list[str]:
    """Shadow changes, for a revision's `changes`: `pump shadow +pump-ae@4`, `pump shadow -`."""
    old = {f.name: f.shadow.ref if f.shadow else None for f in previous}
    words = []
    for f in now:
        new = f.shadow.ref if f.shadow else None
        if old.get(f.name) != new:
            words.append(f"{f.name} shadow {'+' + new if new else '-'}")
    return words


# ---------------------------------------------------------------------------- observe


def observe_status(db: sqlite_utils.Database, site: str, status: Status, now: int) -> None:
    """An inference instance's retained status: its state, and its health while online."""
    flow = status.instance.removeprefix(INFERENCE_PREFIX)
    row: dict[str, Any] = {"site": site, "flow": flow, "state": status.state, "updated_ns": now}
    section = status.health.get("inference")
    if isinstance(section, dict):  # offline (the last will) carries no health: keep the last
        row["inference"] = json.dumps(section)
    db.table("inference_status").upsert(row, pk=("site", "flow"))


# ---------------------------------------------------------------------------- report


def _sites(db: sqlite_utils.Database, req: api.ShadowTarget) -> list[str]:
    """The target's nodes whose latest desired state runs the flow."""
    from edgefleet.fleet.deploy import _targets  # deploy imports this module

    if req.group is None and req.nodes is None and req.selector is None:
        sites = [r["site"] for r in db.query("SELECT site FROM nodes ORDER BY site")]
    else:
        sites = _targets(
            db,
            api.DeployRequest.model_validate(
                {
                    "flows": [req.flow],
                    "group": req.group,
                    "nodes": req.nodes,
                    "selector": req.selector,
                }
            ),
        )
    running = [s for s in sites if _deployed(db, s, req.flow) is not None]
    if not running:
        raise FleetError("no_nodes", f"no node of the target runs {req.flow}")
    return running


def _deployed(db: sqlite_utils.Database, site: str, flow: str) -> DeployedFlow | None:
    desired = latest_desired(db, site)
    return next((f for f in desired.flows if f.name == flow), None) if desired else None


def report(fleet: Fleet, req: api.ShadowReportRequest) -> api.ShadowReportResult:
    with fleet.store.read() as db:
        nodes = [_node(db, site, req.flow) for site in _sites(db, req)]
    return api.ShadowReportResult(flow=req.flow, nodes=nodes, overall=overall(nodes))


def _node(db: sqlite_utils.Database, site: str, flow: str) -> api.ShadowNode:
    deployed = _deployed(db, site, flow)
    assert deployed is not None
    row: Row | None = one(
        db, "SELECT * FROM inference_status WHERE site = ? AND flow = ?", [site, flow]
    )
    health: dict[str, Any] = json.loads(row["inference"]) if row and row["inference"] else {}
    live, shadow = health.get("model") or {}, health.get("shadow") or {}
    agreement = shadow.get("agreement") or {}
    running = f"{shadow.get('name')} {shadow.get('version')}" if shadow else None
    desired = deployed.shadow
    # Figures count only from the shadow that was asked for: an old one's are not its.
    current = desired is not None and shadow.get("sha256") == desired.sha256
    return api.ShadowNode(
        site=site,
        flow=deployed.ref,
        desired_shadow=desired.ref if desired else None,
        running_shadow=running,
        shadow_sha256=shadow.get("sha256"),
        live_model=f"{live.get('name')} {live.get('version')}" if live else None,
        state=row["state"] if row else "unknown",
        compared=agreement.get("compared", 0) if current else 0,
        window_samples=agreement.get("window_samples", 0) if current else 0,
        label_agreement=agreement.get("label_agreement") if current else None,
        decisions_differ=agreement.get("decisions_differ", 0) if current else 0,
        score_corr=agreement.get("score_corr") if current else None,
        score_diff=(agreement.get("score_diff") or {}) if current else {},
        live_run_us=(live.get("health") or {}).get("run_us") or {},
        shadow_run_us=((shadow.get("health") or {}).get("run_us") or {}) if current else {},
        live_latency_us=(live.get("health") or {}).get("latency_us") or {},
        skipped_batches=shadow.get("skipped_batches", 0) if current else 0,
        score_sums=agreement.get("score_sums") if current else None,
        updated=iso(row["updated_ns"]) if row else None,
    )


def overall(nodes: list[api.ShadowNode]) -> api.ShadowOverall:
    reporting = [n for n in nodes if n.compared > 0]
    weighted = [
        (n.label_agreement, n.window_samples) for n in reporting if n.label_agreement is not None
    ]
    total = sum(w for _, w in weighted)
    pooled: dict[str, float] = defaultdict(float)
    for n in reporting:
        for k, v in (n.score_sums or {}).items():
            pooled[k] += v

    def worst(pick: Any) -> float | None:
        values = [v for n in reporting if (v := pick(n)) is not None]
        return max(values) if values else None

    return api.ShadowOverall(
        nodes=len(nodes),
        reporting=len(reporting),
        compared=sum(n.compared for n in reporting),
        label_agreement=round(sum(a * w for a, w in weighted) / total, 6) if total else None,
        decisions_differ=sum(n.decisions_differ for n in reporting),
        score_corr=correlation(pooled) if pooled else None,
        score_diff_p99=worst(lambda n: n.score_diff.get("p99")),
        live_run_us_p99=worst(lambda n: n.live_run_us.get("p99")),
        shadow_run_us_p99=worst(lambda n: n.shadow_run_us.get("p99")),
    )


# ---------------------------------------------------------------------------- stop, promote


def _shadowed(fleet: Fleet, req: api.ShadowTarget) -> dict[tuple[int, str], list[str]]:
    """(flow version, shadow model) → the target's nodes whose desired state runs them."""
    with fleet.store.read() as db:
        groups: dict[tuple[int, str], list[str]] = defaultdict(list)
        for site in _sites(db, req):
            deployed = _deployed(db, site, req.flow)
            if deployed is not None and deployed.shadow is not None:
                groups[(deployed.version, deployed.shadow.ref)].append(site)
    if not groups:
        raise FleetError("no_nodes", f"no node of the target runs a shadow on {req.flow}")
    return groups


def stop(fleet: Fleet, req: api.ShadowStopRequest) -> api.ShadowStopResult:
    from edgefleet.fleet.deploy import deploy

    results = [
        deploy(
            fleet,
            api.DeployRequest(
                flows=[f"{req.flow}@{version}"],
                nodes=sites,
                timeout_s=req.timeout_s,
                dry_run=req.dry_run,
                note=f"shadow stop: {model} off {req.flow}@{version}",
                author=req.author,
            ),
        )
        for (version, model), sites in sorted(_shadowed(fleet, req).items())
    ]
    return api.ShadowStopResult(deployments=results)


def promote(fleet: Fleet, req: api.PromoteRequest) -> api.PromoteResult:
    from edgefleet.fleet.deploy import deploy

    groups = _shadowed(fleet, req)
    if len(groups) > 1:
        what = "; ".join(f"{req.flow}@{v} + {m}: {', '.join(s)}" for (v, m), s in groups.items())
        raise FleetError(
            "invalid", f"the target's nodes run different shadows ({what}): name a target each"
        )
    (((version, model), sites),) = groups.items()
    previous = fleet.store.flow(req.flow, version)
    resolved = json.loads(previous["resolved"])
    resolved["model"]["ref"] = model
    resolved["model"].pop("shadow", None)
    note = req.note or f"promoted {model} from shadow of {req.flow}@{version}"
    if req.dry_run:
        flows.check_shadow(fleet, previous, fleet.store.resource(*api.split_ref(model)))
        new_ref = f"{req.flow}@{version}"  # the plan's nodes; no version is made in a dry run
    else:
        pushed = flows.push(
            fleet,
            api.FlowPushRequest(
                text=yaml.safe_dump(resolved, sort_keys=False),
                filename=f"{req.flow}@{version} with {model} live",
                note=note,
                author=req.author,
            ),
        )
        new_ref = pushed.flow.ref
    result = deploy(
        fleet,
        api.DeployRequest(
            flows=[new_ref], nodes=sites, timeout_s=req.timeout_s, strategy=req.strategy,
            dry_run=req.dry_run, note=note, author=req.author,
        ),
    )  # fmt: skip
    return api.PromoteResult(
        flow=new_ref, previous=f"{req.flow}@{version}", model=model, deploy=result
    )
