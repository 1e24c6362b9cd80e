"""Deployments: flow versions → a target (group, selector or nodes) → one signed desired state
per node, published retained on `ef/{site}/desired`.

A node's new desired state holds every flow it should run: the flows of its previous desired
state with the deployed ones added or replaced, each pinned with its resources' digests. Its
revision is the previous one plus one. The deploy lock is held from the database commit to
the last publish, so two deployments at once never leave an older revision retained.

Per node a deployment row follows what the node reports for that revision; it fails when no
`applied` (or other end) arrives within the deployment's timeout, counted from issue (a node
offline at the time counts too: a late report still updates the row). A newer deployment to a
node supersedes the older one's row there; `cancel` gives each node still in progress a new
revision with the flows it had before the deployment, so it goes back to what ran.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import sqlite_utils
import yaml

from edgefleet.fleet import api, shadow
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.nodes import (
    IN_PROGRESS,
    ensure_node,
    events,
    latest_desired,
    members,
    node_row,
    selector_of,
)
from edgefleet.fleet.store import Row, one
from shared.errors import EdgefleetError
from shared.messages import DeployedFlow, DesiredState, PinnedResource, iso, now_ns
from shared.topics import Topics

log = logging.getLogger(__name__)

ENDED = ("applied", "failed", "rolled_back", "superseded", "cancelled")


# ---------------------------------------------------------------------------- building


def deployed_flow(fleet: Fleet, ref: str) -> DeployedFlow:
    """One flow version as a node receives it: the flow with references pinned, and digests."""
    name, version = api.split_ref(ref)
    row = fleet.store.flow(name, version)
    resources = [
        PinnedResource(
            kind=r["kind"], ref=f"{r['name']}@{r['version']}", sha256=r["sha256"], size=r["size"]
        )
        for r in fleet.store.flow_refs(row["id"]).values()
    ]
    text = yaml.safe_dump(json.loads(row["resolved"]), sort_keys=False)
    return DeployedFlow(name=row["name"], version=row["version"], flow=text, resources=resources)


def merged(previous: list[DeployedFlow], new: list[DeployedFlow]) -> list[DeployedFlow]:
    by_name = {f.name: f for f in previous}
    by_name.update({f.name: f for f in new})
    return sorted(by_name.values(), key=lambda f: f.name)


def changes(previous: list[DeployedFlow], now: list[DeployedFlow]) -> str:
    """What changed, in a few words: `pump-anomaly 4→5, +vib-drift@1, -old-flow`."""
    old = {f.name: f.version for f in previous}
    new = {f.name: f.version for f in now}
    words = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            words.append(f"+{name}@{new[name]}")
        elif name not in new:
            words.append(f"-{name}")
        elif old[name] != new[name]:
            words.append(f"{name} {old[name]}→{new[name]}")
    words += shadow.changes(previous, now)
    return ", ".join(words) or "unchanged"


def _targets(db: sqlite_utils.Database, req: api.DeployRequest) -> list[str]:
    given = [x for x in (req.group, req.nodes, req.selector) if x is not None]
    if len(given) != 1:
        raise FleetError("invalid", "name exactly one target: group, nodes or selector")
    if req.nodes is not None:
        if not req.nodes:
            raise FleetError("invalid", "nodes: name at least one site")
        for site in req.nodes:
            try:
                Topics(site)
            except EdgefleetError as exc:
                raise FleetError("invalid", f"nodes: {exc}") from None
        return sorted(set(req.nodes))
    if req.group is not None:
        group = one(db, "SELECT * FROM groups WHERE name = ?", [req.group])
        if group is None:
            raise FleetError("not_found", f"no group {req.group!r} (edgefleet group list)")
        sites = [r["site"] for r in members(db, selector_of(group["selector"]))]
        what = f"group {req.group} ({group['selector']})"
    else:
        assert req.selector is not None
        sites = [r["site"] for r in members(db, selector_of(req.selector))]
        what = f"selector {req.selector!r}"
    if not sites:
        raise FleetError("no_nodes", f"{what} matches no node (edgefleet node list)")
    return sites


def _in_progress(db: sqlite_utils.Database, site: str) -> Row | None:
    marks = ",".join("?" * len(IN_PROGRESS))
    return one(
        db,
        f"SELECT * FROM deployment_nodes WHERE site = ? AND state IN ({marks}) "
        "ORDER BY revision DESC LIMIT 1",
        [site, *IN_PROGRESS],
    )


def _issue(
    fleet: Fleet,
    db: sqlite_utils.Database,
    site: str,
    flows: list[DeployedFlow],
    deployment: str | None,
    what_changed: str,
) -> tuple[int, dict[str, Any]]:
    """Write the node's next desired state, signed; (revision, wire) to publish after commit."""
    assert fleet.signing_key is not None
    row = ensure_node(db, site)
    revision = row["desired_revision"] + 1
    state = DesiredState(site=site, revision=revision, deployment=deployment, flows=flows)
    wire = fleet.signing_key.sign(state.to_wire())
    db.table("desired").insert(
        {
            "site": site,
            "revision": revision,
            "deployment_id": deployment,
            "wire": json.dumps(wire),
            "changes": what_changed,
            "issued_ns": state.issued,
        }
    )
    db.table("nodes").update(site, {"desired_revision": revision})
    return revision, wire


