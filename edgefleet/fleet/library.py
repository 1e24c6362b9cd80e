"""The resource library's commands: upload, commit (verify, inspect, store), list, show, pull,
archive, delete. Blocking functions: the transport runs them in worker threads."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.fleet import api
from edgefleet.fleet.blobs import BLOB_PREFIX, BlobStore, blob_key, upload_key
from edgefleet.fleet.board import Board
from edgefleet.fleet.config import Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.store import Row, Store
from services.inference.scripts import inspect_script
from services.inference.signature import Fetched, FetchedInspection
from shared.errors import EdgefleetError, ModelError
from shared.messages import DeploymentEvent, iso, now_ns
from shared.signing import SigningKey

log = logging.getLogger(__name__)

UPLOAD_GRACE_S = 60  # a PUT that started just before its URL expired may still be finishing


@dataclass
class Fleet:
    """What every command handler works on."""

    config: Config
    store: Store
    blobs: BlobStore
    signing_key: SigningKey | None = None  # signs desired states; deploy refuses without one
    # During a key rotation (rotation.py): the public keys every desired state tells its node
    # to trust from now on.
    trust: list[str] | None = None
    # Publishes one retained QoS 1 message and waits for the broker's ack (set by the service:
    # handlers run in threads, the MQTT client in the event loop).
    publish: Callable[[str, dict[str, Any]], None] | None = None
    # Announces a staged deployment's moves (`DeploymentEvent`): not retained, never waited on
    # (a rollout does not stop for a follower's sake).
    announce: Callable[[DeploymentEvent], None] | None = None
    # Held from a deployment's commit to its last publish: revisions reach the broker in order.
    deploy_lock: threading.Lock = field(default_factory=threading.Lock)
    debug: Board = field(default_factory=Board)  # open debug sessions (edgefleet/fleet/debug.py)
    # Inspecting processes started when a model's upload URL was handed out (its Python start
    # and onnxruntime import overlap the upload), by upload id, for that upload's commit.
    warm: dict[str, tuple[str, FetchedInspection]] = field(default_factory=dict)
    warm_lock: threading.Lock = field(default_factory=threading.Lock)
    # Inspecting children that gave their verdict and are still exiting (reaped in the
    # background, so a commit does not wait for an exit): `close` waits for them.
    exiting: list[FetchedInspection] = field(default_factory=list)

    @classmethod
    def open(cls, config: Config) -> Fleet:
        blobs = BlobStore(config.s3)
        blobs.ensure_bucket()
        config.work_dir.mkdir(parents=True, exist_ok=True)
        key = SigningKey.load(config.signing_key) if config.signing_key else None
        return cls(config, Store(config.db), blobs, signing_key=key)

    def resource_view(self, row: Row, *, users: bool = True) -> api.ResourceView:
        return api.ResourceView(
            ref=f"{row['name']}@{row['version']}",
            name=row["name"],
            version=row["version"],
            kind=row["kind"],
            sha256=row["sha256"],
            size=row["size"],
            note=row["note"] or "",
            author=row["author"] or "",
            created=iso(row["created_ns"]),
            archived=iso(row["archived_ns"]) if row["archived_ns"] else None,
            archived_by=row["archived_by"] if row["archived_ns"] else None,
            signature=json.loads(row["signature"] or "{}"),
            used_by=self.store.users(row["id"]) if users else [],
        )

    def close(self) -> None:
        """Stop the inspecting children still waiting for an upload."""
        with self.warm_lock:
            ids = list(self.warm)
        for upload_id in ids:
            _close_warm(self, upload_id)
        with self.warm_lock:
            exiting, self.exiting = self.exiting, []
        for inspection in exiting:
            inspection.child.reaped.wait(10)

    def sweep(self, now: int | None = None) -> int:
        """Remove staged uploads that were never committed and whose URL expired."""
        now = now_ns() if now is None else now
        rows = self.store.expired_uploads(now - UPLOAD_GRACE_S * 10**9)
        for row in rows:
            _close_warm(self, row["id"])
            if row["key"].startswith(BLOB_PREFIX):  # PUT to its address: maybe a version's too
                _drop_unused(self, row["key"].removeprefix(BLOB_PREFIX))
            else:
                self.blobs.remove(row["key"])
        return len(rows)


# ---------------------------------------------------------------------------- commands


def _check_size(fleet: Fleet, name: str, size: int) -> None:
    if size == 0:
        raise FleetError("invalid", f"{name}: the file is empty; nothing to push")
    if size > fleet.config.max_upload_mb * 2**20:
        raise FleetError(
            "invalid",
            f"{name}: {size} bytes is more than this fleet takes "
            f"({fleet.config.max_upload_mb} MB, max_upload_mb in its config)",
        )


def upload_url(fleet: Fleet, req: api.UploadUrlRequest) -> api.UploadUrlResult:
    _check_size(fleet, req.name, req.size)
    upload_id = uuid.uuid4().hex
    # A declared digest the server will check: the bytes can only be those, so they go
    # straight to their content address (no staged copy to read back and copy over).
    direct = req.sha256 is not None and fleet.blobs.checksums
    key = blob_key(req.sha256) if direct and req.sha256 else upload_key(upload_id)
    expiry = fleet.config.s3.url_expiry_s
    fleet.store.add_upload(upload_id, key, req.size, now_ns() + expiry * 10**9)
    url, headers = fleet.blobs.put_url(key, req.sha256 if direct else None)
    if req.kind == "model":
        _start_warm(fleet, upload_id, req.name, req.size)
    return api.UploadUrlResult(upload_id=upload_id, url=url, expires_s=expiry, headers=headers)


def commit(fleet: Fleet, req: api.CommitRequest) -> api.CommitResult:
    upload = fleet.store.take_upload(req.upload_id)
    with fleet.warm_lock:
        warm = fleet.warm.pop(req.upload_id, None)
    direct = upload["key"].startswith(BLOB_PREFIX)
    try:
        _check_size(fleet, req.name, req.size)  # the inspecting child is told to take that many
        t0 = time.perf_counter()
        if direct:
            _verify_stored(fleet, req, upload["key"])
        else:  # nothing there, or not all of it: said before anything is read
            _verify(req, fleet.blobs.stat(upload["key"])[0], req.sha256)
        head_s = time.perf_counter() - t0
        if req.kind == "model":
            # The inspecting child (started with the upload URL, else now) downloads the
            # bytes itself, hashes them as they come and loads them: one read verifies and
            # inspects, and no byte passes through this process.
            with _inspection(fleet, req, warm) as inspection:
                warm = None
                with fleet.warm_lock:
                    fleet.exiting = [i for i in fleet.exiting if not i.child.reaped.is_set()]
                    fleet.exiting.append(inspection)
                fetched = _fetch(inspection, fleet.blobs.get_url(upload["key"]), req)
            size, sha256 = fetched.size, fetched.sha256 or ""
            read_s, inspect_s = fetched.read_s, fetched.load_s
            _verify(req, size, sha256)
            assert fetched.signature is not None  # the bytes were those declared: inspected
            signature = fetched.signature.model_dump(mode="json")
            t1 = time.perf_counter()
            _copy_if_missing(fleet, upload["key"], sha256, direct)
            copy_s = time.perf_counter() - t1
        else:
            with tempfile.TemporaryDirectory(dir=fleet.config.work_dir) as tmp:
                local = Path(tmp) / f"{req.name}.py"
                size, sha256 = fleet.blobs.fetch(upload["key"], local)
                read_s = time.perf_counter() - t0 - head_s
                _verify(req, size, sha256)
                # The server-side copy runs while the script is checked (S3's work beside ours);
                # the check inside the commit's transaction below guarantees every row's blob.
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    early = pool.submit(_copy_if_missing, fleet, upload["key"], sha256, direct)
                    try:
                        signature = _script_signature(req, local)
                        inspect_s = time.perf_counter() - t0 - head_s - read_s
                    except FleetError:
                        with contextlib.suppress(FleetError):
                            early.result()
                        _drop_unused(fleet, sha256)
                        raise
                    early.result()
                    copy_s = time.perf_counter() - t0 - head_s - read_s - inspect_s
        # The blob's last check and the row commit in one transaction: a delete (or a refused
        # commit's cleanup), in this fleet process or another, never removes bytes between them.
        row, created = fleet.store.add_resource(
            req.name,
            req.kind,
            sha256,
            size,
            req.note,
            req.author,
            signature,
            ensure_blob=functools.partial(_copy_if_missing, fleet, upload["key"], sha256, direct),
        )
    except BaseException:
        if direct:  # refused: the bytes PUT to their address go, unless a version has them
            _drop_unused(fleet, upload["key"].removeprefix(BLOB_PREFIX))
        raise
    finally:
        if warm is not None:  # not a model after all, or refused before reading it
            warm[1].__exit__(None, None, None)
        if not direct:
            fleet.blobs.remove(upload["key"])  # committed or refused: the staged copy goes
    log.info(
        "%s %s@%d sha256 %s (%d bytes, %s; HEAD %.3f s, read %.3f s, inspected %.3f s more, "
        "copy %.3f s more, whole %.3f s)",
        "committed" if created else "unchanged",
        row["name"],
        row["version"],
        sha256[:12],
        size,
        "checked by S3 at its address" if direct else "staged",
        head_s,
        read_s,
        inspect_s,
        copy_s,
        time.perf_counter() - t0,
    )
    return api.CommitResult(resource=fleet.resource_view(row), created=created)


# The inspecting child runs at the fleet's own priority: on the cloud side the push's user
# waits for it, and no live model shares the host (an edge box's trials run lower, CHILD_NICE).
INSPECT_NICE = 0


def _new_inspection(name: str, size: int, timeout_s: float) -> FetchedInspection:
    return FetchedInspection(size, timeout_s, f"{name} (model)", nice=INSPECT_NICE)


def _start_warm(fleet: Fleet, upload_id: str, name: str, size: int) -> None:
    """At most `workers` wait at once (each is a Python process): beyond, the oldest goes and
    its commit starts a child of its own, as one does after a fleet restart."""
    # Waiting for the upload is no progress: the URL's life bounds it, the work's timeout
    # replaces it when the commit comes (`retime`).
    idle_s = fleet.config.s3.url_expiry_s + UPLOAD_GRACE_S
    inspection = _new_inspection(name, size, idle_s)
    with fleet.warm_lock:
        fleet.warm[upload_id] = (name, inspection)
        extra = list(fleet.warm)[: max(0, len(fleet.warm) - fleet.config.workers)]
    for old in extra:
        _close_warm(fleet, old)


def _close_warm(fleet: Fleet, upload_id: str) -> None:
    with fleet.warm_lock:
        entry = fleet.warm.pop(upload_id, None)
    if entry is not None:
        entry[1].__exit__(None, None, None)


def _inspection(
    fleet: Fleet, req: api.CommitRequest, warm: tuple[str, FetchedInspection] | None
) -> FetchedInspection:
    """The child started for this upload if it still waits for these bytes, else a new one."""
    timeout_s = fleet.config.inspect_timeout_s
    if warm is not None:
        name, inspection = warm
        if name == req.name and inspection.size == req.size and inspection.alive():
            inspection.retime(timeout_s)
            return inspection
        inspection.__exit__(None, None, None)
    return _new_inspection(req.name, req.size, timeout_s)


def _copy_if_missing(fleet: Fleet, staged: str, sha256: str, direct: bool = False) -> None:
    if fleet.blobs.exists(blob_key(sha256)):
        return
    if direct:  # PUT to its address, removed since (a delete of the last version that had it)
        raise FleetError(
            "not_found", f"the uploaded bytes of sha256 {sha256} were removed meanwhile; push again"
        )
    fleet.blobs.copy(staged, blob_key(sha256))


def _verify_stored(fleet: Fleet, req: api.CommitRequest, key: str) -> None:
    """Before reading it: the size, and the digest the server checked the bytes against when
    it took them (the read that follows, into the inspection, checks it once more)."""
    size, checksum = fleet.blobs.stat(key)
    if key != blob_key(req.sha256):
        raise FleetError(
            "digest_mismatch",
            f"{req.name}: the upload URL was given for sha256 {key.removeprefix(BLOB_PREFIX)}, "
            f"the commit declares {req.sha256}: push again",
        )
    _verify(req, size, checksum or req.sha256)


def _drop_unused(fleet: Fleet, sha256: str) -> None:
    """A refused upload's early copy goes, unless a present version has the same bytes."""
    fleet.store.drop_blob_if_unused(sha256, lambda sha: fleet.blobs.remove(blob_key(sha)))


