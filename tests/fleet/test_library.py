"""The library against a real SeaweedFS, a real mosquitto and real SQLite files."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from minio import Minio
from onnx import TensorProto, helper

from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.errors import FleetError
from edgefleet.locals3 import LocalS3
from tests.inference import models


def objects(s3: LocalS3, bucket: str, prefix: str = "") -> list[str]:
    client = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
    return sorted(o.object_name for o in client.list_objects(bucket, prefix, recursive=True))


async def refused(coro: Any) -> FleetError:
    with pytest.raises(FleetError) as info:
        await coro
    return info.value


def unloadable(path: Path) -> Path:
    """A well-formed ONNX file onnxruntime refuses: an operator that does not exist."""
    node = helper.make_node("NoSuchOperator", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


async def test_push_show_pull_and_identical_bytes(
    fleet: FleetClient, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    path = models.isolation_forest(tmp_path / "m.onnx")
    first = await fleet.push(path, "pump-ae", "model", "first")
    assert first["created"] and first["resource"]["ref"] == "pump-ae@1"
    again = await fleet.push(path, "pump-ae", "model", "again")
    assert not again["created"] and again["resource"]["ref"] == "pump-ae@1"
    second = await fleet.push(
        models.isolation_forest(tmp_path / "m2.onnx", seed=1), "pump-ae", "model"
    )
    assert second["resource"]["ref"] == "pump-ae@2"
    # the same bytes under another name: a new resource, one blob
    other = await fleet.push(path, "pump-ae-copy", "model")
    assert other["resource"]["sha256"] == first["resource"]["sha256"]
    assert len(objects(s3, bucket, "blobs/")) == 2
    assert objects(s3, bucket, "uploads/") == []  # staged copies go once committed

    listed = (await fleet.call("library.list"))["resources"]
    row = next(r for r in listed if r["name"] == "pump-ae")
    assert (row["latest"], row["versions"], row["kind"], row["deployed"]) == (2, 2, "model", [])
    shown = await fleet.call("library.show", {"ref": "pump-ae@1"})
    sig = shown["resource"]["signature"]
    assert sig["features"] == models.FEATURES
    assert [i["name"] for i in sig["inputs"]] == ["X"]
    assert {o["name"] for o in sig["outputs"]} == {"label", "scores"}
    assert set(sig["train_stats"]) == set(models.FEATURES)
    assert shown["resource"]["note"] == "first"
    assert [v["version"] for v in shown["versions"]] == [1, 2]

    out = tmp_path / "pulled.onnx"
    await fleet.pull("pump-ae@1", out)
    assert out.read_bytes() == path.read_bytes()


async def test_scripts(fleet: FleetClient, tmp_path: Path) -> None:
    script = tmp_path / "scaler.py"
    script.write_text("def preprocess(x):\n    return x * 2\n")
    result = await fleet.push(script, "scaler", "script")
    assert result["resource"]["signature"]["functions"] == ["preprocess"]
    # one name is one kind
    error = await refused(fleet.push(models.mlp(tmp_path / "m.onnx"), "scaler", "model"))
    assert error.code == "conflict"


async def test_every_refusal_stores_nothing(
    fleet: FleetClient, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    good = models.mlp(tmp_path / "good.onnx")
    data = good.read_bytes()
    cases: list[tuple[str, bytes, str, str, str]] = [
        # (what, bytes, kind, expected code, words in the message)
        ("not onnx", b"name: pump\nalign: {}\n", "model", "invalid_model", "not a valid ONNX"),
        ("truncated", data[: len(data) // 2], "model", "invalid_model", "not a valid ONNX"),
        ("corrupt", bytes(range(256)) * 64, "model", "invalid_model", "not a valid ONNX"),
        (
            "won't load",
            unloadable(tmp_path / "u.onnx").read_bytes(),
            "model",
            "invalid_model",
            "NoSuchOperator",
        ),
        ("no compile", b"def preprocess(x)\n    return x\n", "script", "invalid_script", "compile"),
        (
            "defines nothing",
            b"def helper(x):\n    return x\n",
            "script",
            "invalid_script",
            "preprocess",
        ),
    ]
    for what, blob, kind, code, words in cases:
        path = tmp_path / f"case.{'onnx' if kind == 'model' else 'py'}"
        path.write_bytes(blob)
        error = await refused(fleet.push(path, "case", kind))
        assert (error.code, words in error.message) == (code, True), (what, error.message)

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    error = await refused(fleet.push(empty, "case", "model"))
    assert error.code == "invalid" and "empty" in error.message
    for bad in ("pump ae", "-pump", "pump@3", "a/b", "x" * 65, ""):
        error = await refused(fleet.push(good, bad, "model"))
        assert error.code == "invalid" and "not a valid name" in error.message, bad

    # uploaded bytes that differ from the declared digest, or from the declared size
    for field, code in (("sha256", "digest_mismatch"), ("size", "size_mismatch")):
        upload = await fleet.call("library.upload_url", {"name": "case", "size": len(data)})
        put(upload["url"], data)
        declared = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        declared[field] = "0" * 64 if field == "sha256" else len(data) + 1
        commit = {"upload_id": upload["upload_id"], "name": "case", "kind": "model", **declared}
        error = await refused(fleet.call("library.commit", commit))
        assert error.code == code
        again = await refused(fleet.call("library.commit", commit))  # an upload commits once
        assert again.code == "not_found"

    assert (await fleet.call("library.list"))["resources"] == []
    assert objects(s3, bucket) == []


def put(url: str, data: bytes, send: int | None = None) -> None:
    """PUT `data` to a presigned URL; with `send`, stop after that many bytes and hang up."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    conn.putrequest("PUT", f"{parts.path}?{parts.query}", skip_accept_encoding=True)
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[:send] if send is not None else data)
    if send is None:
        assert conn.getresponse().status == 200
    conn.close()


