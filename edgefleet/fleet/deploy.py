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

from edgefleet.fleet import api, shadow, stages
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
from shared.messages import DeployedFlow, DeploymentEvent, DesiredState, PinnedResource, iso, now_ns
from shared.topics import Topics

log = logging.getLogger(__name__)

ENDED = ("applied", "failed", "rolled_back", "rollback_failed", "superseded", "cancelled")
# a node of a later stage waits (no desired state issued yet); an aborted rollout skips it,
# reverts the nodes that applied, aborts those in progress
WAITING = "waiting"
FINAL = ("superseded", "cancelled", "skipped", "reverted", "aborted")


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


def in_progress(db: sqlite_utils.Database, site: str) -> list[Row]:
    """The node's rows a new desired state supersedes: in progress, or waiting for a stage."""
    states = (*IN_PROGRESS, WAITING)
    marks = ",".join("?" * len(states))
    return list(
        db.query(
            f"SELECT * FROM deployment_nodes WHERE site = ? AND state IN ({marks}) "
            "ORDER BY revision DESC",
            [site, *states],
        )
    )


def supersede(db: sqlite_utils.Database, site: str, by: str, now: int) -> str | None:
    """Mark what `by` replaces on the node; the deployment it replaced in progress, if any."""
    older = [r for r in in_progress(db, site) if r["deployment_id"] != by]
    for r in older:
        db.execute(
            "UPDATE deployment_nodes SET state = 'superseded', updated_ns = ?, "
            "error = ? WHERE deployment_id = ? AND site = ?",
            [now, f"superseded by {by}", r["deployment_id"], site],
        )
    return older[0]["deployment_id"] if older else None


