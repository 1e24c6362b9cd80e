"""Fault schedules, labels CSV and CSV replay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edgefleet.sim.faults import load_schedule, write_labels
from edgefleet.sim.pump import Fault
from edgefleet.sim.replay import Replay


def test_schedule_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text(
        "- {start_s: 30, end_s: 60, kind: cavitation}\n"
        "- {start_s: 5, end_s: 9, kind: blocked_valve}\n"
    )
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"faults": [{"start_s": 1, "end_s": 2, "kind": "bearing_wear"}]}))
    assert load_schedule(y) == [Fault(5, 9, "blocked_valve"), Fault(30, 60, "cavitation")]
    assert load_schedule(j) == [Fault(1, 2, "bearing_wear")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {start_s: 1, end_s: 2, kind: meltdown}", "kind"),
        ("- {start_s: 3, end_s: 2, kind: cavitation}", "after"),
        ("- {start_s: 1, kind: cavitation}", "end_s"),
        ("- {start_s: 1, end_s: 2, kind: cavitation, colour: red}", "colour"),
        ("start_s: 1", "list"),
    ],
)
def test_bad_schedule_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_schedule(p)


def test_labels_csv(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    start_ns = 1_700_000_000_000_000_000
    n = write_labels(out, [Fault(30, 60.5, "cavitation"), Fault(5, 9, "blocked_valve")], start_ns)
    rows = list(csv.DictReader(out.open()))
    assert n == 2 and list(rows[0]) == ["start", "end", "start_ns", "end_ns", "kind"]
    assert rows[0]["kind"] == "blocked_valve"
    assert int(rows[0]["start_ns"]) == start_ns + 5_000_000_000
    assert int(rows[1]["end_ns"]) == start_ns + 60_500_000_000
    assert rows[0]["start"] == "2023-11-14T22:13:25.000000+00:00"
    assert rows[1]["end"] == "2023-11-14T22:14:20.500000+00:00"


def test_replay_holds_last_row_loops_and_scales_time(tmp_path: Path) -> None:
    p = tmp_path / "rec.csv"
    p.write_text("time,flow,discharge_pressure,other\n0,10,1.5,x\n1,20,,x\n2,30,2.5,x\n")
    r = Replay(p, speed=2.0)
    assert r.signals == ["flow", "discharge_pressure"]
    assert r.values_at(0.0) == {"flow": 10.0, "discharge_pressure": 1.5}
    assert r.values_at(0.5) == {"flow": 20.0}  # 1.0 s of recording; NaN cell left out
    assert r.values_at(1.2) == {"flow": 30.0, "discharge_pressure": 2.5}
    assert r.values_at(1.5)["flow"] == 10.0  # 3.0 s: loops (duration 3 s)


def test_replay_iso_times(tmp_path: Path) -> None:
    p = tmp_path / "rec.csv"
    p.write_text("timestamp,flow\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:00.5Z,2\n")
    r = Replay(p)
    assert r.values_at(0.6) == {"flow": 2.0}


def test_replay_without_signals_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "rec.csv"
    p.write_text("time,foo\n0,1\n")
    with pytest.raises(ValueError, match="no signal columns"):
        Replay(p)
