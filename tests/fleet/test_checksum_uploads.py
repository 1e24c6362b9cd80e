"""Uploads whose digest is declared up front: signed into the URL, checked by the S3 server
(a real SeaweedFS), PUT straight to the content address; and the inspecting child started when
the URL is handed out."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from edgefleet.fleet import api, library
from edgefleet.fleet.blobs import blob_key
from edgefleet.fleet.client import put_file
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.presign import presign_v4
from edgefleet.locals3 import LocalS3
from shared.errors import ProtocolError
from shared.messages import now_ns
from tests.fleet.conftest import fleet_of
from tests.fleet.test_library import objects, put, unloadable
from tests.inference import models


def test_presign_without_extra_headers_is_the_minio_clients() -> None:
    client = Minio("127.0.0.1:9000", "key", "secret", secure=False, region="us-east-1")
    date = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    ours = presign_v4(
        "PUT",
        scheme="http",
        host="127.0.0.1:9000",
        path="/bucket/uploads/a b+c",
        region="us-east-1",
        access_key="key",
        secret_key="secret",
        expires_s=900,
        date=date,
    )
    theirs = client.get_presigned_url(
        "PUT", "bucket", "uploads/a b+c", expires=timedelta(seconds=900), request_date=date
    )
    assert ours == theirs
    signed = presign_v4(
        "PUT",
        scheme="http",
        host="127.0.0.1:9000",
        path="/bucket/k",
        region="us-east-1",
        access_key="key",
        secret_key="secret",
        expires_s=900,
        headers={"X-Amz-Checksum-Sha256": "abc="},
        date=date,
    )
    assert "X-Amz-SignedHeaders=host%3Bx-amz-checksum-sha256&" in signed


@pytest.fixture
def fleet(fleet_config: dict[str, Any]) -> Iterator[library.Fleet]:
    """The fleet's handlers in this process (no transport): what they leave is inspected."""
    fleet = library.Fleet.open(fleet_of(fleet_config))
    yield fleet
    fleet.close()