def _verify(req: api.CommitRequest, size: int, sha256: str) -> None:
    if size == 0:
        raise FleetError("invalid", f"{req.name}: the file is empty; nothing to push")
    if size != req.size:
        raise FleetError(
            "size_mismatch",
            f"{req.name}: {size} bytes arrived, {req.size} were declared: the upload was cut "
            "short or the file changed meanwhile; push again",
        )
    if sha256 != req.sha256:
        raise FleetError(
            "digest_mismatch",
            f"{req.name}: the uploaded bytes have sha256 {sha256}, not the declared {req.sha256}: "
            "the file changed during the push or the upload was altered; push again",
        )


def _fetch(inspection: FetchedInspection, url: str, req: api.CommitRequest) -> Fetched:
    try:
        return inspection.fetch(url, req.sha256)
    except ModelError as exc:
        raise FleetError("invalid_model", str(exc)) from None


def _script_signature(req: api.CommitRequest, local: Path) -> dict[str, Any]:
    origin = f"{req.name} ({req.kind})"
    try:
        return inspect_script(local, origin=origin).model_dump(mode="json")
    except EdgefleetError as exc:
        raise FleetError("invalid_script", str(exc).replace(str(local), origin)) from None


def deployed_of(counts: dict[str, int], name: str) -> list[str]:
    """`name@N (k)`: the versions of `name` in nodes' latest desired states, and on how many."""
    refs = [(ref, n) for ref, n in counts.items() if ref.rpartition("@")[0] == name]
    refs.sort(key=lambda item: int(item[0].rpartition("@")[2]))
    return [f"{ref} ({n})" for ref, n in refs]


