"""Fault schedules (YAML or JSON lists of {start_s, end_s, kind}) and labels CSV for training."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from edgefleet.sim.pump import Fault
from shared.clock import iso

LABEL_COLUMNS = ("start", "end", "start_ns", "end_ns", "kind")


def parse_schedule(data: Any, origin: str = "schedule") -> list[Fault]:
    """Faults from a decoded list; entries may also sit under a top-level `faults` key."""
    if isinstance(data, dict) and "faults" in data:
        data = data["faults"]
    if not isinstance(data, list):
        raise ValueError(
            f"{origin}: expected a list of {{start_s, end_s, kind}}, got {type(data).__name__}"
        )
    faults = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{origin}[{i}]: expected a mapping, got {entry!r}")
        unknown = set(entry) - {"start_s", "end_s", "kind"}
        if unknown:
            raise ValueError(f"{origin}[{i}]: unknown key(s) {sorted(unknown)}")
        try:
            faults.append(Fault(float(entry["start_s"]), float(entry["end_s"]), str(entry["kind"])))
        except KeyError as exc:
            raise ValueError(f"{origin}[{i}]: missing key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{origin}[{i}]: {exc}") from None
    return sorted(faults, key=lambda f: (f.start_s, f.end_s, f.kind))


def load_schedule(path: str | Path) -> list[Fault]:
    """Read a schedule file; `.json` is parsed as JSON, anything else as YAML."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    return parse_schedule(data, str(p))


def label_rows(faults: Iterable[Fault], start_ns: int) -> list[dict[str, str | int]]:
    """One row per fault: simulated seconds mapped onto wall time from `start_ns`."""
    rows: list[dict[str, str | int]] = []
    for f in sorted(faults, key=lambda f: (f.start_s, f.end_s, f.kind)):
        s_ns = start_ns + round(f.start_s * 1e9)
        e_ns = start_ns + round(f.end_s * 1e9)
        rows.append(
            {
                "start": iso(s_ns),  # the ns column keeps full precision
                "end": iso(e_ns),
                "start_ns": s_ns,
                "end_ns": e_ns,
                "kind": f.kind,
            }
        )
    return rows


def write_labels(path: str | Path, faults: Iterable[Fault], start_ns: int) -> int:
    """Write the labels CSV; returns the number of rows."""
    rows = label_rows(faults, start_ns)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
