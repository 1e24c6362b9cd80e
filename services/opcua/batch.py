"""Data changes of one publish → one ReadingBatch (pure: no I/O).

Time of a reading: SourceTimestamp, else ServerTimestamp, else arrival. Quality from the status
code's severity bits: Good → good, Uncertain → uncertain, Bad → bad (value NaN). Booleans become
0/1; strings and other non-numeric values are kept aside (`texts`) and not sent as readings.
The first notification after a (re)subscription repeats the value already sent: a reading whose
source time and value equal the last one sent for its signal is dropped as a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from asyncua import ua

from shared.messages import Quality, ReadingBatch

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NAN = float("nan")


def to_ns(dt: datetime) -> int:
    """Integer nanoseconds since the Unix epoch (asyncua's datetimes have µs resolution)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US * 1000


def quality(status: ua.StatusCode | None) -> Quality:
    if status is None:
        return Quality.GOOD
    severity = (status.value >> 30) & 0x3
    return Quality.GOOD if severity == 0 else Quality.UNCERTAIN if severity == 1 else Quality.BAD


def numeric(value: Any) -> float | None:
    """A float for numbers and booleans; None for what cannot be a reading."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return float(value)
    return None


class Gatherer:
    """Turns MonitoredItemNotifications (client handle = signal index) into reading batches."""

    def __init__(self, source: str, signals: list[str]) -> None:
        self.source, self.signals = source, signals
        n = len(signals)
        self.last_t = np.zeros(n, np.int64)
        self.last_v: list[float] = [_NAN] * n
        self.texts: dict[str, str] = {}
        self.duplicates = 0

    def gather(
        self, items: Iterable[ua.MonitoredItemNotification], arrival_ns: int
    ) -> ReadingBatch | None:
        ts: list[int] = []
        sigs: list[int] = []
        values: list[float] = []
        qs: list[int] = []
        n = len(self.signals)
        for item in items:
            i = item.ClientHandle
            dv = item.Value
            if not 0 <= i < n or dv is None:
                continue
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            t = to_ns(stamp) if stamp is not None else arrival_ns
            q = quality(dv.StatusCode)
            raw = dv.Value.Value if dv.Value is not None else None
            v = numeric(raw)
            if v is None:
                if raw is not None and q is not Quality.BAD:
                    self.texts[self.signals[i]] = str(raw)[:200]
                    continue
                v = _NAN
            if q is Quality.BAD:
                v = _NAN
            last = self.last_v[i]
            if t == self.last_t[i] and (v == last or (math.isnan(v) and math.isnan(last))):
                self.duplicates += 1
                continue
            self.last_t[i], self.last_v[i] = t, v
            ts.append(t)
            sigs.append(i)
            values.append(v)
            qs.append(q)
        if not ts:
            return None
        return ReadingBatch.from_columns(
            self.source, self.signals, ts, sigs, values, qs, received_ns=arrival_ns
        )

    def bad(self, indexes: Iterable[int], t_ns: int) -> ReadingBatch | None:
        """Bad readings (NaN) for `indexes` at `t_ns`: the session was lost or stalled.

        The memory of the last good value stays, so the value a rebuilt subscription repeats
        first is still recognised as a duplicate and not sent again as if it were new."""
        idx = sorted(set(indexes))
        if not idx:
            return None
        return ReadingBatch.from_columns(
            self.source,
            self.signals,
            [t_ns] * len(idx),
            idx,
            [_NAN] * len(idx),
            [Quality.BAD] * len(idx),
            received_ns=t_ns,
        )
