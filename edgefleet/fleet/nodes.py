"""Nodes (one site stack each, id = site id) and groups (named label selectors).

The fleet learns of a node from its agent: the retained `status/agent` says online, stopped or
(the last will) offline, and its health carries an `agent` section. The agent's last will lives
on the site broker and dies with it, so the site bridge's own notification (`bridge`: `1`
connected, `0` its last will on the cloud broker) says whether the site is there at all: a
node is `online` only when its bridge is not down and its agent says online.

    {"agent": {"labels": {"plant": "p1", "role": "pump"},
               "versions": {"edgefleet": "0.4.0", "onnxruntime": "1.20.1"}, ...}}

Labels set from the fleet (`node label SITE k=v`) win over the agent's for the same key: the
operator set them on purpose, and the agent's come from a site.yaml the operator may not
control. `k-` removes the fleet's label (the agent's value, if any, shows again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from edgefleet.fleet import api
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.selectors import Selector, SelectorError, explain, parse
from edgefleet.fleet.store import Row, one
from shared.errors import PayloadError
from shared.messages import DesiredState, ReportedState, Status, iso, now_ns

IN_PROGRESS = ("pending", "received", "downloading", "verifying", "activating")
# rows a node's report no longer changes: replaced, stopped, or (a stage not reached) untouched
SETTLED = ("superseded", "cancelled", "skipped", "reverted", "aborted", "waiting")


def selector_of(text: str) -> Selector:
    try:
        return parse(text)
    except SelectorError as exc:
        raise FleetError("invalid", str(exc)) from None


# ---------------------------------------------------------------------------- store


def node_row(db: sqlite_utils.Database, site: str) -> Row | None:
    return one(db, "SELECT * FROM nodes WHERE site = ?", [site])


def ensure_node(db: sqlite_utils.Database, site: str) -> Row:
    """The node's row, created (never heard from) when a deployment names it first."""
    row = node_row(db, site)
    if row is None:
        db.execute("INSERT INTO nodes (site) VALUES (?)", [site])
        row = node_row(db, site)
        assert row is not None
    return row


def labels_of(row: Row) -> dict[str, str]:
    return {**json.loads(row["agent_labels"]), **json.loads(row["fleet_labels"])}


def latest_desired(db: sqlite_utils.Database, site: str) -> DesiredState | None:
    row = one(db, "SELECT wire FROM desired WHERE site = ? ORDER BY revision DESC LIMIT 1", [site])
    return DesiredState.model_validate(json.loads(row["wire"])) if row else None


def presence(row: Row, stale_after_s: float, now: int | None = None) -> tuple[str, float | None]:
    """What `online` says when read, and the seconds since the node was last heard from.

    A site that dies as a whole without its bridge's will reaching the cloud broker (a broker
    that lost the will, a site whose bridge never connected to this broker) leaves its agent's
    retained `online` behind. The agent announces its status every `status_interval_s` (10 s
    by default), each one a sighting, so an `online` older than `stale_after_s` is shown
    `stale`. Times are the fleet's own arrival times: a node's clock does not count."""
    last = row["last_seen_ns"]
    age = ((now_ns() if now is None else now) - last) / 1e9 if last else None
    state = row["online"]
    if state == "online" and age is not None and age > stale_after_s:
        return "stale", age
    return state, age


def latest_flows(db: sqlite_utils.Database) -> dict[str, list[str]]:
    """site → the flows of its latest desired state, for every node in one query (a list of
    1,000 nodes asked one query per node)."""
    rows = db.query(
        "SELECT d.site, d.wire FROM desired d JOIN (SELECT site, MAX(revision) AS revision "
        "FROM desired GROUP BY site) m ON d.site = m.site AND d.revision = m.revision"
    )
    return {
        r["site"]: [f.ref for f in DesiredState.model_validate(json.loads(r["wire"])).flows]
        for r in rows
    }


