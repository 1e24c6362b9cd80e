"""A CSV file of plant data to a recording: a time column and one column per sensor.

Real data comes as CSV more often than not, in every dialect: the separator is sniffed (or
given), the decimal mark may be a comma, times are ISO-8601 (with or without a zone; `tz` names
the zone of those without one) or epoch numbers (unit given, or guessed from their magnitude).
Every non-empty row becomes one reading batch of the source at the row's time, arriving at that
time; an empty or unparsable cell is a bad-quality reading (NaN), never a dropped row. A label
column (optional) becomes the recording's labelled intervals: runs of rows whose label is not
`normal` (or empty).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from edgefleet.replay.recording import Meta, RecordingWriter
from shared.errors import ConfigError
from shared.messages import Quality, ReadingBatch

UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


@dataclass
class Converted:
    rows: int
    readings: int
    bad: int
    labels: list[tuple[int, int, str]]


def _guess_unit(x: float) -> int:
    """ns per unit of an epoch number, from its size: times of this century are about 1.7e9 in
    seconds, 1.7e12 in ms, 1.7e15 in µs, 1.7e18 in ns."""
    for limit, scale in ((1e11, UNITS["s"]), (1e14, UNITS["ms"]), (1e17, UNITS["us"])):
        if abs(x) < limit:
            return scale
    return 1


def parse_time(text: str, tz: ZoneInfo, unit: str | None) -> int:
    text = text.strip()
    try:
        x = Decimal(text)  # exact: a float would round epoch ns by ~100 ns
    except InvalidOperation:
        pass
    else:
        if x.is_finite():
            return int(x * (UNITS[unit] if unit else _guess_unit(float(x))))
    try:
        dt = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        raise ConfigError(f"time {text!r} is neither ISO-8601 nor an epoch number") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def parse_value(text: str, decimal: str) -> float:
    text = text.strip()
    if decimal != ".":
        text = text.replace(".", "").replace(decimal, ".")  # 1.234,5 → 1234.5
    return float(text) if text else float("nan")


def convert(
    csv_path: Path,
    out: Path,
    *,
    source: str,
    time_column: str | None = None,
    unit: str | None = None,
    tz: str = "UTC",
    sep: str | None = None,
    decimal: str = ".",
    label_column: str | None = None,
    normal: str = "normal",
    site: str = "csv",
) -> Converted:
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tz!r} (e.g. UTC, Europe/Berlin)") from None
    if unit is not None and unit not in UNITS:
        raise ConfigError(f"time unit must be one of {', '.join(UNITS)}, got {unit!r}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        head = fh.read(65536)
        fh.seek(0)
        if sep is None:
            try:
                sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
            except csv.Error:
                sep = ","
        reader = csv.reader(fh, delimiter=sep)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise ConfigError(f"{csv_path}: empty file")
        tcol = time_column or header[0]
        if tcol not in header:
            raise ConfigError(f"{csv_path}: no column {tcol!r}; columns: {', '.join(header)}")
        if label_column is not None and label_column not in header:
            raise ConfigError(f"{csv_path}: no label column {label_column!r}")
        ti = header.index(tcol)
        li = header.index(label_column) if label_column else None
        cols = [i for i in range(len(header)) if i not in (ti, li)]
        signals = [header[i] for i in cols]
        writer = RecordingWriter(out, Meta(site=site, topics=[f"csv:{csv_path.name}"]))
        sig = np.arange(len(cols), dtype=np.uint16)
        rows = bad = 0
        runs: list[tuple[int, int, str]] = []
        last_t: int | None = None
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ConfigError(
                    f"{csv_path}:{lineno}: {len(row)} fields, the header has {len(header)}"
                )
            try:
                t = parse_time(row[ti], zone, unit)
            except ConfigError as exc:
                raise ConfigError(f"{csv_path}:{lineno}: {exc}") from None
            values = np.empty(len(cols))
            for j, i in enumerate(cols):
                try:
                    values[j] = parse_value(row[i], decimal)
                except ValueError:
                    values[j] = float("nan")
            q = np.where(np.isfinite(values), Quality.GOOD, Quality.BAD).astype(np.uint8)
            bad += int((q == Quality.BAD).sum())
            writer.add(
                ReadingBatch(source, signals, np.full(len(cols), t, np.int64), sig, values, q),
                arrival_ns=t,
            )
            rows += 1
            if li is not None:
                kind = row[li].strip()
                if kind and kind != normal:
                    if runs and runs[-1][2] == kind and runs[-1][1] == last_t:
                        runs[-1] = (runs[-1][0], t, kind)
                    else:
                        runs.append((t, t, kind))
            last_t = t
    writer.meta.labels = runs
    writer.close()
    return Converted(rows, writer.readings, bad, runs)
