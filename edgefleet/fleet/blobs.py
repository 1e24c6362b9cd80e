"""Blobs in S3 (any S3, through the minio client), content-addressed.

`blobs/sha256/{hex}` holds each content once. Where the S3 server checks the checksums it is
sent (probed at start: `checksums`), an upload whose digest is declared beforehand is PUT
straight to its content address with `x-amz-checksum-sha256` signed into the URL: the server
refuses any other bytes, and HEAD gives back the checksum it verified. Otherwise uploads land
under `uploads/{id}` (a key only the presigned PUT URL of that upload can write), are read back
in full to check size and sha256, and are copied server-side to their content address before
the version is committed. Either way a model is read once more, into the process that loads it.
Blobs never travel over MQTT: clients get short-lived presigned URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from edgefleet.fleet.config import S3Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.presign import CHECKSUM, b64_sha256, presign_v4

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# The answers of servers that checked a checksum and refused the bytes (AWS and MinIO:
# BadDigest or XAmzContentChecksumMismatch; SeaweedFS: BadDigest).
_CHECKSUM_REFUSALS = ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest")


BLOB_PREFIX = "blobs/sha256/"


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256}"


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
        self._secret = secret
        # Whether the server refuses bytes that differ from a signed checksum; probed by
        # `ensure_bucket` (detected, not assumed: some S3 servers ignore the header).
        self.checksums = False

    def ensure_bucket(self, timeout: float = 30.0) -> None:
        """Create the bucket if needed; waits for an S3 server that is still starting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.s3.bucket_exists(self.bucket):
                    self.s3.make_bucket(self.bucket)
                break
            except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise FleetError(
                        "storage", f"S3 at {self.config.endpoint} is not usable: {exc}"
                    ) from None
                log.info("S3 at %s not ready yet: %s", self.config.endpoint, exc)
                time.sleep(0.5)
        self.checksums = self._probe_checksums()

    def _probe_checksums(self) -> bool:
        """PUT a few bytes with a signed checksum that is not theirs: a server that checks
        refuses them; one that stores them does not check (and the probe object goes)."""
        key = upload_key(f"checksum-probe-{uuid.uuid4().hex}")
        body = b"edgefleet checksum probe"
        wrong = {CHECKSUM: b64_sha256(hashlib.sha256(b"not " + body).hexdigest())}
        url = self._presign("PUT", key, self.config.endpoint, wrong)
        try:
            response = urllib3.request(
                "PUT", url, body=body, headers=wrong, retries=False, timeout=10.0
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("S3 checksum probe failed (%s): uploads are read back to verify", exc)
            return False
        text = response.data.decode(errors="replace")
        if response.status < 300:
            self.remove(key)
        checks = response.status == 400 and any(code in text for code in _CHECKSUM_REFUSALS)
        log.info(
            "S3 at %s %s",
            self.config.endpoint,
            "checks sha256 checksums: uploads with a declared digest go to their content address"
            if checks
            else f"does not check checksums (HTTP {response.status}): uploads are read back",
        )
        return checks

    # ------------------------------------------------------------------ URLs

    def put_url(self, key: str, sha256: str | None = None) -> tuple[str, dict[str, str]]:
        """A presigned PUT and the headers its client must send: with `sha256`, the checksum
        is signed into the URL, so the server takes those bytes and no others."""
        if sha256 is None:
            url = self.presigner.presigned_put_object(self.bucket, key, expires=self.expiry)
            return url, {}
        headers = {CHECKSUM: b64_sha256(sha256)}
        host = self.config.public_endpoint or self.config.endpoint
        return self._presign("PUT", key, host, headers), headers

    def _presign(self, method: str, key: str, host: str, headers: dict[str, str]) -> str:
        return presign_v4(
            method,
            scheme="https" if self.config.secure else "http",
            host=host,
            path=f"/{self.bucket}/{key}",
            region=self.config.region,
            access_key=self.config.access_key_id(),
            secret_key=self._secret,
            expires_s=self.config.url_expiry_s,
            headers=headers,
        )

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

    def stat(self, key: str) -> tuple[int, str | None]:
        """The object's size and the sha256 (hex) the server verified when it was written, or
        None when the server keeps none for it."""
        try:
            obj = self.s3.stat_object(
                self.bucket, key, extra_headers={"x-amz-checksum-mode": "ENABLED"}
            )
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise FleetError(
                    "not_found", f"nothing was uploaded to {key}: PUT the file to the upload URL"
                ) from None
            raise _storage(exc) from None
        value = (obj.metadata or {}).get(CHECKSUM)
        try:
            checksum = base64.b64decode(value, validate=True).hex() if value else None
        except (binascii.Error, ValueError):
            checksum = None
        return obj.size or 0, checksum

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