def view(
    db: sqlite_utils.Database, row: Row, stale_after_s: float, flows: list[str] | None = None
) -> api.NodeView:
    """The node's view; `flows` (from `latest_flows`) saves reading its latest desired state."""
    if flows is None:
        desired = latest_desired(db, row["site"])
        flows = [f.ref for f in desired.flows] if desired else []
    online, age = presence(row, stale_after_s)
    return api.NodeView(
        site=row["site"],
        labels=labels_of(row),
        agent_labels=json.loads(row["agent_labels"]),
        fleet_labels=json.loads(row["fleet_labels"]),
        online=online,
        bridge=row["bridge"],
        first_seen=iso(row["first_seen_ns"]) if row["first_seen_ns"] else None,
        last_seen=iso(row["last_seen_ns"]) if row["last_seen_ns"] else None,
        seen_ago_s=round(age, 1) if age is not None else None,
        desired_revision=row["desired_revision"],
        reported_revision=row["reported_revision"],
        reported_state=row["reported_state"],
        flows=flows,
        agent=json.loads(row["agent"] or "{}"),
    )


def all_nodes(db: sqlite_utils.Database) -> list[Row]:
    return list(db.query("SELECT * FROM nodes ORDER BY site"))


def members(db: sqlite_utils.Database, selector: Selector) -> list[Row]:
    return [r for r in all_nodes(db) if selector.matches(labels_of(r))]


@dataclass(frozen=True)
class Bridge:
    """The site bridge's notification on the cloud broker: connected, or gone (its will)."""

    up: bool

    @classmethod
    def from_payload(cls, payload: bytes) -> Bridge:
        if payload not in (b"0", b"1"):
            raise PayloadError(f"a bridge notification is 0 or 1, got {payload[:20]!r}")
        return cls(up=payload == b"1")


# (site, what its agent or its bridge published)
Observation = tuple[str, Status | ReportedState | Bridge]


def effective(agent_state: str | None, bridge: str | None) -> str:
    """What `online` says: the agent's state, unless the site's bridge is down (a clean stop
    of the whole site, agent first, stays `stopped`: the agent said so itself)."""
    if bridge == "down" and agent_state != "stopped":
        return "offline"
    return agent_state or "unknown"


def observe(fleet: Fleet, batch: list[Observation]) -> None:
    """What agents (and inference instances) published, in arrival order, in one transaction
    (one fsync for a burst of a thousand nodes' reports, not a thousand)."""
    with fleet.store.write() as db:
        record(db, batch, now_ns())


def record(db: sqlite_utils.Database, batch: list[Observation], now: int) -> None:
    """The batch, in the caller's transaction (rollout.observe adds the rollouts' moves)."""
    from edgefleet.fleet import shadow  # it reads this module's desired states

    for site, message in batch:
        if isinstance(message, Status) and message.instance != "agent":
            shadow.observe_status(db, site, message, now)
        elif isinstance(message, Status):
            _status(db, site, message, now)
        elif isinstance(message, Bridge):
            _bridge(db, site, message, now)
        else:
            _reported(db, site, message, now)


def _status(db: sqlite_utils.Database, site: str, status: Status, now: int) -> None:
    """The agent's retained status: online state, and labels and versions while online."""
    row = ensure_node(db, site)
    updates: dict[str, Any] = {
        "agent_state": status.state,
        "online": effective(status.state, row["bridge"]),
        "last_seen_ns": now,
    }
    if row["first_seen_ns"] is None:
        updates["first_seen_ns"] = now
    section = status.health.get("agent")
    if isinstance(section, dict):  # offline (the last will) carries no health: keep them
        labels = section.get("labels")
        if isinstance(labels, dict):
            updates["agent_labels"] = json.dumps({str(k): str(v) for k, v in labels.items()})
        updates["agent"] = json.dumps({k: v for k, v in section.items() if k != "labels"})
    db.table("nodes").update(site, updates)