def upload(fleet: library.Fleet, data: bytes, **extra: Any) -> api.UploadUrlResult:
    request = {"name": "m", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return library.upload_url(fleet, api.UploadUrlRequest.model_validate({**request, **extra}))


def commit(fleet: library.Fleet, up: api.UploadUrlResult, data: bytes, **extra: Any) -> Any:
    request = {
        "upload_id": up.upload_id,
        "name": "m",
        "kind": "model",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    return library.commit(fleet, api.CommitRequest.model_validate({**request, **extra}))


def refusal(fn: Any, *args: Any, **kwargs: Any) -> FleetError:
    with pytest.raises(FleetError) as info:
        fn(*args, **kwargs)
    return info.value


def test_the_server_checks_the_signed_digest(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    assert fleet.blobs.checksums  # SeaweedFS refused the probe's wrong checksum
    assert objects(s3, bucket) == []  # and the probe left nothing
    path = models.mlp(tmp_path / "m.onnx")
    data = path.read_bytes()
    up = upload(fleet, data)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert up.headers == {"x-amz-checksum-sha256": digest}
    other = tmp_path / "other.onnx"
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit differs, same size
    with pytest.raises(ProtocolError, match="not those whose sha256 was declared"):
        put_file(up.url, other, len(data), None, up.headers)
    with pytest.raises(AssertionError):  # the URL is only good with the signed header
        put(up.url, data)
    assert objects(s3, bucket) == []
    assert refusal(commit, fleet, up, data).code == "not_found"
    assert objects(s3, bucket) == [] and fleet.store.resource_names(None) == []


def test_declared_uploads_go_to_their_address(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    data = models.mlp(tmp_path / "m.onnx").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    up = upload(fleet, data)
    assert put_file(up.url, tmp_path / "m.onnx", len(data), None, up.headers) == sha256
    assert objects(s3, bucket) == [blob_key(sha256)]  # nothing staged
    result = commit(fleet, up, data)
    assert result.created and result.resource.signature["sha256"] == sha256
    assert objects(s3, bucket) == [blob_key(sha256)]
    # the same bytes again: the version there is, the blob stays
    again = upload(fleet, data)
    put_file(again.url, tmp_path / "m.onnx", len(data), None, again.headers)
    assert not commit(fleet, again, data).created
    assert objects(s3, bucket) == [blob_key(sha256)]


def test_declared_refusals_leave_no_blob(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    data = unloadable(tmp_path / "u.onnx").read_bytes()
    up = upload(fleet, data)
    put_file(up.url, tmp_path / "u.onnx", len(data), None, up.headers)
    error = refusal(commit, fleet, up, data)
    assert error.code == "invalid_model" and "NoSuchOperator" in error.message
    assert objects(s3, bucket) == []

    good = models.mlp(tmp_path / "m.onnx").read_bytes()
    up = upload(fleet, good)
    put_file(up.url, tmp_path / "m.onnx", len(good), None, up.headers)
    # a commit that declares other bytes than the URL was signed for
    error = refusal(commit, fleet, up, good, sha256="0" * 64)
    assert error.code == "digest_mismatch"
    up = upload(fleet, good)
    put_file(up.url, tmp_path / "m.onnx", len(good), None, up.headers)
    assert refusal(commit, fleet, up, good, size=len(good) + 1).code == "size_mismatch"
    assert objects(s3, bucket) == [] and fleet.store.resource_names(None) == []


def test_declared_uploads_never_committed_are_swept_unless_a_version_has_them(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    kept = models.mlp(tmp_path / "k.onnx", seed=1).read_bytes()
    up = upload(fleet, kept)
    put_file(up.url, tmp_path / "k.onnx", len(kept), None, up.headers)
    commit(fleet, up, kept)
    left = models.mlp(tmp_path / "l.onnx", seed=2).read_bytes()
    for data, path in ((left, "l.onnx"), (kept, "k.onnx")):  # never committed
        up = upload(fleet, data)
        put_file(up.url, tmp_path / path, len(data), None, up.headers)
    assert len(objects(s3, bucket)) == 2
    assert fleet.sweep(now_ns() + 2 * 3600 * 10**9) == 2
    assert objects(s3, bucket) == [blob_key(hashlib.sha256(kept).hexdigest())]


def test_a_server_that_does_not_check_gets_staged_uploads(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    fleet.blobs.checksums = False  # what the probe finds on such a server
    data = models.mlp(tmp_path / "m.onnx").read_bytes()
    up = upload(fleet, data)
    assert up.headers == {}
    put_file(up.url, tmp_path / "m.onnx", len(data), None, up.headers)
    assert objects(s3, bucket) == [f"uploads/{up.upload_id}"]
    assert commit(fleet, up, data).created  # read back, verified, copied to its address
    assert objects(s3, bucket) == [blob_key(hashlib.sha256(data).hexdigest())]


def test_the_inspecting_child_starts_with_the_upload_url(
    fleet: library.Fleet, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    data = models.mlp(tmp_path / "m.onnx").read_bytes()
    up = upload(fleet, data, kind="model")
    name, warm = fleet.warm[up.upload_id]
    assert name == "m" and warm.alive()
    put_file(up.url, tmp_path / "m.onnx", len(data), None, up.headers)
    assert commit(fleet, up, data).created
    assert up.upload_id not in fleet.warm and warm.child.proc.returncode == 0  # it did the work

    # committed as something else, or never: the waiting child goes
    up = upload(fleet, b"def preprocess(x):\n    return x\n", kind="model")
    _, warm = fleet.warm[up.upload_id]
    script = tmp_path / "s.py"
    script.write_bytes(b"def preprocess(x):\n    return x\n")
    put_file(up.url, script, script.stat().st_size, None, up.headers)
    commit(fleet, up, script.read_bytes(), name="m-pre", kind="script")
    assert up.upload_id not in fleet.warm and warm.child.proc.returncode is not None
    up = upload(fleet, data, kind="model")
    _, warm = fleet.warm[up.upload_id]
    fleet.sweep(now_ns() + 2 * 3600 * 10**9)
    assert fleet.warm == {} and warm.child.proc.returncode is not None

    # at most `workers` wait at once: the oldest goes first
    ups = [upload(fleet, data, kind="model") for _ in range(fleet.config.workers + 1)]
    assert list(fleet.warm) == [u.upload_id for u in ups[1:]]
    waiting = [warm for _, warm in fleet.warm.values()]
    fleet.close()  # the service stopping
    assert fleet.warm == {} and all(w.child.proc.returncode is not None for w in waiting)
