"""Turn one decoded foreign message into a column-wise ReadingBatch, as an Input says."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from services.mqtt_ingest.config import Input, SignalMap
from services.mqtt_ingest.paths import Path, parse_path, render, resolve
from shared.errors import PayloadError
from shared.messages import Quality, ReadingBatch

_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_QUALITY_NAMES = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}


def to_ns(value: Any, unit: str) -> int:
    """A timestamp field in `unit` as integer nanoseconds since the epoch."""
    if unit == "iso":
        if not isinstance(value, str):
            raise PayloadError(f"timestamp must be an ISO-8601 string, got {value!r}")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadError(f"timestamp {value!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise PayloadError(f"timestamp {value!r} has no time zone")
        return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1_000
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"timestamp must be a number of {unit}, got {value!r}")
    if isinstance(value, int):
        return value * _UNIT_NS[unit]
    if not np.isfinite(value):
        raise PayloadError(f"timestamp must be finite, got {value!r}")
    return round(value * _UNIT_NS[unit])


def to_quality(value: Any) -> Quality:
    if isinstance(value, str) and value.lower() in _QUALITY_NAMES:
        return _QUALITY_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2:
        return Quality(value)
    raise PayloadError(f"quality must be 0-2 or good/uncertain/bad, got {value!r}")


def to_values(raw: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Numbers, booleans, numeric strings and null (NaN) as float64; anything else refused."""
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "biuf":
            raise PayloadError(f"array of {raw.dtype} is not numeric")
        return raw.astype(np.float64).ravel()
    items = raw if isinstance(raw, list) else [raw]
    try:
        return np.array(items, dtype=np.float64)  # numpy turns None into NaN, "1.5" into 1.5
    except (TypeError, ValueError):
        bad = next((v for v in items if not _numeric(v)), items)
        raise PayloadError(f"value {bad!r} is not a number") from None


def _numeric(v: Any) -> bool:
    try:
        float(v)
        return v is not None and not isinstance(v, (dict, list))
    except (TypeError, ValueError):
        return v is None


class _Signal:
    def __init__(self, spec: SignalMap) -> None:
        self.spec = spec
        self.path = parse_path(spec.path)
        self.times = parse_path(spec.times_path) if spec.times_path else None
        self.period = parse_path(spec.period_path) if spec.period_path else None
        self.quality = parse_path(spec.quality_path) if spec.quality_path else None


def _get(data: Any, path: Path, what: str) -> Any:
    try:
        return resolve(data, path)
    except KeyError as exc:
        raise PayloadError(f"{what} {render(path)!r}: no field {exc.args[0]!s}") from None


class Extractor:
    """Compiled once per input; `extract` runs per message."""

    def __init__(self, spec: Input) -> None:
        self.spec = spec
        self.signals = [_Signal(s) for s in spec.signals]
        self.names = [s.name for s in spec.signals]
        ts = spec.timestamp
        self.ts_path = parse_path(ts.path) if ts.path else None
        self.quality = parse_path(spec.quality_path) if spec.quality_path else None

    def timestamp(self, data: Any, arrival_ns: int) -> int:
        if self.ts_path is None:
            return arrival_ns
        return to_ns(_get(data, self.ts_path, "timestamp"), self.spec.timestamp.unit)

    def extract(self, data: Any, arrival_ns: int) -> tuple[ReadingBatch, list[str]]:
        """Readings of every signal that could be read, and what was wrong with the others.

        A message-level problem (no timestamp) raises PayloadError: nothing in it can be placed.
        """
        if not isinstance(data, dict):
            raise PayloadError(f"expected a JSON object or msgpack map, got {type(data).__name__}")
        t0 = self.timestamp(data, arrival_ns)
        base_q = to_quality(_get(data, self.quality, "quality")) if self.quality else Quality.GOOD
        ts, sigs, vals, qs, problems = [], [], [], [], []
        for index, signal in enumerate(self.signals):
            try:
                t, v, q = self._read(signal, data, t0, base_q)
            except PayloadError as exc:
                problems.append(f"signal {signal.spec.name!r}: {exc}")
                continue
            ts.append(t)
            vals.append(v)
            qs.append(q)
            sigs.append(np.full(v.shape[0], index, np.uint16))
        if not vals:
            raise PayloadError("; ".join(problems) or "no signal could be read")
        batch = ReadingBatch.from_columns(
            self.spec.source,
            self.names,
            np.concatenate(ts),
            np.concatenate(sigs),
            np.concatenate(vals),
            np.concatenate(qs),
            received_ns=arrival_ns,
        )
        return batch, problems

    def _read(
        self, signal: _Signal, data: Any, t0: int, base_q: Quality
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        raw = _get(data, signal.path, "field")
        values = to_values(raw)
        quality = base_q
        if signal.quality is not None:
            quality = to_quality(_get(data, signal.quality, "quality"))
        q = np.full(values.shape[0], quality, np.uint8)
        q[np.isnan(values)] = Quality.BAD  # NaN and null are never good readings
        n = values.shape[0]
        if signal.times is not None:
            raw_t = _get(data, signal.times, "times")
            if not isinstance(raw_t, list) or len(raw_t) != n:
                raise PayloadError(f"times {signal.spec.times_path!r} must be a list of {n}")
            t = np.array([to_ns(x, self.spec.timestamp.unit) for x in raw_t], np.int64)
        elif n == 1 and not isinstance(raw, list):
            t = np.array([t0], np.int64)
        else:
            period_us = signal.spec.period_us
            if signal.period is not None:
                period_us = _get(data, signal.period, "period")
            if isinstance(period_us, bool) or not isinstance(period_us, (int, float)):
                raise PayloadError("an array value needs period_us, period_path or times_path")
            if period_us <= 0:
                raise PayloadError(f"period must be positive, got {period_us!r}")
            t = t0 + np.round(np.arange(n) * period_us * 1_000).astype(np.int64)
        return t, values, q
