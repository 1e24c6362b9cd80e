"""The README's main command, shortened (`--fast`): simulator, recording, training, the site,
cavitation detected live, the alarm lamp set and reset, results in the SQLite history and on the
cloud broker, and nothing left running."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path


def test_demo_detects_the_fault_lights_the_lamp_and_stops_cleanly(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--fast", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    text = out.stdout
    assert out.returncode == 0, out.stderr[-2000:] + text[-2000:]
    assert "\033[" not in text, "no colours when stdout is not a terminal"
    lines = text.splitlines()
    live = [line for line in lines if " score " in line]
    before = [line for line in live if "fault: -" in line and "ANOMALY" not in line]
    during = [line for line in live if "fault: cavitation" in line]
    assert len(before) >= 3 and len(during) >= 5, text
    assert any("ANOMALY" in line and "LAMP ON" in line for line in during), text

    threshold = float(re.search(r"threshold (\d\.\d+)", text).group(1))  # type: ignore[union-attr]
    median_during = float(re.search(r"during the fault: median (\d\.\d+)", text).group(1))  # type: ignore[union-attr]
    median_before = float(re.search(r"before the fault: median (\d\.\d+)", text).group(1))  # type: ignore[union-attr]
    assert median_before < threshold < median_during, text
    # The lamp is the simulator's own coil state, set by the actuator through the Modbus adapter.
    assert re.search(r"alarm lamp set \d+\.\d s after the fault began", text), text
    assert "alarm lamp reset after the fault" in text, text
    assert "nothing left running" in text

    with sqlite3.connect(tmp_path / "history.db") as db:
        rows = db.execute("SELECT outputs FROM results").fetchall()
        events = db.execute("SELECT decision FROM events").fetchall()
    scores = [json.loads(r[0])["score"] for r in rows]
    assert len(scores) >= 30
    assert sum(s > threshold for s in scores) >= 20  # the fault's samples, in the history
    assert sum(s < threshold for s in scores) >= 20  # and normal operation around it
    assert ("acted",) in events, events
    cloud = int(re.search(r"(\d+) delivered to the cloud broker", text).group(1))  # type: ignore[union-attr]
    assert cloud >= 30
    # the autouse fixture fails this test if a broker, service or simulator is still alive