def _publish(fleet: Fleet, wires: list[dict[str, Any]]) -> None:
    if fleet.publish is None:
        raise FleetError("internal", "this fleet cannot publish (no broker connection)")
    for wire in wires:
        fleet.publish(Topics(wire["site"], fleet.config.prefix).desired(), wire)


# ---------------------------------------------------------------------------- commands


def deploy(fleet: Fleet, req: api.DeployRequest) -> api.DeployResult:
    new = shadow.attach(fleet, [deployed_flow(fleet, ref) for ref in req.flows], req.shadow)
    if len({f.name for f in new}) != len(new):
        raise FleetError("invalid", "flows: name each flow once")
    if fleet.signing_key is None and not req.dry_run:
        raise FleetError(
            "no_signing_key",
            "the fleet has no signing key: set signing_key in fleet.yaml "
            "(edgefleet keys create makes one)",
        )
    target: dict[str, Any] = {
        k: v for k, v in (("group", req.group), ("nodes", req.nodes), ("selector", req.selector))
        if v is not None
    }  # fmt: skip
    deployment_id = uuid.uuid4().hex[:12]
    now = now_ns()
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            plan, wires = [], []
            sites = _targets(db, req)
            own = fleet.config.site
            if own in sites:
                raise FleetError(
                    "own_site",
                    f"{own!r} is the fleet's own site id (site in fleet.yaml): it names the "
                    "fleet service, never a node; give the node another site id",
                )
            for site in sites:
                previous = latest_desired(db, site)
                flows = merged(previous.flows if previous else [], new)
                what = changes(previous.flows if previous else [], flows)
                older = _in_progress(db, site)
                node = node_row(db, site)
                revision = (node["desired_revision"] if node else 0) + 1
                plan.append(
                    api.NodePlan(
                        site=site,
                        revision=revision,
                        flows=[f.ref for f in flows],
                        changes=what,
                        superseded=older["deployment_id"] if older else None,
                    )
                )
                if req.dry_run:
                    continue
                if older is not None:
                    db.execute(
                        "UPDATE deployment_nodes SET state = 'superseded', updated_ns = ?, "
                        "error = ? WHERE deployment_id = ? AND site = ?",
                        [now, f"superseded by {deployment_id}", older["deployment_id"], site],
                    )
                if site == plan[0].site:
                    db.table("deployments").insert(
                        {
                            "id": deployment_id,
                            "flows": json.dumps([f.ref for f in new]),
                            "target": json.dumps(target),
                            "author": req.author,
                            "note": req.note,
                            "created_ns": now,
                            "timeout_s": req.timeout_s,
                        }
                    )
                revision, wire = _issue(fleet, db, site, flows, deployment_id, what)
                wires.append(wire)
                db.table("deployment_nodes").insert(
                    {
                        "deployment_id": deployment_id,
                        "site": site,
                        "revision": revision,
                        "state": "pending",
                        "timings": "{}",
                        "updated_ns": now,
                        "deadline_ns": now + int(req.timeout_s * 1e9),
                    }
                )
            if req.dry_run:
                return api.DeployResult(deployment=None, plan=plan, dry_run=True)
            view = deployment_view(db, _deployment(db, deployment_id))
        _publish(fleet, wires)
    log.info("deployment %s: %s to %d node(s)", deployment_id, req.flows, len(wires))
    return api.DeployResult(deployment=view, plan=plan, dry_run=False)


def rollback(fleet: Fleet, req: api.RollbackRequest) -> api.DeployResult:
    """Deploy FLOW@N to every node whose latest desired state runs FLOW."""
    ref = f"{req.flow}@{req.to}"
    fleet.store.flow(req.flow, req.to)  # not_found before anything else
    with fleet.store.read() as db:
        sites = [
            r["site"]
            for r in db.query("SELECT site FROM nodes ORDER BY site")
            if any(f.name == req.flow for f in _flows_of(db, r["site"]))
        ]
    if not sites:
        raise FleetError("no_nodes", f"no node runs {req.flow}: nothing to roll back")
    return deploy(
        fleet,
        api.DeployRequest(
            flows=[ref],
            nodes=sites,
            timeout_s=req.timeout_s,
            dry_run=req.dry_run,
            note=f"rollback of {req.flow} to {req.to}",
            author=req.author,
        ),
    )


def _flows_of(db: sqlite_utils.Database, site: str) -> list[DeployedFlow]:
    desired = latest_desired(db, site)
    return desired.flows if desired else []


def _deployment(db: sqlite_utils.Database, deployment_id: str) -> Row:
    row = one(db, "SELECT * FROM deployments WHERE id = ?", [deployment_id])
    if row is None:
        raise FleetError(
            "not_found", f"no deployment {deployment_id!r} (edgefleet deployment list)"
        )
    return row


