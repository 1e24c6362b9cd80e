"""The plant simulator's Modbus server as a process, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[int]:
    """`edgefleet sim` with Modbus only, on a free port; yields the port."""
    port = free_port()
    log = (tmp_path / "sim.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.sim.cli", "--modbus-port", str(port), "--no-opcua"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port("127.0.0.1", port, timeout=20)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
