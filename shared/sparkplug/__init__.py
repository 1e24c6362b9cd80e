"""Sparkplug B payloads: the schema's generated module and what both directions share.

`sparkplug_b_pb2` is generated from `sparkplug_b.proto` (the schema of the Sparkplug 3.0
specification) by `make sparkplug-proto`; no payload is encoded by hand. Here: the value field
each data type travels in, the sequence arithmetic, and the bdSeq counter that survives restarts.
The forwarder's Sparkplug sink and the `sparkplug` source (services/sparkplug) both use it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from shared.errors import PayloadError
from shared.files import remove_stale_temporaries, write_atomic
from shared.sparkplug import sparkplug_b_pb2 as pb

log = logging.getLogger(__name__)

Payload = pb.Payload
Metric = pb.Payload.Metric

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
SEQ_MODULO = 256  # seq and bdSeq run 0..255 and wrap

# The value field of each scalar data type (Sparkplug 3.0, 6.4.16); signed integers travel as
# their two's complement in the unsigned field.
INT_TYPES = frozenset({pb.Int8, pb.Int16, pb.Int32, pb.UInt8, pb.UInt16, pb.UInt32})
LONG_TYPES = frozenset({pb.Int64, pb.UInt64, pb.DateTime})
STRING_TYPES = frozenset({pb.String, pb.Text, pb.UUID})
_SIGNED_BITS: dict[int, int] = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32, pb.Int64: 64}


def next_seq(seq: int) -> int:
    return (seq + 1) % SEQ_MODULO


def set_value(metric: Metric, datatype: int, value: float | int | bool | str | None) -> None:
    """Put `value` in the field `datatype` uses; None is a null metric (`is_null`)."""
    metric.datatype = datatype
    if value is None or (isinstance(value, float) and math.isnan(value)):
        metric.is_null = True
    elif datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype == pb.Double:
        metric.double_value = float(value)
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype in INT_TYPES:
        metric.int_value = int(value) & 0xFFFFFFFF
    elif datatype in LONG_TYPES:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype in STRING_TYPES:
        metric.string_value = str(value)
    else:
        raise PayloadError(f"metric {metric.name!r}: data type {datatype} is not supported here")


def _signed(raw: int, datatype: int) -> int:
    bits = _SIGNED_BITS.get(datatype)
    if bits is None:
        return raw
    if datatype != pb.Int64 and raw >= 1 << 31:  # sign-extended into the 32-bit field
        raw -= 1 << 32
    elif raw >= 1 << (bits - 1) and raw < 1 << bits:  # or zero-extended from its own width
        raw -= 1 << bits
    return raw


def value_of(metric: Metric, datatype: int) -> float | int | bool | str | None:
    """The metric's value as Python: None when null, absent, or of a type not read here
    (data sets, templates, arrays, bytes)."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    if field == "boolean_value":
        return metric.boolean_value
    if field in ("double_value", "float_value"):
        value: float = getattr(metric, field)
        return value
    if field in ("int_value", "long_value"):
        return _signed(getattr(metric, field), datatype)
    if field == "string_value":
        return metric.string_value
    return None


def number(metric: Metric, datatype: int) -> float | None:
    """The metric as a reading value (booleans 0/1); None for null and non-numeric values."""
    value = value_of(metric, datatype)
    if value is None or isinstance(value, str):
        return None
    return float(value)


class BdSeqFile:
    """The birth/death sequence of one edge node, kept in a small JSON file: each MQTT CONNECT
    takes the next value (0..255, wrapping), written before the CONNECT goes out, so a restarted
    node never reuses the number of its previous session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: int | None = None

    def _last(self) -> int:
        """The last bdSeq used; a missing or unreadable file starts again at 0 (said once):
        a host only needs each NDEATH to match its own session's NBIRTH."""
        remove_stale_temporaries(self.path.parent)  # a write of a killed process
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return SEQ_MODULO - 1  # so that the first session is 0
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read the bdSeq state (%s); starting at 0", self.path, exc)
            return SEQ_MODULO - 1
        value = data.get("bdseq") if isinstance(data, dict) else None
        if not isinstance(value, int) or not 0 <= value < SEQ_MODULO:
            log.warning("%s: expected {'bdseq': 0..255}, got %.80r; starting at 0", self.path, data)
            return SEQ_MODULO - 1
        return value

    def next(self) -> int:
        last = self._last() if self.current is None else self.current
        self.current = next_seq(last)
        write_atomic(self.path, json.dumps({"bdseq": self.current}).encode())
        return self.current
