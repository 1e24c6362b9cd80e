"""AWS Signature V4 presigned URLs that sign request headers besides `host`.

The minio client presigns `host` only; a PUT URL that also signs `x-amz-checksum-sha256` binds
the upload to one digest: the client must send that header, and an S3 server that checks
checksums (AWS, MinIO, SeaweedFS) refuses bytes that do not match it. With no extra headers
the URL is the one the minio client makes (a test compares them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

CHECKSUM = "x-amz-checksum-sha256"  # the header that binds an upload to one sha256


def b64_sha256(hex_digest: str) -> str:
    """The `x-amz-checksum-sha256` form of a hex digest."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def hex_sha256(b64_digest: str) -> str:
    """The hex digest of an `x-amz-checksum-sha256` value."""
    return base64.b64decode(b64_digest).hex()


def _uri(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def presign_v4(
    method: str,
    *,
    scheme: str,
    host: str,
    path: str,
    region: str,
    access_key: str,
    secret_key: str,
    expires_s: int,
    headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> str:
    """The presigned URL of `method path` on `host`; `headers` (name: value) are signed with
    `host` and must be sent exactly so by whoever uses the URL."""
    date = (date or datetime.now(UTC)).astimezone(UTC)
    amz_date, day = date.strftime("%Y%m%dT%H%M%SZ"), date.strftime("%Y%m%d")
    scope = f"{day}/{region}/s3/aws4_request"
    signed = {"host": host, **{k.lower(): v.strip() for k, v in (headers or {}).items()}}
    names = sorted(signed)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_s),
        "X-Amz-SignedHeaders": ";".join(names),
    }
    canonical_query = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in sorted(query.items()))
    canonical_path = _uri(path, safe="-_.~/")
    canonical = "\n".join(
        [
            method,
            canonical_path,
            canonical_query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            "UNSIGNED-PAYLOAD",
        ]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{secret_key}".encode(), day)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{scheme}://{host}{canonical_path}?{canonical_query}&X-Amz-Signature={signature}"
