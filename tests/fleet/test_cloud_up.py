"""`edgefleet cloud up`: broker, S3 and fleet service from one command, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from edgefleet.broker import free_port, wait_port
from shared.signing import SigningKey


def test_cloud_up_serves_the_cli_and_stops_cleanly(tmp_path: Path) -> None:
    port, s3_port, console_port = free_port(), free_port(), free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "cloud", "up", "--workdir", str(tmp_path / "cloud"),
         "--port", str(port), "--s3-port", str(s3_port), "--console-port", str(console_port)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert any(f"127.0.0.1:{s3_port}" in line for line in lines), lines
        # no auth folder: open, on loopback only, and it says so
        assert any("NO AUTHENTICATION: loopback only" in line for line in lines), lines
        key = SigningKey.load(tmp_path / "cloud" / "fleet.key")
        assert any(key.public.text() in line for line in lines), lines
        env = {**os.environ, "EDGEFLEET_FLEET": f"127.0.0.1:{port}"}
        for _ in range(40):
            listed = subprocess.run(
                [sys.executable, "-m", "edgefleet.cli", "library", "list", "--timeout", "0.5"],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            if listed.returncode == 0:
                break
        assert listed.returncode == 0 and "the library is empty" in listed.stdout, listed.stderr
        assert any(f"http://127.0.0.1:{console_port}/" in line for line in lines), lines
        wait_port("127.0.0.1", console_port, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{console_port}/login", timeout=30) as page:
            assert "Sign in" in page.read().decode()
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    assert (tmp_path / "cloud" / "fleet.db").exists()
