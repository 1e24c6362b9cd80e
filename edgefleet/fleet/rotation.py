"""Signing key rotation: from the key nodes trust now to a new one, without a visit to a site.

A node trusts the keys of its site.yaml until a desired state, signed by a key it trusts,
names others (`trusted_keys`); from then on it trusts those (kept in its state file). So the
old key itself vouches for the new one, and no node ever trusts a key it was not told about by
a key it already trusted. `keys.rotate NEW_KEY`:

1. **announcing**: every node with a desired state gets a new revision (the same flows)
   telling it to trust [old, new], signed by the old key.
2. once every one of them reported that revision (or a newer one) `applied` or `rolled_back`
   (it took the state in, so it took the keys in): **switching**: the fleet signs with the new
   key from now on, and every node gets a revision telling it to trust [new] only.
3. once every node confirmed that: **retired**: the old key signs nothing and no node trusts
   it; a state signed with it is refused.

While a rotation goes, every desired state the fleet issues (deployments too) carries the
phase's keys, so a deployment meanwhile never hides the rotation from a node. An offline node
holds the rotation in its phase: retiring the old key before it confirmed would lock it out. A
rotation starts only when no deployment is in progress on a node (its revision would be taken
over by the rotation's, and time out). The database keeps which key signs: after a restart the
fleet signs with the rotation's new key from `switching` on (fleet.yaml's `signing_key` names
the first key only).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefleet.fleet import api, deploy
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.nodes import IN_PROGRESS, latest_desired
from edgefleet.fleet.store import Row, one
from shared.errors import ConfigError
from shared.messages import iso, now_ns
from shared.signing import SigningKey

log = logging.getLogger(__name__)

TOOK_IT_IN = ("applied", "rolled_back", "rollback_failed")


def _key(path: str) -> SigningKey:
    try:
        return SigningKey.load(Path(path))
    except ConfigError as exc:
        raise FleetError("invalid", f"new_key: {exc} (edgefleet keys create --out PATH)") from None


def _latest(db: sqlite_utils.Database) -> Row | None:
    return one(db, "SELECT * FROM key_rotations ORDER BY started_ns DESC LIMIT 1", [])


def restore(fleet: Fleet) -> None:
    """At start: the key that signs now, and the keys to announce, from the rotations."""
    with fleet.store.read() as db:
        rows = list(db.query("SELECT * FROM key_rotations ORDER BY started_ns"))
    for row in rows:
        new = SigningKey.load(Path(row["new_key_path"]))
        if row["phase"] == "announcing" and fleet.signing_key is not None:
            fleet.trust = [fleet.signing_key.public.text(), new.public.text()]
        elif row["phase"] == "switching":
            fleet.signing_key, fleet.trust = new, [new.public.text()]
        else:
            fleet.signing_key, fleet.trust = new, None


def _phase(
    fleet: Fleet, db: sqlite_utils.Database, sites: list[str], note: str, req_timeout: float
) -> tuple[str, list[dict[str, Any]]]:
    """One deployment that gives each node its flows again with the phase's keys."""
    dep, now = uuid.uuid4().hex[:12], now_ns()
    db.table("deployments").insert(
        {
            "id": dep,
            "flows": "[]",
            "target": json.dumps({"nodes": sites}),
            "author": "",
            "note": note,
            "created_ns": now,
            "timeout_s": req_timeout,
        }
    )
    wires = []
    for site in sites:
        previous = latest_desired(db, site)
        flows = previous.flows if previous else []
        revision, wire = deploy.issue(fleet, db, site, flows, dep, note)
        wires.append(wire)
        db.table("deployment_nodes").insert(
            {
                "deployment_id": dep,
                "site": site,
                "revision": revision,
                "state": "pending",
                "timings": "{}",
                "updated_ns": now,
                "deadline_ns": now + int(req_timeout * 1e9),
            }
        )
    return dep, wires


