"""The fleet's metadata in SQLite (sqlite-utils): resources, flow versions, staged uploads,
nodes, groups, deployments and desired states (schema 2), nodes' reported transitions (schema
3), inference statuses for the shadow report (schema 4), staged rollouts and key rotations
(schema 5), a node's bridge apart from its agent (schema 6); their queries are in nodes.py,
deploy.py, shadow.py, rollout.py and rotation.py.

WAL mode and `synchronous=FULL`: what a command answered as committed survives a SIGKILL or a
power cut. An explicit `schema_version` table and forward migrations (`MIGRATIONS[i]` takes
the schema from version i to i + 1), so a newer fleet opens an older database and never the
other way round. Each call opens its own connection (handlers run in worker threads); writes
take the database lock at their start (`BEGIN IMMEDIATE`), which is what makes two pushes of
one name at the same moment get distinct versions, even from two fleet processes.

Rows are never reused: a deleted version keeps a tombstone, so `pump-ae@3` can never name two
different blobs over the life of a fleet.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefleet.fleet.errors import FleetError
from shared.messages import now_ns

Row = dict[str, Any]


def _v1(db: sqlite_utils.Database) -> None:
    db.table("resources").create(
        {
            "id": int,
            "name": str,
            "version": int,
            "kind": str,  # model | script
            "sha256": str,
            "size": int,
            "note": str,
            "author": str,
            "created_ns": int,
            "archived_ns": int,  # NULL: active
            "deleted_ns": int,  # NULL: present; else a tombstone that keeps the number taken
            "signature": str,  # JSON: a model's signature, a script's functions
        },
        pk="id",
        not_null={"name", "version", "kind", "sha256", "size", "created_ns"},
        defaults={"note": "", "author": ""},
    )
    db.table("resources").create_index(["name", "version"], unique=True)
    db.table("resources").create_index(["sha256"])
    db.table("flows").create(
        {
            "id": int,
            "name": str,
            "version": int,
            "text": str,  # the flow file as the user wrote it
            "resolved": str,  # JSON: the flow with every library reference pinned to name@N
            "digest": str,  # sha256 over the text and the pinned digests: same input, same version
            "note": str,
            "author": str,
            "created_ns": int,
        },
        pk="id",
        not_null={"name", "version", "text", "resolved", "digest", "created_ns"},
        defaults={"note": "", "author": ""},
    )
    db.table("flows").create_index(["name", "version"], unique=True)
    db.table("flow_refs").create(
        {"flow_id": int, "role": str, "resource_id": int},
        pk=("flow_id", "role"),
        foreign_keys=[("flow_id", "flows", "id"), ("resource_id", "resources", "id")],
        not_null={"flow_id", "role", "resource_id"},
    )
    db.table("flow_refs").create_index(["resource_id"])
    db.table("uploads").create(
        {"id": str, "key": str, "size": int, "created_ns": int, "expires_ns": int},
        pk="id",
        not_null={"key", "size", "created_ns", "expires_ns"},
    )


def _v2(db: sqlite_utils.Database) -> None:
    """Nodes, groups, deployments and every desired state ever issued."""
    db.table("nodes").create(
        {
            "site": str,
            "agent_labels": str,  # JSON: what the node's agent announces (site.yaml labels)
            "fleet_labels": str,  # JSON: set with `node label`; wins over the agent's
            "agent": str,  # JSON: the rest of the agent's health section (versions, ...)
            "first_seen_ns": int,  # NULL: named by a deployment, never heard from yet
            "last_seen_ns": int,
            "online": str,  # online | offline | stopped | unknown
            "desired_revision": int,
            "reported_revision": int,
            "reported_state": str,
            "reported": str,  # JSON: the last ReportedState
        },
        pk="site",
        not_null={"site", "agent_labels", "fleet_labels", "online", "desired_revision"},
        defaults={"agent_labels": "{}", "fleet_labels": "{}", "online": "unknown",
                  "desired_revision": 0},
    )  # fmt: skip
    db.table("groups").create(
        {"name": str, "selector": str, "author": str, "created_ns": int},
        pk="name",
        not_null={"name", "selector", "created_ns"},
    )
    db.table("deployments").create(
        {
            "id": str,
            "flows": str,  # JSON: ["pump-anomaly@5"]
            "target": str,  # JSON: {"group": ...} | {"nodes": [...]} | {"selector": ...}
            "author": str,
            "note": str,
            "created_ns": int,
            "timeout_s": float,
            "cancelled_ns": int,
        },
        pk="id",
        not_null={"id", "flows", "target", "created_ns", "timeout_s"},
    )
    db.table("deployment_nodes").create(
        {
            "deployment_id": str,
            "site": str,
            "revision": int,
            "state": str,  # pending, then the node's reported step; superseded | cancelled
            "error": str,
            "timings": str,  # JSON: the node's timings_ms
            "updated_ns": int,
            "deadline_ns": int,
        },
        pk=("deployment_id", "site"),
        foreign_keys=[("deployment_id", "deployments", "id")],
        not_null={"deployment_id", "site", "revision", "state", "updated_ns", "deadline_ns"},
    )
    db.table("deployment_nodes").create_index(["site", "revision"])
    db.table("desired").create(
        {
            "site": str,
            "revision": int,
            "deployment_id": str,
            "wire": str,  # JSON: the signed DesiredState exactly as published
            "changes": str,  # a few words: what changed from the previous revision
            "issued_ns": int,
        },
        pk=("site", "revision"),
        not_null={"site", "revision", "wire", "issued_ns"},
    )


def _v3(db: sqlite_utils.Database) -> None:
    """Every transition a node reported (received → downloading → ... → applied), with times."""
    db.table("node_events").create(
        {
            "site": str,
            "revision": int,
            "deployment_id": str,
            "state": str,  # the reported step
            "error": str,
            "t_ns": int,  # when the agent reported it (its clock)
            "received_ns": int,  # when the fleet stored it
        },
        not_null={"site", "revision", "state", "t_ns", "received_ns"},
    )
    # a retained report seen again (a reconnect) is the same event: stored once
    db.table("node_events").create_index(["site", "revision", "state", "t_ns"], unique=True)


def _v4(db: sqlite_utils.Database) -> None:
    """Each node's inference instances as their retained status last said (shadow figures)."""
    db.table("inference_status").create(
        {
            "site": str,
            "flow": str,
            "state": str,  # online | offline | stopped
            "inference": str,  # JSON: the status's inference section (model, shadow, ...)
            "updated_ns": int,
        },
        pk=("site", "flow"),
        not_null={"site", "flow", "state", "updated_ns"},
    )