def _bridge(db: sqlite_utils.Database, site: str, bridge: Bridge, now: int) -> None:
    """The site bridge connected (the agent's last status counts again) or went away."""
    row = ensure_node(db, site)
    state = "up" if bridge.up else "down"
    updates: dict[str, Any] = {"bridge": state, "online": effective(row["agent_state"], state)}
    if bridge.up:  # a will is the cloud broker speaking, not the site: not a sighting
        updates["last_seen_ns"] = now
        if row["first_seen_ns"] is None:
            updates["first_seen_ns"] = now
    db.table("nodes").update(site, updates)


def _reported(db: sqlite_utils.Database, site: str, reported: ReportedState, now: int) -> None:
    """The agent's retained reported state: the node's row, and its row in the deployment that
    issued that revision (a superseded, cancelled or otherwise settled row stays as it is)."""
    row = ensure_node(db, site)
    updates: dict[str, Any] = {
        "reported_revision": reported.revision,
        "reported_state": reported.state,
        "reported": json.dumps(reported.model_dump(mode="json")),
        "last_seen_ns": now,
    }
    if row["first_seen_ns"] is None:
        updates["first_seen_ns"] = now
    db.table("nodes").update(site, updates)
    marks = ",".join("?" * len(SETTLED))
    db.execute(
        "INSERT OR IGNORE INTO node_events (site, revision, deployment_id, state, error, t_ns, "
        "received_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [site, reported.revision, reported.deployment, reported.state, reported.error,
         reported.t, now],
    )  # fmt: skip
    db.execute(
        "UPDATE deployment_nodes SET state = ?, error = ?, timings = ?, updated_ns = ? "
        f"WHERE site = ? AND revision = ? AND state NOT IN ({marks})",
        [
            reported.state,
            reported.error,
            json.dumps(reported.timings_ms),
            now,
            site,
            reported.revision,
            *SETTLED,
        ],
    )


# ---------------------------------------------------------------------------- commands


def node_list(fleet: Fleet, req: api.NodeListRequest) -> api.NodeListResult:
    selector = selector_of(req.selector) if req.selector is not None else None
    with fleet.store.read() as db:
        rows = members(db, selector) if selector else all_nodes(db)
        flows = latest_flows(db)
        stale_after_s = fleet.config.node_stale_after_s
        return api.NodeListResult(
            nodes=[view(db, r, stale_after_s, flows.get(r["site"], [])) for r in rows]
        )


def _node(db: sqlite_utils.Database, site: str) -> Row:
    row = node_row(db, site)
    if row is None:
        raise FleetError(
            "not_found", f"no node {site!r}: the fleet has not heard from it (edgefleet node list)"
        )
    return row


def node_show(fleet: Fleet, req: api.NodeRequest) -> api.NodeShowResult:
    with fleet.store.read() as db:
        row = _node(db, req.site)
        labels = labels_of(row)
        groups = [
            g["name"]
            for g in db.query("SELECT * FROM groups ORDER BY name")
            if parse(g["selector"]).matches(labels)
        ]
        reported = json.loads(row["reported"]) if row["reported"] else None
        return api.NodeShowResult(
            node=view(db, row, fleet.config.node_stale_after_s), groups=groups, reported=reported
        )


def node_label(fleet: Fleet, req: api.NodeLabelRequest) -> api.NodeLabelResult:
    with fleet.store.write() as db:
        row = _node(db, req.site)
        labels = json.loads(row["fleet_labels"])
        for change in req.changes:
            if change.endswith("-") and "=" not in change:
                labels.pop(change[:-1], None)
            else:
                key, _, value = change.partition("=")
                labels[key] = value
        db.table("nodes").update(req.site, {"fleet_labels": json.dumps(labels)})
        return api.NodeLabelResult(
            node=view(db, _node(db, req.site), fleet.config.node_stale_after_s)
        )


