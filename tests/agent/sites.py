"""Real processes for the fleet end-to-end tests: `edgefleet cloud up`, the plant simulator and
`edgefleet up`, each started as a user would and always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import free_port, wait_port
from shared.signing import PublicKey, SigningKey
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


class Cloud:
    """`edgefleet cloud up`: the cloud broker, SeaweedFS and the fleet service."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port, self.s3_port = free_port(), free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Cloud:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "cloud", "up", "--workdir", str(self.workdir),
             "--port", str(self.port), "--s3-port", str(self.s3_port)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("ready:"):
                break
        else:
            raise RuntimeError(f"cloud up ended: {self.process.wait()}")
        self.process.stdout.close()  # the rest is in its logs
        return self

    @property
    def key(self) -> PublicKey:
        return SigningKey.load(self.workdir / "fleet.key").public

    def stop(self) -> None:
        _end(self.process)


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