def _rows(db: sqlite_utils.Database, deployment_id: str) -> list[Row]:
    return list(
        db.query(
            "SELECT * FROM deployment_nodes WHERE deployment_id = ? ORDER BY site", [deployment_id]
        )
    )


def deployment_state(cancelled: bool, counts: dict[str, int]) -> str:
    """A deployment's state from its nodes' states (and counts of each)."""
    if cancelled:
        return "cancelled"
    if any(s in IN_PROGRESS for s in counts):
        return "in_progress"
    if counts.get("failed") or counts.get("rolled_back"):
        return "failed"
    if counts and set(counts) == {"superseded"}:
        return "superseded"
    return "succeeded"


def deployment_view(db: sqlite_utils.Database, row: Row) -> api.DeploymentView:
    counts: dict[str, int] = {}
    for r in _rows(db, row["id"]):
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return api.DeploymentView(
        id=row["id"],
        flows=json.loads(row["flows"]),
        target=json.loads(row["target"]),
        author=row["author"] or "",
        note=row["note"] or "",
        created=iso(row["created_ns"]),
        timeout_s=row["timeout_s"],
        state=deployment_state(bool(row["cancelled_ns"]), counts),
        counts=counts,
        cancelled=iso(row["cancelled_ns"]) if row["cancelled_ns"] else None,
    )


def deployment_list(fleet: Fleet, req: api.DeploymentListRequest) -> api.DeploymentListResult:
    with fleet.store.read() as db:
        rows = db.query("SELECT * FROM deployments ORDER BY created_ns DESC LIMIT ?", [req.limit])
        return api.DeploymentListResult(deployments=[deployment_view(db, r) for r in rows])


def deployment_show(fleet: Fleet, req: api.DeploymentRequest) -> api.DeploymentShowResult:
    with fleet.store.read() as db:
        row = _deployment(db, req.id)
        nodes = [
            api.DeploymentNode(
                site=r["site"],
                revision=r["revision"],
                state=r["state"],
                error=r["error"],
                timings_ms=json.loads(r["timings"] or "{}"),
                updated=iso(r["updated_ns"]),
                events=events(db, r["site"], r["revision"]),
            )
            for r in _rows(db, req.id)
        ]
        return api.DeploymentShowResult(deployment=deployment_view(db, row), nodes=nodes)


def deployment_cancel(fleet: Fleet, req: api.DeploymentRequest) -> api.DeploymentShowResult:
    now = now_ns()
    wires = []
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            row = _deployment(db, req.id)
            if row["cancelled_ns"] is None:
                db.table("deployments").update(req.id, {"cancelled_ns": now})
            for r in _rows(db, req.id):
                if r["state"] not in IN_PROGRESS:
                    continue
                node = node_row(db, r["site"])
                if node is not None and node["desired_revision"] == r["revision"]:
                    before = one(
                        db,
                        "SELECT * FROM desired WHERE site = ? AND revision < ? "
                        "ORDER BY revision DESC LIMIT 1",
                        [r["site"], r["revision"]],
                    )
                    flows = (
                        DesiredState.model_validate(json.loads(before["wire"])).flows
                        if before
                        else []
                    )
                    current = _flows_of(db, r["site"])
                    back = f"revision {before['revision']}" if before else "no flows"
                    what = f"cancel of {req.id}, back to {back}: {changes(current, flows)}"
                    wires.append(_issue(fleet, db, r["site"], flows, None, what)[1])
                db.execute(
                    "UPDATE deployment_nodes SET state = 'cancelled', updated_ns = ?, error = ? "
                    "WHERE deployment_id = ? AND site = ?",
                    [now, f"cancelled (was {r['state']})", req.id, r["site"]],
                )
        _publish(fleet, wires)
    return deployment_show(fleet, req)


def expire(fleet: Fleet, now: int | None = None) -> int:
    """Fail every node row in progress past its deadline; how many."""
    now = now_ns() if now is None else now
    marks = ",".join("?" * len(IN_PROGRESS))
    with fleet.store.write() as db:
        rows = list(
            db.query(
                f"SELECT d.*, x.timeout_s FROM deployment_nodes d JOIN deployments x "
                f"ON x.id = d.deployment_id WHERE d.state IN ({marks}) AND d.deadline_ns < ?",
                [*IN_PROGRESS, now],
            )
        )
        for r in rows:
            error = f"timeout: not applied within {r['timeout_s']:g} s (last state: {r['state']})"
            db.execute(
                "UPDATE deployment_nodes SET state = 'failed', error = ?, updated_ns = ? "
                "WHERE deployment_id = ? AND site = ?",
                [error, now, r["deployment_id"], r["site"]],
            )
    return len(rows)


def republish(fleet: Fleet) -> int:
    """Publish every node's latest desired state again (at start: one committed just before a
    crash may never have reached the broker); retained and idempotent for the agent."""
    with fleet.deploy_lock:
        with fleet.store.read() as db:
            wires = [
                json.loads(r["wire"])
                for r in db.query(
                    "SELECT wire FROM desired d WHERE revision = "
                    "(SELECT max(revision) FROM desired WHERE site = d.site)"
                )
            ]
        _publish(fleet, wires)
    return len(wires)