def issue(
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
    state = DesiredState(
        site=site, revision=revision, deployment=deployment, flows=flows, trusted_keys=fleet.trust
    )
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


def publish(fleet: Fleet, wires: list[dict[str, Any]]) -> None:
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
            sites = _targets(db, req)
            own = fleet.config.site
            if own in sites:
                raise FleetError(
                    "own_site",
                    f"{own!r} is the fleet's own site id (site in fleet.yaml): it names the "
                    "fleet service, never a node; give the node another site id",
                )
            staged = stages.plan(sites, req.strategy) if req.strategy else [sites]
            plan, wires = [], []
            for index, stage in enumerate(staged):
                for site in stage:
                    previous = latest_desired(db, site)
                    flows = merged(previous.flows if previous else [], new)
                    what = changes(previous.flows if previous else [], flows)
                    older = in_progress(db, site)
                    node = node_row(db, site)
                    plan.append(
                        api.NodePlan(
                            site=site,
                            revision=(node["desired_revision"] if node else 0) + 1,
                            flows=[f.ref for f in flows],
                            changes=what,
                            superseded=older[0]["deployment_id"] if older else None,
                            stage=index,
                        )
                    )
            if req.dry_run:
                return api.DeployResult(deployment=None, plan=plan, dry_run=True)
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
            if req.strategy is not None:
                stages.record(db, deployment_id, req.strategy, staged)
            for index, stage in enumerate(staged):
                for site in stage:
                    if index == 0:
                        wires.append(issue_to(fleet, db, deployment_id, site, new, now))
                    else:  # untouched until its stage goes: no desired state, no supersede
                        wait_row(db, deployment_id, site, now)
            # a rollout whose stage these supersedes ended moves on in this same commit
            from edgefleet.fleet import rollout  # it builds on this module

            moved: list[DeploymentEvent] = []
            wires += rollout.settle(fleet, db, now, moved)
            view = deployment_view(db, _deployment(db, deployment_id))
        publish(fleet, wires)
    if fleet.announce is not None:
        for e in moved:
            fleet.announce(e)
    if req.strategy is not None and fleet.announce is not None:
        fleet.announce(
            DeploymentEvent(
                deployment=deployment_id,
                event="stage_started",
                stage=1,
                stages=len(staged),
                state=view.state,
                counts={"pending": len(staged[0])},
            )
        )
    log.info(
        "deployment %s: %s to %d node(s) in %d stage(s)",
        deployment_id, req.flows, len(plan), len(staged),
    )  # fmt: skip
    return api.DeployResult(deployment=view, plan=plan, dry_run=False)


def issue_to(
    fleet: Fleet,
    db: sqlite_utils.Database,
    deployment_id: str,
    site: str,
    new: list[DeployedFlow],
    now: int,
) -> dict[str, Any]:
    """One node's desired state with the deployment's flows, and its row, now pending."""
    deployment = _deployment(db, deployment_id)
    supersede(db, site, deployment_id, now)
    previous = latest_desired(db, site)
    flows = merged(previous.flows if previous else [], new)
    what = changes(previous.flows if previous else [], flows)
    revision, wire = issue(fleet, db, site, flows, deployment_id, what)
    db.table("deployment_nodes").upsert(
        {
            "deployment_id": deployment_id,
            "site": site,
            "revision": revision,
            "state": "pending",
            "error": None,
            "timings": "{}",
            "updated_ns": now,
            # from the desired state's own time (what the node and its watchers see), not the
            # start of this transaction: on a loaded fleet the two are tens of ms apart
            "deadline_ns": int(wire["issued"]) + int(deployment["timeout_s"] * 1e9),
        },
        pk=("deployment_id", "site"),
    )
    return wire


def wait_row(db: sqlite_utils.Database, deployment_id: str, site: str, now: int) -> None:
    ensure_node(db, site)  # `--nodes` may name a site never heard from
    db.table("deployment_nodes").insert(
        {
            "deployment_id": deployment_id,
            "site": site,
            "revision": 0,
            "state": WAITING,
            "timings": "{}",
            "updated_ns": now,
            "deadline_ns": 0,
        }
    )


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


deployment_of = _deployment  # the row, or not_found (rollout.py)


def _rows(db: sqlite_utils.Database, deployment_id: str) -> list[Row]:
    return list(
        db.query(
            "SELECT * FROM deployment_nodes WHERE deployment_id = ? ORDER BY site", [deployment_id]
        )
    )


def deployment_state(
    cancelled: bool, counts: dict[str, int], aborted: bool = False, paused: bool = False
) -> str:
    """A deployment's state from its nodes' states (and counts of each), and a staged one's
    abort or pause."""
    if cancelled:
        return "cancelled"
    if aborted:
        return "aborted"
    if any(s in IN_PROGRESS or s == WAITING for s in counts):
        return "paused" if paused else "in_progress"
    if counts.get("failed") or counts.get("rolled_back") or counts.get("rollback_failed"):
        return "failed"
    if counts and set(counts) == {"superseded"}:
        return "superseded"
    return "succeeded"


def deployment_view(db: sqlite_utils.Database, row: Row) -> api.DeploymentView:
    node_rows = _rows(db, row["id"])
    counts: dict[str, int] = {}
    for r in node_rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    staged = stages.rollout_row(db, row["id"])
    state = deployment_state(
        bool(row["cancelled_ns"]),
        counts,
        aborted=bool(staged and staged["aborted_ns"]),
        paused=bool(staged and staged["paused_ns"]),
    )
    view = api.DeploymentView(
        id=row["id"],
        flows=json.loads(row["flows"]),
        target=json.loads(row["target"]),
        author=row["author"] or "",
        note=row["note"] or "",
        created=iso(row["created_ns"]),
        timeout_s=row["timeout_s"],
        state=state,
        counts=counts,
        cancelled=iso(row["cancelled_ns"]) if row["cancelled_ns"] else None,
        cancelled_by=row["cancelled_by"] if row["cancelled_ns"] else None,
    )
    if staged is not None:
        view.strategy = api.Strategy.model_validate_json(staged["strategy"])
        view.stage = staged["stage"]
        view.stages = stages.stage_views(staged, node_rows)
        view.paused = iso(staged["paused_ns"]) if staged["paused_ns"] else None
        view.aborted = iso(staged["aborted_ns"]) if staged["aborted_ns"] else None
        view.reason = staged["reason"]
    return view


def deployment_list(fleet: Fleet, req: api.DeploymentListRequest) -> api.DeploymentListResult:
    with fleet.store.read() as db:
        rows = db.query("SELECT * FROM deployments ORDER BY created_ns DESC LIMIT ?", [req.limit])
        return api.DeploymentListResult(deployments=[deployment_view(db, r) for r in rows])


def deployment_show(fleet: Fleet, req: api.DeploymentRequest) -> api.DeploymentShowResult:
    with fleet.store.read() as db:
        row = _deployment(db, req.id)
        staged = stages.rollout_row(db, req.id)
        stage_of = (
            {s: i for i, st in enumerate(json.loads(staged["stages"])) for s in st}
            if staged
            else {}
        )
        nodes = [
            api.DeploymentNode(
                site=r["site"],
                revision=r["revision"],
                state=r["state"],
                error=r["error"],
                timings_ms=json.loads(r["timings"] or "{}"),
                updated=iso(r["updated_ns"]),
                events=events(db, r["site"], r["revision"]),
                stage=stage_of.get(r["site"], 0),
            )
            for r in _rows(db, req.id)
        ]
        return api.DeploymentShowResult(deployment=deployment_view(db, row), nodes=nodes)


def revert(
    fleet: Fleet, db: sqlite_utils.Database, site: str, revision: int, why: str
) -> dict[str, Any] | None:
    """When the node's latest desired state is `revision`: a new revision with the flows of
    the one before it (what ran before), to publish after commit; else None (a newer one
    reached the node already: it is not taken back)."""
    node = node_row(db, site)
    if revision <= 0 or node is None or node["desired_revision"] != revision:
        return None
    before = one(
        db,
        "SELECT * FROM desired WHERE site = ? AND revision < ? ORDER BY revision DESC LIMIT 1",
        [site, revision],
    )
    flows = DesiredState.model_validate(json.loads(before["wire"])).flows if before else []
    back = f"revision {before['revision']}" if before else "no flows"
    what = f"{why}, back to {back}: {changes(_flows_of(db, site), flows)}"
    return issue(fleet, db, site, flows, None, what)[1]


def deployment_cancel(fleet: Fleet, req: api.DeploymentCancelRequest) -> api.DeploymentShowResult:
    now = now_ns()
    wires = []
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            row = _deployment(db, req.id)
            if row["cancelled_ns"] is None:
                db.table("deployments").update(
                    req.id, {"cancelled_ns": now, "cancelled_by": req.author}
                )
            for r in _rows(db, req.id):
                if r["state"] not in IN_PROGRESS and r["state"] != WAITING:
                    continue
                wire = revert(fleet, db, r["site"], r["revision"], f"cancel of {req.id}")
                if wire is not None:
                    wires.append(wire)
                db.execute(
                    "UPDATE deployment_nodes SET state = 'cancelled', updated_ns = ?, error = ? "
                    "WHERE deployment_id = ? AND site = ?",
                    [now, f"cancelled (was {r['state']})", req.id, r["site"]],
                )
        publish(fleet, wires)
    return deployment_show(fleet, req)


def expire_rows(db: sqlite_utils.Database, now: int) -> int:
    """Fail every node row in progress past its deadline, in the caller's transaction
    (rollout.expire moves the rollouts on in the same one); how many."""
    marks = ",".join("?" * len(IN_PROGRESS))
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
        publish(fleet, wires)
    return len(wires)
