"""Two fleet processes on one SQLite file and one bucket: blobs are never removed under a
committed version. The blob's last check before a commit, a delete's removal and a refused
commit's cleanup run inside a database write transaction, the lock both processes share."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgefleet.fleet import api, library
from edgefleet.fleet.blobs import blob_key
from edgefleet.fleet.client import put_file
from edgefleet.fleet.store import Store
from edgefleet.locals3 import LocalS3
from tests.fleet.conftest import fleet_of
from tests.fleet.test_library import objects
from tests.inference import models

# Another process asks for the write lock without waiting.
LOCK_PROBE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    db.execute("BEGIN IMMEDIATE")
    print("free")
except sqlite3.OperationalError:
    print("locked")
"""


def test_blob_actions_hold_the_lock_other_processes_wait_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleet.db")
    seen: list[str] = []

    def probe(*_: Any) -> None:
        proc = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, str(store.path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        seen.append(proc.stdout.strip() or proc.stderr[-200:])

    probe()  # nothing held: the other process gets the lock
    store.add_resource("m", "model", "a" * 64, 3, "", "", {}, ensure_blob=probe)
    assert store.drop_blob_if_unused("b" * 64, probe)
    assert not store.drop_blob_if_unused("a" * 64, probe)  # a present version holds it
    _, last = store.delete("m", 1, probe)
    assert last
    assert seen == ["free", "locked", "locked", "locked"]


def push(fleet: library.Fleet, path: Path, name: str) -> api.CommitResult:
    data = path.read_bytes()
    upload = library.upload_url(fleet, api.UploadUrlRequest(name=name, size=len(data)))
    sha256 = put_file(upload.url, path, len(data))
    assert sha256 == hashlib.sha256(data).hexdigest()
    request = api.CommitRequest(
        upload_id=upload.upload_id, name=name, kind="model", sha256=sha256, size=len(data)
    )
    return library.commit(fleet, request)


def test_two_fleets_on_one_store_keep_shared_blobs(
    fleet_config: dict[str, Any], s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    one, two = (library.Fleet.open(fleet_of(fleet_config)) for _ in range(2))
    model = models.mlp(tmp_path / "m.onnx")
    a = push(one, model, "a")
    b = push(two, model, "b")  # the same bytes through the other fleet: one blob
    assert a.resource.sha256 == b.resource.sha256
    key = blob_key(a.resource.sha256)
    assert objects(s3, bucket) == [key]

    gone = library.delete(one, api.RefRequest(ref="a@1"))
    assert not gone.blob_removed and objects(s3, bucket) == [
        key
    ]  # b@1, committed by the other, holds it
    gone = library.delete(two, api.RefRequest(ref="b@1"))
    assert gone.blob_removed and objects(s3, bucket) == []
    # pushed again after the removal: the commit puts the blob back before the row
    again = push(one, model, "a")
    assert again.created and objects(s3, bucket) == [key]
