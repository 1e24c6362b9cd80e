"""Real processes for the fleet end-to-end tests: `edgefleet cloud up`, the plant simulator and
`edgefleet up`, each started as a user would and always stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import free_port, wait_port
from edgefleet.fleet.cloud import CloudProcess
from shared.signing import PublicKey
from tests.site.helpers import site_data

ROOT = Path(__file__).resolve().parents[2]


def _end(process: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


Cloud = CloudProcess  # `edgefleet cloud up`: the cloud broker, SeaweedFS and the fleet service


class Simulator:
    """`edgefleet sim`, Modbus only, on a free port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.sim.cli", "--modbus-port", str(self.port),
                 "--no-opcua"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_port("127.0.0.1", self.port, timeout=20)

    def stop(self) -> None:
        _end(self.process, 10)


class Site:
    """One node: `edgefleet up` with its own local mosquitto, bridged to the cloud broker."""

    def __init__(
        self,
        root: Path,
        site: str,
        modbus_port: int,
        labels: dict[str, str],
        key: PublicKey,
        *,
        prefix: str = "ef",
        fleet_port: int | None = None,
        health_timeout_s: float = 15,
    ) -> None:
        self.site, self.prefix, self.root = site, prefix, root
        self.port = free_port()
        self.workdir = root / "work"
        data = site_data(site, self.port, modbus_port, prefix=prefix, labels=labels)
        data["broker"]["start_local"] = True
        data["flows"] = []  # the fleet deploys them
        fleet: dict[str, Any] = {
            "trusted_keys": [key.text()],
            "health_timeout_s": health_timeout_s,
            "inspect_timeout_s": 60,
            "command_timeout_s": 30,
        }
        if fleet_port is not None:
            fleet["broker"] = {"host": "127.0.0.1", "port": fleet_port}
        data["fleet"] = fleet
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "site.yaml"
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Site:
        with (self.root / "up.log").open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli", "up", str(self.path),
                 "--workdir", str(self.workdir)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_port("127.0.0.1", self.port, timeout=30)
        return self

    def stop(self) -> None:
        _end(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL `up` alone, as a crash would: its children are not signalled by us."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


class HoldingProxy:
    """A TCP proxy in front of the S3 server that can hold a download in the middle: with
    `hold` set, a new connection gets the response's headers and its first bytes, then nothing
    until `release` is set (`held` says one is being held). The bytes are S3's own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold = False
        self.held, self.release = asyncio.Event(), asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.release.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, hold=False),
                self._pipe(up_reader, writer, hold=self.hold),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass  # one side went away (a SIGKILLed download): the other is closed below
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        head = b""
        while chunk := await src.read(1 << 16):
            if hold:
                head += chunk
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                cut = end + 4 + 16  # the headers and a few bytes of the body
                dst.write(head[:cut])
                await dst.drain()
                self.held.set()
                await self.release.wait()
                chunk, hold = head[cut:], False
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
