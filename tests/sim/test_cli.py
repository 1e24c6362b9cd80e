"""`edgefleet sim` as a process: serves, stops cleanly on SIGTERM, writes labels."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgefleet.sim.plant import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)  # poll interval of a wait for the port, not a fixed wait
    raise TimeoutError(f"port {port} not open after {timeout}s")


def test_cli_runs_until_sigterm_and_writes_labels(tmp_path: Path) -> None:
    schedule = tmp_path / "faults.yaml"
    schedule.write_text("- {start_s: 1, end_s: 2, kind: cavitation}\n")
    labels = tmp_path / "labels.csv"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.sim.cli",
            "--no-opcua",
            "--modbus-port",
            str(port),
            "--seed",
            "3",
            "--faults",
            str(schedule),
            "--labels-out",
            str(labels),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(port)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    rows = list(csv.DictReader(labels.open()))
    assert [r["kind"] for r in rows] == ["cavitation"]


def test_cli_refuses_a_bad_schedule(tmp_path: Path) -> None:
    from edgefleet.sim.cli import main

    bad = tmp_path / "faults.yaml"
    bad.write_text("- {start_s: 1, end_s: 2, kind: meltdown}\n")
    assert main(["--no-opcua", "--faults", str(bad)]) == 2