async def test_interrupted_upload_leaves_no_version(
    fleet: FleetClient, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    data = models.mlp(tmp_path / "m.onnx", hidden=2048).read_bytes()
    upload = await fleet.call("library.upload_url", {"name": "half", "size": len(data)})
    put(upload["url"], data, send=len(data) // 2)
    commit = {
        "upload_id": upload["upload_id"],
        "name": "half",
        "kind": "model",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    error = await refused(fleet.call("library.commit", commit))
    assert error.code in ("not_found", "size_mismatch")
    assert (await fleet.call("library.list"))["resources"] == []
    assert objects(s3, bucket) == []


async def test_two_pushes_at_once_get_distinct_versions(fleet: FleetClient, tmp_path: Path) -> None:
    paths = [models.mlp(tmp_path / f"m{i}.onnx", seed=i) for i in range(4)]
    results = await asyncio.gather(*(fleet.push(p, "pump-ae", "model") for p in paths))
    versions = sorted(r["resource"]["version"] for r in results)
    assert versions == [1, 2, 3, 4]
    by_version = {r["resource"]["version"]: r["resource"]["sha256"] for r in results}
    for version, sha in by_version.items():
        shown = await fleet.call("library.show", {"ref": f"pump-ae@{version}"})
        assert shown["resource"]["sha256"] == sha
    # identical bytes at once: one version
    same = await asyncio.gather(*(fleet.push(paths[0], "twin", "model") for _ in range(3)))
    assert {r["resource"]["ref"] for r in same} == {"twin@1"}
    assert sum(r["created"] for r in same) == 1


async def test_archive_and_delete(
    fleet: FleetClient, s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    a = models.mlp(tmp_path / "a.onnx", seed=1)
    b = models.mlp(tmp_path / "b.onnx", seed=2)
    await fleet.push(a, "m", "model")
    await fleet.push(b, "m", "model")
    archived = await fleet.call("library.archive", {"ref": "m@2", "author": "ana@laptop"})
    assert archived["resource"]["archived"] and archived["resource"]["archived_by"] == "ana@laptop"
    shown = (await fleet.call("library.show", {"ref": "m@2"}))["resource"]
    assert shown["archived_by"] == "ana@laptop"
    assert (await fleet.call("library.show", {"ref": "m@1"}))["resource"]["archived_by"] is None
    listed = (await fleet.call("library.list"))["resources"]
    assert listed[0]["latest"] == 1  # the latest active version
    error = await refused(fleet.call("library.archive", {"ref": "m"}))
    assert error.code == "invalid" and "m@N" in error.message

    deleted = await fleet.call("library.delete", {"ref": "m@2"})
    assert deleted["blob_removed"]
    assert (await refused(fleet.call("library.show", {"ref": "m@2"}))).code == "not_found"
    # a number is never given twice: the next push is m@3
    c = models.mlp(tmp_path / "c.onnx", seed=3)
    assert (await fleet.push(c, "m", "model"))["resource"]["ref"] == "m@3"
    assert len(objects(s3, bucket, "blobs/")) == 2


async def test_malformed_and_unknown_commands_are_answered(fleet: FleetClient) -> None:
    answer = await fleet.requester.request(fleet.topic, {"v": 1, "cmd": "library.nope"}, timeout=5)
    assert (
        answer["error"]["code"] == "unknown_command"
        and "library.list" in answer["error"]["message"]
    )
    answer = await fleet.requester.request(fleet.topic, {"v": 7, "cmd": "library.list"}, timeout=5)
    assert answer["ok"] is False and answer["error"]["code"] == "invalid"
    answer = await fleet.requester.request(
        fleet.topic, {"v": 1, "cmd": "library.show", "args": {"ref": "x", "extra": 1}}, timeout=5
    )
    assert (
        answer["error"]["code"] == "invalid" and "extra: unknown key" in answer["error"]["message"]
    )


async def test_uploads_never_committed_are_swept(
    fleet_config: dict[str, Any], s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    from edgefleet.fleet import api, library
    from shared.messages import now_ns
    from tests.fleet.conftest import fleet_of

    store = library.Fleet.open(fleet_of(fleet_config))
    upload = library.upload_url(store, api.UploadUrlRequest(name="left", size=3))
    put(upload.url, b"abc")
    assert objects(s3, bucket, "uploads/") == [f"uploads/{upload.upload_id}"]
    assert store.sweep() == 0  # its URL has not expired yet
    assert store.sweep(now_ns() + 2 * 3600 * 10**9) == 1
    assert objects(s3, bucket) == []
