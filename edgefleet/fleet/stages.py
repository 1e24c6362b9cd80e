"""A staged rollout's plan: which nodes go in which stage, and how many may fail in each.

Pure functions plus the rollout's row (no publishing here; rollout.py moves a rollout on).

- Stages are cumulative shares of the target, as people say them: `1,10%,100%` is one node,
  then up to a tenth of the nodes, then all. A percentage rounds up (10 % of 15 nodes is 2), a
  stage that would add no node is dropped, and the last stage always takes the rest, so no node
  of the target is left out whatever the list says.
- Order: by site id by default (what `node list` shows: a person reads the canary off the
  list); with a `seed`, by sha256(seed, site), a stable order that spreads canaries over
  plants and lines when site ids group them (`plant1-...` first would always be one plant).
  Either way the same target and strategy give the same stages, so `--dry-run` shows exactly
  what the deployment will do.
- Abort threshold: per stage, a count (`2`: a third failure aborts) or a percentage of that
  stage's nodes (`20%`: more than a fifth fail). A failed node is one that reported `failed`,
  `rolled_back` or `rollback_failed`, or did not report an end state within the health timeout
  (an offline node).
"""

from __future__ import annotations

import hashlib
import json
import math

import sqlite_utils

from edgefleet.fleet import api
from edgefleet.fleet.store import Row, one

FAILED = ("failed", "rolled_back", "rollback_failed")
STAGE_ENDED = ("applied", *FAILED, "superseded", "cancelled")


def share(text: str, total: int) -> int:
    """How many of `total` nodes a count or a percentage names."""
    if text.endswith("%"):
        return math.ceil(float(text[:-1]) * total / 100 - 1e-9)
    return min(int(text), total)


def ordered(sites: list[str], seed: str | None) -> list[str]:
    if seed is None:
        return sorted(sites)
    return sorted(sites, key=lambda s: (hashlib.sha256(f"{seed}\0{s}".encode()).hexdigest(), s))


def plan(sites: list[str], strategy: api.Strategy) -> list[list[str]]:
    """The target's nodes cut into stages (each non-empty; together every node once)."""
    nodes = ordered(sorted(set(sites)), strategy.seed)
    cuts = [share(s, len(nodes)) for s in strategy.stages] + [len(nodes)]
    stages, done = [], 0
    for cut in cuts:
        if cut > done:
            stages.append(nodes[done:cut])
            done = cut
    return stages


def allowed_failures(strategy: api.Strategy, stage_size: int) -> int:
    """The most failures a stage of this size may have and still go on."""
    text = strategy.abort_above
    if text.endswith("%"):
        return math.floor(float(text[:-1]) * stage_size / 100 + 1e-9)
    return int(text)


# ---------------------------------------------------------------------------- the row


def record(
    db: sqlite_utils.Database, deployment_id: str, strategy: api.Strategy, stages: list[list[str]]
) -> None:
    db.table("rollouts").insert(
        {
            "deployment_id": deployment_id,
            "strategy": strategy.model_dump_json(),
            "stages": json.dumps(stages),
            "stage": 0,
        }
    )


def rollout_row(db: sqlite_utils.Database, deployment_id: str) -> Row | None:
    return one(db, "SELECT * FROM rollouts WHERE deployment_id = ?", [deployment_id])


def stage_views(row: Row, node_rows: list[Row]) -> list[api.StageView]:
    by_site = {r["site"]: r for r in node_rows}
    views = []
    for index, sites in enumerate(json.loads(row["stages"])):
        counts: dict[str, int] = {}
        for site in sites:
            state = by_site[site]["state"] if site in by_site else "waiting"
            counts[state] = counts.get(state, 0) + 1
        if index > row["stage"]:
            state = "skipped" if row["aborted_ns"] else "waiting"
        elif index < row["stage"] or row["stage_done_ns"]:
            state = "held"
        elif row["aborted_ns"]:
            state = "failed"
        else:
            state = "in_progress"
        views.append(api.StageView(index=index, sites=sites, state=state, counts=counts))
    return views