def rotate(fleet: Fleet, req: api.KeyRotateRequest) -> api.KeyStatusResult:
    old = fleet.signing_key
    if old is None:
        raise FleetError(
            "no_signing_key", "the fleet has no signing key to rotate from (fleet.yaml)"
        )
    new = _key(req.new_key)
    if new.public.key_id == old.public.key_id:
        raise FleetError("invalid", "new_key is the key the fleet signs with already")
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            latest = _latest(db)
            if latest is not None and latest["phase"] != "retired":
                raise FleetError(
                    "conflict", f"rotation {latest['id']} is {latest['phase']}: wait for it"
                )
            marks = ",".join("?" * len(IN_PROGRESS))
            busy = one(
                db,
                f"SELECT deployment_id, site FROM deployment_nodes WHERE state IN ({marks})",
                list(IN_PROGRESS),
            )
            if busy is not None:
                raise FleetError(
                    "conflict",
                    f"deployment {busy['deployment_id']} is in progress on {busy['site']}: "
                    "rotate once it ended (or cancel it)",
                )
            sites = [
                r["site"]
                for r in db.query("SELECT site FROM nodes WHERE desired_revision > 0 ORDER BY site")
            ]
            rid = uuid.uuid4().hex[:12]
            fleet.trust = [old.public.text(), new.public.text()]
            note = f"key rotation {rid}: trust {old.public.key_id} and {new.public.key_id}"
            dep, wires = _phase(fleet, db, sites, note, req.timeout_s)
            db.table("key_rotations").insert(
                {
                    "id": rid,
                    "old_key_id": old.public.key_id,
                    "new_key_id": new.public.key_id,
                    "new_key_path": str(Path(req.new_key).resolve()),
                    "phase": "announcing",
                    "announce_deployment": dep,
                    "started_ns": now_ns(),
                    "author": req.author,
                }
            )
        deploy.publish(fleet, wires)
    log.info("key rotation %s: announcing %s to %d node(s)", rid, new.public.key_id, len(sites))
    for _ in range(2):  # no node to tell: both phases go through at once
        progress(fleet)
    return status(fleet, api.KeyStatusRequest())


def _confirmed(db: sqlite_utils.Database, dep: str) -> list[api.KeyNode]:
    return [
        api.KeyNode(
            site=r["site"],
            revision=r["revision"],
            confirmed=(r["reported_revision"] or 0) >= r["revision"]
            and r["reported_state"] in TOOK_IT_IN,
        )
        for r in db.query(
            "SELECT d.site, d.revision, n.reported_revision, n.reported_state "
            "FROM deployment_nodes d JOIN nodes n ON n.site = d.site "
            "WHERE d.deployment_id = ? ORDER BY d.site",
            [dep],
        )
    ]


def progress(fleet: Fleet) -> int:
    """Move the rotation in progress on when every node confirmed its phase."""
    with fleet.deploy_lock:
        with fleet.store.write() as db:
            row = _latest(db)
            if row is None or row["phase"] == "retired":
                return 0
            announcing = row["phase"] == "announcing"
            dep = row["announce_deployment" if announcing else "switch_deployment"]
            if not all(n.confirmed for n in _confirmed(db, dep)):
                return 0
            wires: list[dict[str, Any]] = []
            if announcing:
                new = SigningKey.load(Path(row["new_key_path"]))
                fleet.signing_key, fleet.trust = new, [new.public.text()]
                sites = [n.site for n in _confirmed(db, dep)]
                note = f"key rotation {row['id']}: trust {new.public.key_id} only"
                switch, wires = _phase(fleet, db, sites, note, 3600.0)
                db.table("key_rotations").update(
                    row["id"], {"phase": "switching", "switch_deployment": switch}
                )
                log.info("key rotation %s: signing with %s", row["id"], new.public.key_id)
            else:
                fleet.trust = None
                db.table("key_rotations").update(
                    row["id"], {"phase": "retired", "retired_ns": now_ns()}
                )
                log.info("key rotation %s: key %s retired", row["id"], row["old_key_id"])
        deploy.publish(fleet, wires)
    return len(wires)


def status(fleet: Fleet, req: api.KeyStatusRequest) -> api.KeyStatusResult:
    with fleet.store.read() as db:
        row = _latest(db)
        view = None
        if row is not None:
            dep = row["switch_deployment"] or row["announce_deployment"]
            view = api.KeyRotationView(
                id=row["id"],
                phase=row["phase"],
                old_key_id=row["old_key_id"],
                new_key_id=row["new_key_id"],
                started=iso(row["started_ns"]),
                retired=iso(row["retired_ns"]) if row["retired_ns"] else None,
                deployment=dep,
                nodes=_confirmed(db, dep),
            )
    key = fleet.signing_key
    return api.KeyStatusResult(
        signing_key_id=key.public.key_id if key else None, trust=fleet.trust, rotation=view
    )
