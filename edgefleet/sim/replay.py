"""CSV replay: recorded signals served through the simulator's Modbus and OPC UA points.

The CSV has a time column (`time`, `t`, `timestamp` or the first column; seconds as numbers,
or ISO-8601 strings) and one column per signal, named like the pump signals (`flow`,
`discharge_pressure`, ...). Columns with other names are ignored. At simulated time t the value
is the last row at or before first_time + t * speed; the recording loops at its end.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from edgefleet.sim.pump import SIGNAL_NAMES

TIME_COLUMNS = ("time", "t", "timestamp", "time_s", "ts")


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Replay:
    """A recording, indexed by seconds from its first row."""

    def __init__(self, path: str | Path, speed: float = 1.0, loop: bool = True) -> None:
        if not speed > 0:
            raise ValueError(f"replay speed must be > 0, got {speed}")
        self.path, self.speed, self.loop = Path(path), speed, loop
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
        if not header or not rows:
            raise ValueError(f"{self.path}: no header or no rows")
        time_col = next((c for c in header if c.strip().lower() in TIME_COLUMNS), header[0])
        self.signals = [c for c in header if c in SIGNAL_NAMES or c == "tank_level"]
        if not self.signals:
            raise ValueError(
                f"{self.path}: no signal columns; expected some of {list(SIGNAL_NAMES)}"
            )
        times = np.array([_parse_time(r[time_col]) for r in rows])
        order = np.argsort(times, kind="stable")
        self.times = times[order] - times[order][0]
        self.columns = {
            c: np.array([float(r[c]) if r[c] not in ("", None) else math.nan for r in rows])[order]
            for c in self.signals
        }
        step = float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0
        self.duration = float(self.times[-1]) + step

    def values_at(self, t_sim: float) -> dict[str, float]:
        """Recorded values at simulated time `t_sim` (NaN cells are left out)."""
        t = t_sim * self.speed
        if self.loop:
            t = math.fmod(t, self.duration)
        i = max(int(np.searchsorted(self.times, t, side="right")) - 1, 0)
        out = {}
        for name, col in self.columns.items():
            v = float(col[i])
            if not math.isnan(v):
                out[name] = v
        return out
