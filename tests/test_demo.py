"""The README's main command, shortened: it shows live traffic and leaves nothing running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_shows_live_readings_and_stops_cleanly(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "demo",
            "--workdir",
            str(tmp_path),
            "--duration",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    raw = [line for line in lines if line["topic"] == "ef/demo/raw/gateway"]
    assert raw, out.stdout[:500]
    assert raw[0]["payload"]["signals"] == ["pressure", "temp"]
    assert "nothing left running" in out.stderr
    # the autouse fixture fails this test if the broker or mqtt-ingest is still alive