def _blobs(flow: dict[str, Any]) -> list[dict[str, Any]]:
    """A desired state's flow (as JSON): its resources and its deployed shadow model."""
    shadow = flow.get("shadow")
    return [*flow["resources"], *([shadow] if isinstance(shadow, dict) else [])]


def _shadows(db: sqlite_utils.Database) -> set[str]:
    """`name@N` of every shadow model in a node's latest desired state."""
    rows = db.query(
        "SELECT wire FROM desired d WHERE revision = "
        "(SELECT max(revision) FROM desired WHERE site = d.site)"
    )
    return {
        f["shadow"]["ref"] for row in rows for f in json.loads(row["wire"])["flows"]
        if isinstance(f.get("shadow"), dict)
    }  # fmt: skip


def _v5(db: sqlite_utils.Database) -> None:
    """Staged rollouts (one row per deployment with a strategy) and signing key rotations."""
    db.table("rollouts").create(
        {
            "deployment_id": str,
            "strategy": str,  # JSON: api.Strategy
            "stages": str,  # JSON: [[site, ...], ...] in the order they go
            "stage": int,  # the stage in progress (index into stages)
            "stage_done_ns": int,  # when the current stage held (its soak starts then)
            "paused_ns": int,
            "aborted_ns": int,
            "reason": str,  # why it aborted
        },
        pk="deployment_id",
        foreign_keys=[("deployment_id", "deployments", "id")],
        not_null={"deployment_id", "strategy", "stages", "stage"},
    )
    db.table("key_rotations").create(
        {
            "id": str,
            "old_key_id": str,
            "new_key_id": str,
            "new_key_path": str,  # on the fleet's own filesystem, like fleet.yaml's signing_key
            "phase": str,  # announcing | switching | retired
            "announce_deployment": str,  # trust [old, new], signed by the old key
            "switch_deployment": str,  # trust [new], signed by the new key
            "started_ns": int,
            "retired_ns": int,
            "author": str,
        },
        pk="id",
        not_null={"id", "old_key_id", "new_key_id", "new_key_path", "phase", "started_ns"},
    )


def _v6(db: sqlite_utils.Database) -> None:
    """A node's bridge and its agent's own state apart: `online` is what both together say
    (a site whose bridge's last will said 0 is offline, whatever its agent said last)."""
    db.table("nodes").add_column("agent_state", str)  # the agent's last status state
    db.table("nodes").add_column("bridge", str)  # up | down | NULL: no notification seen
    db.execute("UPDATE nodes SET agent_state = online")


