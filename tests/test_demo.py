"""The README's main command, `edgefleet demo`, in its fast form: the fleet story (the cloud,
three pump stations, a staged rollout the late station joins, cavitation detected with the lamp
set and the event at the cloud, a shadow promoted, a broken version rolled back on the canary
only) with its summary checked, the same interrupted by SIGINT leaving nothing running; and the
single-site story (`--site --fast`): simulator, recording, training, the site, cavitation
detected live, the alarm lamp set and reset, results in the SQLite history and on the cloud
broker."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow
DEMO = [sys.executable, "-m", "edgefleet.cli", "demo"]


def started_in(workdir: Path) -> list[psutil.Process]:
    """Processes the demo started in `workdir`: every one has the workdir on its command line
    (site services' configs, mosquitto's, the cloud's, SeaweedFS's data)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and str(workdir) in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.mark.timeout(480)  # about two minutes; a loaded 2-core machine may take twice that
def test_the_fleet_story_converges_detects_promotes_and_rolls_back(tmp_path: Path) -> None:
    out = subprocess.run(
        [*DEMO, "--fast", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=450,
    )  # fmt: skip
    text = out.stdout
    assert out.returncode == 0, out.stderr[-3000:] + text[-3000:]
    assert "\033[" not in text, "no colours when stdout is not a terminal"
    summary: dict[str, Any] = json.loads((tmp_path / "summary.json").read_text())
    stations = summary["stations"]
    assert len(stations) == 3 and summary["late"] in stations
    canary, others = stations[0], stations[1:]
    assert re.search(r"console http://127\.0\.0\.1:\d+/  sign in as operator / \S+", text), text

    # the staged rollout: the canary first, every station applied, the late one included
    assert summary["rollout"]["state"] == "succeeded" and summary["rollout"]["stages"] == [
        "held", "held",
    ]  # fmt: skip
    assert sorted(summary["converge_s"]) == sorted(stations)
    assert all(summary["converge_s"][canary] < summary["converge_s"][s] for s in others)
    assert summary["late_converge_s"] > 0
    assert text.index(f"{canary}: applied") < text.index(f"{others[0]}: verifying")

    # cavitation: detected, the lamp set by the actuator, the event at the cloud
    d = summary["detection"]
    assert d["fault"] == "cavitation" and d["site"] in others
    assert d["detected_s"] >= 0 and d["lamp_s"] >= 0 and d["cloud_event_s"] is not None
    assert d["lamp_reset_s"] is not None  # after the fault, by the actuator's reset rule
    assert d["score_during_median"] > summary["threshold"] > d["score_before_max"], d
    assert summary["cloud_events"] >= 1
    assert all(summary["cloud_results"].get(s, 0) > 0 for s in stations)

    # the shadow: compared on every station, its agreement reported, promoted
    sh = summary["shadow"]
    assert sh["compared"] >= 3 * 25 and sh["score_corr"] is not None
    assert sh["promoted"] == "pump-anomaly@2" and sh["state"] == "succeeded"
    assert "shadow agreement over" in text

    # the broken version: the canary rolled back by itself, the others never touched
    rb = summary["rollback"]
    assert rb["state"] == "aborted" and rb["canary"] == canary
    assert rb["nodes"] == {canary: "rolled_back", **dict.fromkeys(others, "skipped")}
    assert "no results from the new model" in rb["reason"] and rb["rolled_back_s"] > 0
    assert summary["final_flows"] == {s: ["pump-anomaly@2"] for s in stations}
    assert summary["left_running"] == [] and "nothing left running" in text
    assert not started_in(tmp_path)


@pytest.mark.parametrize(
    ("when", "sig"),
    [
        ("recording", signal.SIGINT),  # every station and the cloud are up
        ("in stages (canary", signal.SIGTERM),  # a deployment in flight
    ],
)
def test_a_signal_mid_story_stops_everything_it_started(
    tmp_path: Path, when: str, sig: signal.Signals
) -> None:
    demo = subprocess.Popen(
        [*DEMO, "--fast", "--workdir", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert demo.stdout is not None
    try:
        for line in demo.stdout:
            if when in line:
                break
        else:
            pytest.fail(f"the demo ended before {when!r}: {demo.wait()}")
        assert started_in(tmp_path), "the demo's processes, running"
        demo.send_signal(sig)
        try:
            rest = demo.communicate(timeout=240)[0]
        except subprocess.TimeoutExpired:
            demo.kill()
            pytest.fail(f"the demo did not stop within 240 s: {demo.communicate()[0]}")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, rest
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["left_running"] == []
    assert "interrupted after" in rest and "nothing left running" in rest
    left = started_in(tmp_path)
    for p in left:
        p.kill()
    assert not left, [p.info["cmdline"] for p in left]


def test_the_site_demo_detects_the_fault_lights_the_lamp_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [*DEMO, "--site", "--fast", "--workdir", str(tmp_path)],
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