def node_history(fleet: Fleet, req: api.NodeRequest) -> api.NodeHistoryResult:
    with fleet.store.read() as db:
        node = _node(db, req.site)
        entries = []
        for r in db.query("SELECT * FROM desired WHERE site = ? ORDER BY revision", [req.site]):
            state = one(
                db,
                "SELECT state FROM deployment_nodes WHERE site = ? AND revision = ?",
                [req.site, r["revision"]],
            )
            desired = DesiredState.model_validate(json.loads(r["wire"]))
            entries.append(
                api.DesiredEntry(
                    revision=r["revision"],
                    deployment=r["deployment_id"],
                    issued=iso(r["issued_ns"]),
                    flows=[f.ref for f in desired.flows],
                    changes=r["changes"] or "",
                    state=state["state"] if state else _reported_for(node, r["revision"]),
                    events=events(db, req.site, r["revision"]),
                )
            )
        return api.NodeHistoryResult(site=req.site, revisions=entries)


def events(db: sqlite_utils.Database, site: str, revision: int) -> list[api.NodeEvent]:
    """What the node reported for one revision, step by step, in its own time order."""
    return [
        api.NodeEvent(state=r["state"], at=iso(r["t_ns"]), error=r["error"])
        for r in db.query(
            "SELECT state, error, t_ns FROM node_events WHERE site = ? AND revision = ? "
            "ORDER BY t_ns, rowid",
            [site, revision],
        )
    ]


def _reported_for(node: Row, revision: int) -> str | None:
    """A revision no deployment issued (a cancel's): what the node last said of it."""
    return node["reported_state"] if node["reported_revision"] == revision else None


def _group(db: sqlite_utils.Database, name: str) -> Row:
    row = one(db, "SELECT * FROM groups WHERE name = ?", [name])
    if row is None:
        raise FleetError("not_found", f"no group {name!r} (edgefleet group list shows them)")
    return row


def group_view(db: sqlite_utils.Database, row: Row) -> api.GroupView:
    return api.GroupView(
        name=row["name"],
        selector=row["selector"],
        author=row["author"] or "",
        created=iso(row["created_ns"]),
        members=[r["site"] for r in members(db, parse(row["selector"]))],
    )


def group_create(fleet: Fleet, req: api.GroupCreateRequest) -> api.GroupResult:
    selector = selector_of(req.selector)
    with fleet.store.write() as db:
        if one(db, "SELECT name FROM groups WHERE name = ?", [req.name]):
            raise FleetError("conflict", f"group {req.name!r} exists already")
        db.table("groups").insert(
            {
                "name": req.name,
                "selector": str(selector),
                "author": req.author,
                "created_ns": now_ns(),
            }
        )
        return api.GroupResult(group=group_view(db, _group(db, req.name)))


def group_list(fleet: Fleet, req: api.GroupListRequest) -> api.GroupListResult:
    with fleet.store.read() as db:
        rows = db.query("SELECT * FROM groups ORDER BY name")
        return api.GroupListResult(groups=[group_view(db, r) for r in rows])


def group_show(fleet: Fleet, req: api.GroupShowRequest) -> api.GroupShowResult:
    with fleet.store.read() as db:
        row = _group(db, req.name)
        selector = parse(row["selector"])
        membership = None
        if req.node is not None:
            labels = labels_of(_node(db, req.node))
            membership = api.Membership(
                site=req.node,
                member=selector.matches(labels),
                labels=labels,
                why=[api.Why(**vars(e)) for e in explain(selector, labels)],
            )
        return api.GroupShowResult(
            group=group_view(db, row),
            nodes=[view(db, r, fleet.config.node_stale_after_s) for r in members(db, selector)],
            explain=membership,
        )


def group_delete(fleet: Fleet, req: api.GroupDeleteRequest) -> api.GroupDeleteResult:
    with fleet.store.write() as db:
        _group(db, req.name)
        db.execute("DELETE FROM groups WHERE name = ?", [req.name])
    return api.GroupDeleteResult(name=req.name)
