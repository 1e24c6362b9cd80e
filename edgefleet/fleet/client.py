"""A client of the fleet: commands over MQTT v5 request/response, blobs over presigned URLs.

The command-line tools use it; so can any Python program. Transfers stream the file in 1 MB
chunks (stdlib http.client) and compute the sha256 while they go, so a push reads its file once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import getpass
import hashlib
import os
import queue
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from edgefleet.fleet.address import ENV_ADDRESS, FleetBroker
from edgefleet.fleet.errors import FleetError, FleetUnreachable
from edgefleet.fleet.presign import CHECKSUM, hex_sha256
from shared.codec import Encoding
from shared.config import BrokerConfig
from shared.errors import ConfigError, ProtocolError
from shared.messages import FleetCommand
from shared.mqtt import NotConnected
from shared.requests import Requester, RequestTimeout, requester
from shared.topics import DEFAULT_PREFIX, fleet_commands, fleet_replies
from shared.transfer import HashBehind, connection

CHUNK = 1 << 20
COMMAND_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 600.0  # reads the whole blob and loads the model on the fleet's side

Progress = Callable[[int], None]  # called with the bytes just moved


def author() -> str:
    with contextlib.suppress(Exception):
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return ""


class FleetClient:
    def __init__(
        self, requester: Requester, prefix: str = DEFAULT_PREFIX, timeout: float = COMMAND_TIMEOUT_S
    ) -> None:
        self.requester, self.topic = requester, fleet_commands(prefix)
        self.prefix = prefix
        self.timeout = timeout  # for an answer to a command

    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The command's result; `FleetError` with the fleet's code when it refused."""
        timeout = self.timeout if timeout is None else timeout
        try:
            answer = await self.requester.request(
                self.topic,
                FleetCommand(cmd=cmd, args=args or {}),
                timeout=timeout,
                encoding=Encoding.JSON,  # readable with mosquitto_sub when debugging
            )
        except RequestTimeout:
            raise FleetUnreachable(
                f"the fleet did not answer {cmd} within {timeout:g} s: is the fleet service "
                "running on that broker? (edgefleet cloud up starts one)",
            ) from None
        if not isinstance(answer, dict) or "ok" not in answer:
            raise FleetError("internal", f"unexpected answer to {cmd}: {str(answer)[:200]}")
        if not answer["ok"]:
            error = answer.get("error") or {}
            raise FleetError(error.get("code", "internal"), error.get("message", "refused"))
        result: dict[str, Any] = answer.get("result") or {}
        return result

    # ------------------------------------------------------------------ library transfers

    async def push(
        self,
        path: Path,
        name: str,
        kind: str,
        note: str = "",
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        size = (await asyncio.to_thread(path.stat)).st_size
        # Declared up front, the digest is signed into the upload URL where the fleet's S3
        # server checks checksums: the server verifies the bytes as they arrive, so the fleet
        # does not have to stage, read back and copy them.
        declared = await asyncio.to_thread(file_sha256, path)
        upload = await self.call(
            "library.upload_url", {"name": name, "size": size, "sha256": declared, "kind": kind}
        )
        sha256 = await asyncio.to_thread(
            put_file, upload["url"], path, size, progress, upload.get("headers")
        )
        return await self.call(
            "library.commit",
            {
                "upload_id": upload["upload_id"],
                "name": name,
                "kind": kind,
                "sha256": sha256,
                "size": size,
                "note": note,
                "author": author(),
            },
            timeout=max(self.timeout, COMMIT_TIMEOUT_S),
        )

    async def pull(self, ref: str, dest: Path, progress: Progress | None = None) -> dict[str, Any]:
        """Download `ref` to `dest` (written aside, verified, then renamed)."""
        where = await self.call("library.download_url", {"ref": ref})
        await asyncio.to_thread(get_file, where["url"], dest, where["sha256"], progress)
        return where


@contextlib.asynccontextmanager
async def connect(
    fleet: str | FleetBroker | BrokerConfig | None = None,
    prefix: str = DEFAULT_PREFIX,
    connect_timeout: float = 10.0,
    timeout: float = COMMAND_TIMEOUT_S,
) -> AsyncIterator[FleetClient]:
    """A client on the fleet's broker: an address (`host:port` or an `mqtt[s]://` URL, else
    $EDGEFLEET_FLEET, else 127.0.0.1:1883; edgefleet/fleet/address.py), or a broker config
    with its credentials and TLS (fleet.yaml's)."""
    if isinstance(fleet, BrokerConfig):
        fleet = FleetBroker(fleet)
    elif not isinstance(fleet, FleetBroker):
        fleet = FleetBroker.of(fleet)
    client_id = f"cli-{uuid.uuid4().hex[:12]}"
    try:
        settings = fleet.settings(client_id)
    except (OSError, ssl.SSLError) as exc:  # a CA file or client certificate that cannot be read
        raise ConfigError(f"TLS for the fleet's broker: {exc}") from None
    try:
        async with requester(
            settings, fleet_replies(client_id, prefix), connect_timeout=connect_timeout
        ) as req:
            yield FleetClient(req, prefix, timeout)
    except NotConnected as exc:
        raise FleetUnreachable(
            f"cannot reach the fleet's broker at {fleet.where} ({exc}); give --fleet "
            f"HOST:PORT or mqtts://USER@HOST:PORT, or set {ENV_ADDRESS}",
        ) from None


# ---------------------------------------------------------------------------- HTTP transfers


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def put_file(
    url: str,
    path: Path,
    size: int,
    progress: Progress | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """PUT the file to a presigned URL with `headers` (those signed into it); return the
    sha256 of what was sent. With a signed checksum the server checks the bytes against it
    (and refuses others), so that digest is returned and the bytes are not hashed twice."""
    signed = next((v for k, v in (headers or {}).items() if k.lower() == CHECKSUM), None)
    digest = None if signed else hashlib.sha256()
    conn, target = connection(url)
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        sent = 0
        with path.open("rb") as f:
            while sent < size:
                chunk = f.read(min(CHUNK, size - sent))
                if not chunk:
                    break  # the file shrank: the fleet will see the size differ and refuse
                if digest is not None:
                    digest.update(chunk)
                conn.send(chunk)
                sent += len(chunk)
                if progress:
                    progress(len(chunk))
        response = conn.getresponse()
        body = response.read()
        if response.status == 400 and b"Digest" in body:  # BadDigest: a checksum was signed
            raise ProtocolError(
                f"S3 refused the upload: the bytes sent are not those whose sha256 was declared "
                f"(the file changed during the push?); push again: {body[:300]!r}"
            )
        if response.status >= 300:
            raise ProtocolError(f"S3 refused the upload: HTTP {response.status}: {body[:300]!r}")
    except OSError as exc:
        raise ProtocolError(f"the upload to S3 failed: {exc}") from None
    finally:
        conn.close()
    if digest is None:
        assert signed is not None
        return hex_sha256(signed)
    return digest.hexdigest()


def get_file(url: str, dest: Path, sha256: str, progress: Progress | None = None) -> None:
    """GET a presigned URL into `dest`, checking the digest before the file takes its name.

    The bytes are hashed by a second thread behind the download (hashlib lets go of the GIL)
    and the kernel is asked to start writing them to disk as they come (sync_file_range), so
    the one fsync at the end has little left to wait for."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    conn, target = connection(url)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        if response.status != 200:
            raise ProtocolError(
                f"S3 refused the download: HTTP {response.status}: {response.read()[:300]!r}"
            )
        free: queue.Queue[memoryview] = queue.Queue()  # chunk buffers, back once hashed
        for _ in range(_BUFFERS):
            free.put(memoryview(bytearray(CHUNK)))
        with tmp.open("wb") as out, HashBehind() as hasher:
            written = 0
            while True:
                view = free.get()
                n = response.readinto(view)
                if not n:
                    break
                out.write(view[:n])
                hasher.update(view[:n], functools.partial(free.put, view))
                written += n
                if written % WRITEBACK < n:
                    out.flush()
                    _start_writeback(out.fileno())
                if progress:
                    progress(n)
            out.flush()
            os.fsync(out.fileno())
            got = hasher.hexdigest()
        if got != sha256:
            raise FleetError(
                "digest_mismatch",
                f"the downloaded bytes have sha256 {got}, the library says "
                f"{sha256}: nothing was written; try again",
            )
        tmp.replace(dest)
    except OSError as exc:
        raise ProtocolError(f"the download from S3 failed: {exc}") from None
    finally:
        conn.close()
        tmp.unlink(missing_ok=True)


WRITEBACK = 8 << 20  # written bytes between two requests to start writing them to disk
_BUFFERS = 8  # chunks in flight between the download and the hashing thread


_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Linux: start writing the file's dirty pages now, without waiting (elsewhere: nothing)."""
    fn = getattr(_libc(), "sync_file_range", None)
    if fn is not None:
        fn(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
