"""Staged rollouts: move each one on as its nodes report (plan and thresholds: stages.py).

A deployment with a strategy issues desired states to its first stage only; the nodes of the
later stages have a `waiting` row and nothing else (no desired state, no revision). After
every batch of reports and every timeout check, `progress` looks at each rollout still going:

- more failures in the current stage than the abort threshold allows (reported `failed` or
  `rolled_back`, or no end state within the health timeout): **abort**. Every node the
  deployment reached goes back to the revision before it (a new revision with those flows; a
  node that rolled back by itself gets it too, so what is retained is what runs); rows in
  progress become `aborted`, applied ones `reverted`, the waiting ones `skipped`: their nodes
  never get a desired state from this deployment. The reason names the failed nodes.
- every node of the stage in an end state, within the threshold: the stage **held**; after
  the soak time, unless paused, the next stage's nodes get their desired states.
- paused: the stage in progress goes on (its nodes are already on their way), failures still
  abort, the next stage waits for `resume`.

An offline node of a stage is `pending` until its health timeout, then fails (`timeout`),
counted against the threshold like any failure: a stage never waits longer than the timeout.
Its desired state stays retained; if it comes back later its report still updates its row.

A move is made in the same SQLite transaction as the change of node rows that caused it (a
batch of reports, the timeouts, a newer deployment's supersedes): a reader sees the nodes'
states and the stage's state of one moment, never a stage whose nodes all ended and which is
not held yet. Each move is announced on `ef/fleet/deployments` (`DeploymentEvent`, JSON, not
retained) after that commit: stage_started, stage_held, paused, resumed, aborted, finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import sqlite_utils

from edgefleet.fleet import api, deploy, nodes, stages
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.nodes import IN_PROGRESS, Observation
from edgefleet.fleet.store import Row
from shared.messages import DeploymentEvent, ReportedState, now_ns

log = logging.getLogger(__name__)


def _going(db: sqlite_utils.Database) -> list[Row]:
    """Rollouts neither aborted, cancelled nor finished (the last stage held)."""
    return list(
        db.query(
            "SELECT r.*, d.flows, d.timeout_s FROM rollouts r JOIN deployments d "
            "ON d.id = r.deployment_id WHERE r.aborted_ns IS NULL AND d.cancelled_ns IS NULL "
            "AND NOT (r.stage = json_array_length(r.stages) - 1 AND r.stage_done_ns IS NOT NULL)"
        )
    )


Events = list[DeploymentEvent]


def event(
    db: sqlite_utils.Database, dep: str, what: str, reason: str | None = None
) -> DeploymentEvent:
    """The event for the deployment as it is now (in the transaction that moved it)."""
    view = deploy.deployment_view(db, deploy.deployment_of(db, dep))
    index = view.stage or 0
    return DeploymentEvent(
        deployment=dep,
        event=what,  # type: ignore[arg-type]
        stage=index + 1,
        stages=len(view.stages),
        state=view.state,
        counts=view.stages[index].counts if view.stages else {},
        reason=reason,
    )


def announce(fleet: Fleet, events: Events) -> None:
    if fleet.announce is not None:
        for e in events:
            fleet.announce(e)


def settle(
    fleet: Fleet, db: sqlite_utils.Database, now: int, events: Events
) -> list[dict[str, Any]]:
    """Abort or advance every rollout that can, in the caller's transaction: the one that
    changed node rows (reports, timeouts, supersedes), so that no reader ever sees a stage's
    nodes ended and the stage not yet held (a deployment `succeeded` whose last stage is still
    `in_progress`). The desired states to publish after commit."""
    wires: list[dict[str, Any]] = []
    for row in _going(db):
        wires += _step(fleet, db, row, now, events)
    return wires


def progress(
    fleet: Fleet, change: Callable[[sqlite_utils.Database, int], None] | None = None
) -> int:
    """Make `change` (a write of node rows) and move every rollout on, in one transaction;
    then publish and announce. How many desired states went out."""
    events: Events = []
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            now = now_ns()
            if change is not None:
                change(db, now)
            wires = settle(fleet, db, now, events)
        deploy.publish(fleet, wires)
    announce(fleet, events)
    return len(wires)


def observe(fleet: Fleet, batch: list[Observation]) -> None:
    """Agents' statuses and reports stored, and the rollouts they end or move on, at once."""
    if any(isinstance(m, ReportedState) for _, m in batch):
        progress(fleet, lambda db, now: nodes.record(db, batch, now))
    else:  # statuses only: no deployment row changes, no deploy lock needed
        nodes.observe(fleet, batch)


def expire(fleet: Fleet) -> int:
    """Fail the node rows past their deadline and move the rollouts on, at once; how many."""
    failed = 0

    def change(db: sqlite_utils.Database, now: int) -> None:
        nonlocal failed
        failed = deploy.expire_rows(db, now)

    progress(fleet, change)
    return failed