def _v7(db: sqlite_utils.Database) -> None:
    """Who archived a resource version and who cancelled a deployment (NULL before v7)."""
    db.table("resources").add_column("archived_by", str)
    db.table("deployments").add_column("cancelled_by", str)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7]
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite_utils.Database]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        try:
            yield sqlite_utils.Database(conn)
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One transaction holding the write lock from its start; rolled back on any error."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite_utils.Database]:
        """One read transaction: every query in it sees the same snapshot (WAL), so a view
        built from several queries (a deployment, its stages, its nodes) never mixes the
        states before and after a commit that lands between two of them."""
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("ROLLBACK")

    def read(self) -> contextlib.AbstractContextManager[sqlite_utils.Database]:
        """A read transaction (module functions outside this class use it)."""
        return self._read()

    def write(self) -> contextlib.AbstractContextManager[sqlite_utils.Database]:
        """A write transaction holding the lock from its start."""
        return self._write()

    def _migrate(self, db: sqlite_utils.Database) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            if "schema_version" not in db.table_names():
                db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                db.execute("INSERT INTO schema_version VALUES (0)")
            (current,) = db.execute("SELECT version FROM schema_version").fetchone()
            if current > SCHEMA_VERSION:
                raise FleetError(
                    "invalid",
                    f"{self.path} has schema version {current}; this fleet knows up to "
                    f"{SCHEMA_VERSION}: run a newer edgefleet",
                )
            for migrate in MIGRATIONS[current:]:
                migrate(db)
            db.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def schema_version(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT version FROM schema_version").fetchone()[0])

    # ------------------------------------------------------------------ resources

    def add_resource(
        self,
        name: str,
        kind: str,
        sha256: str,
        size: int,
        note: str,
        author: str,
        signature: dict[str, Any],
        ensure_blob: Callable[[], None] = lambda: None,
    ) -> tuple[Row, bool]:
        """The new version `name@N` (N: one past the highest ever given), or the existing one
        with the same bytes; True when it was created.

        `ensure_blob` (make the blob present at its address) runs inside the transaction: the
        database lock orders it against `delete` and `drop_blob_if_unused`, in this process or
        another on the same file, so no removal slips between the blob's check and the row."""
        with self._write() as db:
            ensure_blob()
            kinds = {
                r["kind"] for r in db.query("SELECT kind FROM resources WHERE name = ?", [name])
            }
            if kinds and kind not in kinds:
                raise FleetError(
                    "conflict",
                    f"{name} is a {kinds.pop()} in the library; a {kind} needs another name",
                )
            same = one(
                db,
                "SELECT * FROM resources WHERE name = ? AND sha256 = ? AND deleted_ns IS NULL "
                "ORDER BY version DESC LIMIT 1",
                [name, sha256],
            )
            if same is not None:
                return same, False
            (top,) = db.execute(
                "SELECT coalesce(max(version), 0) FROM resources WHERE name = ?", [name]
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO resources (name, version, kind, sha256, size, note, author, "
                "created_ns, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, top + 1, kind, sha256, size, note, author, now_ns(), json.dumps(signature)],
            )
            row = one(db, "SELECT * FROM resources WHERE id = ?", [cursor.lastrowid])
            assert row is not None
            return row, True

    def resource(self, name: str, version: int | None, *, active: bool = False) -> Row:
        """One version; without a version the latest (the latest active one with `active`)."""
        with self._connection() as db:
            return _resource(db, name, version, active=active)

    def resource_by_id(self, resource_id: int) -> Row:
        with self._connection() as db:
            row = one(db, "SELECT * FROM resources WHERE id = ?", [resource_id])
        if row is None:
            raise FleetError("not_found", f"no resource with id {resource_id}")
        return row

    def versions(self, name: str) -> list[Row]:
        with self._connection() as db:
            return list(
                db.query(
                    "SELECT * FROM resources WHERE name = ? AND deleted_ns IS NULL "
                    "ORDER BY version",
                    [name],
                )
            )

    def resource_names(self, kind: str | None = None) -> list[str]:
        sql = "SELECT DISTINCT name FROM resources WHERE deleted_ns IS NULL"
        params: list[Any] = []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        with self._connection() as db:
            return [r["name"] for r in db.query(sql + " ORDER BY name", params)]

    def has_blob(self, sha256: str) -> bool:
        """Whether a present version holds these bytes."""
        with self._connection() as db:
            return _has_blob(db, sha256)

    def drop_blob_if_unused(self, sha256: str, remove: Callable[[str], None]) -> bool:
        """`remove(sha256)` unless a present version holds these bytes, under the database lock
        (see `add_resource`); True when it was called."""
        with self._write() as db:
            if _has_blob(db, sha256):
                return False
            remove(sha256)
            return True

    def users(self, resource_id: int) -> list[str]:
        """The flow versions that pin this resource, as `flow@N`."""
        with self._connection() as db:
            return _users(db, resource_id)

    def archive(self, name: str, version: int, author: str = "") -> Row:
        with self._write() as db:
            row = _resource(db, name, version)
            if row["archived_ns"] is None:  # archived once: the first time and author stay
                db.execute(
                    "UPDATE resources SET archived_ns = ?, archived_by = ? WHERE id = ?",
                    [now_ns(), author, row["id"]],
                )
            return _resource(db, name, version)

    def delete(
        self, name: str, version: int, remove_blob: Callable[[str], None] = lambda _: None
    ) -> tuple[Row, bool]:
        """Tombstone the version; when no other present version holds the same bytes,
        `remove_blob(sha256)` inside the transaction (see `add_resource`) and True."""
        with self._write() as db:
            row = _resource(db, name, version)
            users = _users(db, row["id"])
            if not users and f"{name}@{version}" in _shadows(db):
                users = ["a deployed shadow (edgefleet shadow stop first)"]
            if users:
                raise FleetError(
                    "in_use",
                    f"{name}@{version} is pinned by {', '.join(users)}; archive it instead "
                    f"(edgefleet library archive {name}@{version})",
                )
            db.execute("UPDATE resources SET deleted_ns = ? WHERE id = ?", [now_ns(), row["id"]])
            (others,) = db.execute(
                "SELECT count(*) FROM resources WHERE sha256 = ? AND deleted_ns IS NULL",
                [row["sha256"]],
            ).fetchone()
            if others == 0:
                remove_blob(row["sha256"])
            return row, others == 0

    # ------------------------------------------------------------------ flows

    def add_flow(
        self,
        name: str,
        text: str,
        resolved: dict[str, Any],
        digest: str,
        refs: dict[str, int],
        note: str,
        author: str,
    ) -> tuple[Row, bool]:
        """The new version `name@N`, or the existing one with the same text and pins."""
        with self._write() as db:
            for role, resource_id in refs.items():  # archived or deleted since it was resolved?
                row = one(db, "SELECT * FROM resources WHERE id = ?", [resource_id])
                if row is None or row["deleted_ns"] is not None:
                    raise FleetError("not_found", f"{role}: the resource was deleted meanwhile")
                if row["archived_ns"] is not None:
                    raise FleetError(
                        "archived", f"{role}: {row['name']}@{row['version']} is archived"
                    )
            same = one(
                db,
                "SELECT * FROM flows WHERE name = ? AND digest = ? ORDER BY version DESC LIMIT 1",
                [name, digest],
            )
            if same is not None:
                return same, False
            (top,) = db.execute(
                "SELECT coalesce(max(version), 0) FROM flows WHERE name = ?", [name]
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO flows (name, version, text, resolved, digest, note, author, "
                "created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [name, top + 1, text, json.dumps(resolved), digest, note, author, now_ns()],
            )
            for role, resource_id in refs.items():
                db.execute(
                    "INSERT INTO flow_refs (flow_id, role, resource_id) VALUES (?, ?, ?)",
                    [cursor.lastrowid, role, resource_id],
                )
            row = one(db, "SELECT * FROM flows WHERE id = ?", [cursor.lastrowid])
            assert row is not None
            return row, True

    def flow(self, name: str, version: int | None) -> Row:
        with self._connection() as db:
            if version is None:
                row = one(
                    db, "SELECT * FROM flows WHERE name = ? ORDER BY version DESC LIMIT 1", [name]
                )
            else:
                row = one(db, "SELECT * FROM flows WHERE name = ? AND version = ?", [name, version])
        if row is None:
            at = "" if version is None else f"@{version}"
            raise FleetError(
                "not_found", f"no flow {name}{at} in the fleet (edgefleet flow list shows them)"
            )
        return row

    def flow_versions(self, name: str) -> list[Row]:
        with self._connection() as db:
            return list(db.query("SELECT * FROM flows WHERE name = ? ORDER BY version", [name]))

    def flow_names(self) -> list[str]:
        with self._connection() as db:
            return [r["name"] for r in db.query("SELECT DISTINCT name FROM flows ORDER BY name")]

    def flow_refs(self, flow_id: int) -> dict[str, Row]:
        """role → the pinned resource row."""
        with self._connection() as db:
            rows = db.query(
                "SELECT flow_refs.role, resources.* FROM flow_refs JOIN resources "
                "ON resources.id = flow_refs.resource_id WHERE flow_refs.flow_id = ? "
                "ORDER BY flow_refs.role",
                [flow_id],
            )
            return {r.pop("role"): r for r in rows}

    # ------------------------------------------------------------------ desired states

    def pinned_for(self, site: str) -> set[str]:
        """Every resource `name@N` any desired state of `site` ever named."""
        with self._connection() as db:
            rows = db.query("SELECT wire FROM desired WHERE site = ?", [site])
            return {
                r["ref"] for row in rows for f in json.loads(row["wire"])["flows"]
                for r in _blobs(f)
            }  # fmt: skip

    def deployed(self) -> dict[str, int]:
        """`name@N` of every flow and resource in a node's latest desired state → nodes."""
        counts: dict[str, int] = {}
        with self._connection() as db:
            rows = db.query(
                "SELECT wire FROM desired d WHERE revision = "
                "(SELECT max(revision) FROM desired WHERE site = d.site)"
            )
            for row in rows:
                refs = set()
                for f in json.loads(row["wire"])["flows"]:
                    refs.add(f"{f['name']}@{f['version']}")
                    refs.update(r["ref"] for r in _blobs(f))
                for ref in refs:
                    counts[ref] = counts.get(ref, 0) + 1
        return counts

    # ------------------------------------------------------------------ uploads

    def add_upload(self, upload_id: str, key: str, size: int, expires_ns: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO uploads (id, key, size, created_ns, expires_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                [upload_id, key, size, now_ns(), expires_ns],
            )

    def take_upload(self, upload_id: str) -> Row:
        """Claim a staged upload for one commit: a second commit of it finds nothing."""
        with self._write() as db:
            row = one(db, "SELECT * FROM uploads WHERE id = ?", [upload_id])
            if row is None:
                raise FleetError(
                    "not_found",
                    f"no upload {upload_id!r}: it was committed, refused or expired; "
                    "ask for a new upload URL",
                )
            db.execute("DELETE FROM uploads WHERE id = ?", [upload_id])
            return row

    def expired_uploads(self, now: int) -> list[Row]:
        """Uploads whose URL expired and that nobody committed: the staged object may go."""
        with self._write() as db:
            rows = list(db.query("SELECT * FROM uploads WHERE expires_ns < ?", [now]))
            db.execute("DELETE FROM uploads WHERE expires_ns < ?", [now])
            return rows


def _has_blob(db: sqlite_utils.Database, sha256: str) -> bool:
    sql = "SELECT id FROM resources WHERE sha256 = ? AND deleted_ns IS NULL"
    return one(db, sql, [sha256]) is not None


def one(db: sqlite_utils.Database, sql: str, params: list[Any]) -> Row | None:
    return next(iter(db.query(sql, params)), None)


def _resource(
    db: sqlite_utils.Database, name: str, version: int | None, *, active: bool = False
) -> Row:
    if version is not None:
        row = one(
            db,
            "SELECT * FROM resources WHERE name = ? AND version = ? AND deleted_ns IS NULL",
            [name, version],
        )
        if row is None:
            raise FleetError(
                "not_found",
                f"no {name}@{version} in the library (edgefleet library show {name} lists "
                "its versions)",
            )
        return row
    extra = " AND archived_ns IS NULL" if active else ""
    row = one(
        db,
        f"SELECT * FROM resources WHERE name = ? AND deleted_ns IS NULL{extra} "
        "ORDER BY version DESC LIMIT 1",
        [name],
    )
    if row is not None:
        return row
    if active and one(db, "SELECT id FROM resources WHERE name = ? AND deleted_ns IS NULL", [name]):
        raise FleetError(
            "archived",
            f"every version of {name} is archived: push a new one (edgefleet library push)",
        )
    raise FleetError(
        "not_found", f"no {name} in the library (edgefleet library list shows what there is)"
    )


def _users(db: sqlite_utils.Database, resource_id: int) -> list[str]:
    rows = db.query(
        "SELECT DISTINCT flows.name, flows.version FROM flow_refs JOIN flows "
        "ON flows.id = flow_refs.flow_id WHERE flow_refs.resource_id = ? "
        "ORDER BY flows.name, flows.version",
        [resource_id],
    )
    return [f"{r['name']}@{r['version']}" for r in rows]
