"""Blobs in S3 (any S3, through the minio client), content-addressed.

`blobs/sha256/{hex}` holds each content once; uploads land first under `uploads/{id}` (a key
only the presigned PUT URL of that upload can write), are read back in full to check size and
sha256 (the same read streams a model into the process that inspects it), and are copied
server-side to their content address before the version is committed.
Blobs never travel over MQTT: clients get short-lived presigned URLs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from edgefleet.fleet.config import S3Config
from edgefleet.fleet.errors import FleetError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


def _client(endpoint: str, config: S3Config, secret: str) -> Minio:
    # Short connect timeout and few retries: a command must fail in seconds with a reason,
    # not hang while S3 is down.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=16,
    )
    return Minio(
        endpoint,
        access_key=config.access_key_id(),
        secret_key=secret,
        secure=config.secure,
        region=config.region,
        http_client=http,
    )


class BlobStore:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.bucket = config.bucket
        secret = config.secret_key()
        self.s3 = _client(config.endpoint, config, secret)
        # Presigning is local computation (the region is given); the URL must name the host
        # the client reaches.
        self.presigner = _client(config.public_endpoint or config.endpoint, config, secret)
        self.expiry = timedelta(seconds=config.url_expiry_s)

    def ensure_bucket(self, timeout: float = 30.0) -> None:
        """Create the bucket if needed; waits for an S3 server that is still starting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.s3.bucket_exists(self.bucket):
                    self.s3.make_bucket(self.bucket)
                return
            except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise FleetError(
                        "storage", f"S3 at {self.config.endpoint} is not usable: {exc}"
                    ) from None
                log.info("S3 at %s not ready yet: %s", self.config.endpoint, exc)
                time.sleep(0.5)

    # ------------------------------------------------------------------ URLs

    def put_url(self, key: str) -> str:
        return self.presigner.presigned_put_object(self.bucket, key, expires=self.expiry)

    def get_url(self, key: str) -> str:
        return self.presigner.presigned_get_object(self.bucket, key, expires=self.expiry)

    # ------------------------------------------------------------------ objects

    def fetch(self, key: str, dest: Path) -> tuple[int, str]:
        """Stream an object to `dest`; return its size and sha256 as read."""
        with dest.open("wb") as out:
            return self.stream(key, out.write)

    def stream(self, key: str, sink: Callable[[bytes], object]) -> tuple[int, str]:
        """Hand an object's bytes to `sink` as they arrive; return its size and sha256 as read
        (hashed on the way: the one read that verifies it also feeds whoever inspects it)."""
        digest, size = hashlib.sha256(), 0
        try:
            response = self.s3.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise FleetError(
                    "not_found", f"nothing was uploaded to {key}: PUT the file to the upload URL"
                ) from None
            raise _storage(exc) from None
        try:
            for chunk in response.stream(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                sink(chunk)
        finally:
            response.close()
            response.release_conn()
        return size, digest.hexdigest()

    def read(self, key: str) -> bytes:
        try:
            response = self.s3.get_object(self.bucket, key)
        except S3Error as exc:
            raise _storage(exc) from None
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.s3.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise _storage(exc) from None

    def copy(self, source: str, dest: str) -> None:
        """Server-side copy (no bytes through the fleet)."""
        try:
            self.s3.copy_object(self.bucket, dest, CopySource(self.bucket, source))
        except S3Error as exc:
            raise _storage(exc) from None

    def remove(self, key: str) -> None:
        try:
            self.s3.remove_object(self.bucket, key)
        except S3Error as exc:
            log.warning("could not remove %s: %s", key, exc)


def _storage(exc: S3Error) -> FleetError:
    return FleetError("storage", f"S3 refused: {exc.code}: {exc.message}")