def _step(
    fleet: Fleet, db: sqlite_utils.Database, row: Row, now: int, events: Events
) -> list[dict[str, Any]]:
    dep = row["deployment_id"]
    strategy = api.Strategy.model_validate_json(row["strategy"])
    plan: list[list[str]] = json.loads(row["stages"])
    current = set(plan[row["stage"]])
    rows = {r["site"]: r for r in db.query(
        "SELECT * FROM deployment_nodes WHERE deployment_id = ?", [dep]
    )}  # fmt: skip
    mine = [rows[s] for s in current if s in rows]
    failed = sorted(r["site"] for r in mine if r["state"] in stages.FAILED)
    if len(failed) > stages.allowed_failures(strategy, len(current)):
        why = "; ".join(f"{s}: {rows[s]['error'] or rows[s]['state']}" for s in failed[:5])
        reason = (
            f"stage {row['stage'] + 1} of {len(plan)}: {len(failed)} of {len(current)} "
            f"node(s) failed, more than {strategy.abort_above} allows ({why})"
        )
        wires = abort(fleet, db, dep, reason, now)
        events.append(event(db, dep, "aborted", reason))
        return wires
    if not all(r["state"] in stages.STAGE_ENDED for r in mine):
        return []
    last = row["stage"] == len(plan) - 1
    if row["stage_done_ns"] is None:
        db.table("rollouts").update(dep, {"stage_done_ns": now})
        log.info("deployment %s: stage %d of %d held", dep, row["stage"] + 1, len(plan))
        row = {**row, "stage_done_ns": now}
        events.append(event(db, dep, "finished" if last else "stage_held"))
    if last or row["paused_ns"] or now < row["stage_done_ns"] + int(strategy.soak_s * 1e9):
        return []
    nxt = row["stage"] + 1
    db.table("rollouts").update(dep, {"stage": nxt, "stage_done_ns": None})
    new = [deploy.deployed_flow(fleet, ref) for ref in json.loads(row["flows"])]
    wires = [
        deploy.issue_to(fleet, db, dep, site, new, now)
        for site in plan[nxt]
        if rows.get(site, {}).get("state") == deploy.WAITING  # a newer deployment took it
    ]
    log.info("deployment %s: stage %d of %d to %d node(s)", dep, nxt + 1, len(plan), len(wires))
    events.append(event(db, dep, "stage_started"))
    return wires


def abort(
    fleet: Fleet, db: sqlite_utils.Database, dep: str, reason: str, now: int
) -> list[dict[str, Any]]:
    """Stop the rollout; every node it reached goes back to the revision before it."""
    log.warning("deployment %s aborted: %s", dep, reason)
    db.table("rollouts").update(dep, {"aborted_ns": now, "reason": reason})
    wires = []
    for r in db.query("SELECT * FROM deployment_nodes WHERE deployment_id = ?", [dep]):
        if r["state"] == deploy.WAITING:
            state, error = "skipped", "not reached: the deployment aborted"
        elif r["state"] in deploy.FINAL:
            continue
        else:
            wire = deploy.revert(fleet, db, r["site"], r["revision"], f"abort of {dep}")
            if wire is not None:
                wires.append(wire)
            if r["state"] in IN_PROGRESS:
                state, error = "aborted", f"aborted (was {r['state']})"
            elif r["state"] == "applied":
                state, error = "reverted", "applied, then reverted: the deployment aborted"
            else:  # failed or rolled back: its own reason stays
                continue
        db.execute(
            "UPDATE deployment_nodes SET state = ?, error = ?, updated_ns = ? "
            "WHERE deployment_id = ? AND site = ?",
            [state, error, now, dep, r["site"]],
        )
    return wires


def _staged(db: sqlite_utils.Database, dep: str) -> Row:
    deploy.deployment_of(db, dep)  # not_found first
    row = stages.rollout_row(db, dep)
    if row is None:
        raise FleetError(
            "invalid", f"deployment {dep} has no stages: it went to every node at once"
        )
    return row


def pause(fleet: Fleet, req: api.DeploymentRequest) -> api.DeploymentShowResult:
    events: Events = []
    with fleet.store.write() as db:
        row = _staged(db, req.id)
        if row["paused_ns"] is None:
            db.table("rollouts").update(req.id, {"paused_ns": now_ns()})
            events.append(event(db, req.id, "paused"))
    announce(fleet, events)
    return deploy.deployment_show(fleet, req)


def resume(fleet: Fleet, req: api.DeploymentRequest) -> api.DeploymentShowResult:
    with fleet.store.write() as db:
        row = _staged(db, req.id)
        if row["aborted_ns"]:
            raise FleetError(
                "invalid", f"deployment {req.id} aborted ({row['reason']}); deploy again"
            )
        db.table("rollouts").update(req.id, {"paused_ns": None})
        events = [event(db, req.id, "resumed")] if row["paused_ns"] else []
    announce(fleet, events)
    progress(fleet)  # a stage that held meanwhile goes on now
    return deploy.deployment_show(fleet, req)
