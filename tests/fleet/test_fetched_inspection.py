"""The inspecting child that downloads a model itself (FetchedInspection), against a real S3
server: the plain load's signature with what was read, no load of bytes that are not those
declared, the timeout, a child left early, a child that is ready before its input comes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from edgefleet.locals3 import LocalS3
from services.inference.signature import FetchedInspection, read_signature
from shared.errors import ModelError
from tests.inference import models


@pytest.fixture
def store(s3: LocalS3, bucket: str) -> Iterator[tuple[Minio, str]]:
    client = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
    client.make_bucket(bucket)
    yield client, bucket


@contextlib.contextmanager
def inspecting(size: int, timeout_s: float, origin: str) -> Iterator[FetchedInspection]:
    """A FetchedInspection, its child waited for at the end (after a verdict the child is
    reaped in the background: its exit is not the caller's wait)."""
    with FetchedInspection(size, timeout_s, origin) as inspection:
        yield inspection
    assert inspection.child.reaped.wait(30)


def put(store: tuple[Minio, str], key: str, data: bytes) -> str:
    client, bucket = store
    client.put_object(bucket, key, io.BytesIO(data), len(data))
    return client.presigned_get_object(bucket, key)


def test_the_child_reads_hashes_and_inspects_what_s3_holds(
    store: tuple[Minio, str], tmp_path: Path
) -> None:
    data = models.heavy(tmp_path / "m.onnx").read_bytes()
    url = put(store, "m", data)
    sha256 = hashlib.sha256(data).hexdigest()
    with inspecting(len(data), 60, "m.onnx") as inspection:
        got = inspection.fetch(url, sha256)
    assert (got.size, got.sha256) == (len(data), sha256)
    assert got.signature == read_signature(data, "m.onnx")
    assert got.read_s > 0 and got.load_s > 0


def test_bytes_that_are_not_those_declared_are_not_loaded(
    store: tuple[Minio, str], tmp_path: Path
) -> None:
    data = models.hanging(tmp_path / "hangs.onnx").read_bytes()  # loading it would time out
    url = put(store, "m", data)
    with inspecting(len(data), 5, "m.onnx") as inspection:
        got = inspection.fetch(url, "0" * 64)
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.signature is None


def test_an_object_of_another_size_is_not_read(store: tuple[Minio, str], tmp_path: Path) -> None:
    data = models.isolation_forest(tmp_path / "if.onnx").read_bytes()
    url = put(store, "m", data)
    with inspecting(len(data) - 1, 30, "m.onnx") as inspection:
        got = inspection.fetch(url, None)
    assert (got.size, got.sha256, got.signature) == (len(data), None, None)


def test_nothing_at_the_url_is_an_error_that_says_so(store: tuple[Minio, str]) -> None:
    client, bucket = store
    with inspecting(10, 30, "m.onnx") as inspection:  # noqa: SIM117
        with pytest.raises(ModelError, match="S3 refused the download: HTTP 404"):
            inspection.fetch(client.presigned_get_object(bucket, "nothing"), None)


def test_a_model_that_hangs_is_refused_within_the_timeout(
    store: tuple[Minio, str], tmp_path: Path
) -> None:
    data = models.hanging(tmp_path / "hangs.onnx").read_bytes()
    url = put(store, "m", data)
    with inspecting(len(data), 2, "hangs.onnx") as inspection:  # noqa: SIM117
        with pytest.raises(ModelError, match=r"hangs\.onnx did not finish .* within 2 s"):
            inspection.fetch(url, hashlib.sha256(data).hexdigest())


def test_a_child_left_before_its_input_is_killed_and_reaped() -> None:
    with inspecting(100, 30, "m.onnx") as inspection:
        pass
    assert inspection.child.proc.returncode is not None


def test_the_child_imports_onnxruntime_before_its_input_comes() -> None:
    """Started with the upload URL, it must be ready when the upload ends: its header is sent
    at once, not kept in the pipe's buffer until the input is written."""
    with inspecting(100, 60, "m.onnx") as inspection:
        maps = Path(f"/proc/{inspection.child.proc.pid}/maps")
        deadline = time.monotonic() + 60
        while "onnxruntime" not in maps.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "onnxruntime" in maps.read_text()