def list_resources(fleet: Fleet, req: api.ListRequest) -> api.ListResult:
    out = []
    counts = fleet.store.deployed()
    for name in fleet.store.resource_names(req.kind):
        versions = fleet.store.versions(name)
        active = [r for r in versions if r["archived_ns"] is None]
        latest = (active or versions)[-1]
        out.append(
            api.ResourceSummary(
                name=name,
                latest=latest["version"],
                versions=len(versions),
                kind=latest["kind"],
                size=latest["size"],
                created=iso(latest["created_ns"]),
                deployed=deployed_of(counts, name),
            )
        )
    return api.ListResult(resources=out)


def show(fleet: Fleet, req: api.RefRequest) -> api.ShowResult:
    name, version = api.split_ref(req.ref)
    row = fleet.store.resource(name, version)
    versions = [
        api.VersionBrief(
            version=r["version"],
            sha256=r["sha256"],
            size=r["size"],
            created=iso(r["created_ns"]),
            author=r["author"] or "",
            note=r["note"] or "",
            archived=iso(r["archived_ns"]) if r["archived_ns"] else None,
        )
        for r in fleet.store.versions(name)
    ]
    return api.ShowResult(resource=fleet.resource_view(row), versions=versions)


def download_url(fleet: Fleet, req: api.DownloadUrlRequest) -> api.DownloadUrlResult:
    name, version = api.split_ref(req.ref)
    row = fleet.store.resource(name, version)
    ref = f"{row['name']}@{row['version']}"
    if req.site is not None and ref not in fleet.store.pinned_for(req.site):
        raise FleetError(
            "not_allowed", f"no desired state of site {req.site} names {ref}: not its to download"
        )
    return api.DownloadUrlResult(
        ref=ref,
        url=fleet.blobs.get_url(blob_key(row["sha256"])),
        sha256=row["sha256"],
        size=row["size"],
        expires_s=fleet.config.s3.url_expiry_s,
    )


def _exact(ref: str, verb: str) -> tuple[str, int]:
    name, version = api.split_ref(ref)
    if version is None:
        raise FleetError(
            "invalid", f"{verb} needs one version: {name}@N (edgefleet library show {name})"
        )
    return name, version


def archive(fleet: Fleet, req: api.ArchiveRequest) -> api.ArchiveResult:
    name, version = _exact(req.ref, "archive")
    row = fleet.store.archive(name, version, req.author)
    return api.ArchiveResult(resource=fleet.resource_view(row))


def delete(fleet: Fleet, req: api.RefRequest) -> api.DeleteResult:
    name, version = _exact(req.ref, "delete")
    _row, last_copy = fleet.store.delete(
        name, version, lambda sha: fleet.blobs.remove(blob_key(sha))
    )
    return api.DeleteResult(ref=f"{name}@{version}", blob_removed=last_copy)
