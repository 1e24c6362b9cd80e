"""Opening a model for a check without copying its weights.

onnxruntime given a model's bytes parses the whole protobuf, copies every weight into its own
tensor and packs the weights of MatMul/Gemm into another layout: for a 100 MB model about 0.3 s
after the last byte has arrived, which is most of what a library push waits for. A check only
has to know that the model loads and runs, so `open_for_check`:

- walks the protobuf once, without decoding the weights: each large `raw_data` initializer
  of the main graph is located in the buffer (its offset, dtype, dims);
- gives onnxruntime the model without those bytes (each such initializer marked as external
  data) and the weights as numpy views of the buffer (`add_external_initializers`: no copy),
  with prepacking off (a layout for speed, not part of whether the model loads).

Anything it does not recognise (another wire type, a dtype without a fixed width, a size that
does not match the dims, a weight already external, a big-endian host) makes it return None:
the caller then loads the bytes the plain way, whose refusal messages are onnxruntime's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# TensorProto.DataType → numpy dtype, for the types stored with a fixed width.
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
MIN_EXTERNAL = 1 << 16  # smaller weights stay inline: moving them saves nothing worth the risk

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_DATA_TYPE, _T_NAME, _T_RAW = 1, 2, 8, 9
_T_EXTERNAL_DATA, _T_DATA_LOCATION = 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
LOCATION = "edgefleet-weights"  # never read: every external weight is given from memory


class _Malformed(Exception):
    """Not a protobuf this walker follows: the plain load decides."""


@dataclass
class Split:
    """The model without its large weights, and those weights as views of the buffer."""

    model: bytes
    names: list[str] = field(default_factory=list)
    arrays: list[np.ndarray[Any, Any]] = field(default_factory=list)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _delimited(number: int, body: bytes) -> bytes:
    return _key(number, 2) + _encode_varint(len(body)) + body


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field, wire type, start of the field, start of its value, end) of each field; for a
    varint the value start is the varint's value (no bytes to point at)."""
    out, pos = [], start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            out.append((number, wire, first, value, pos))
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed
            out.append((number, wire, first, pos, pos + length))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Malformed
            out.append((number, wire, first, pos, pos))
        else:  # groups: not in ONNX
            raise _Malformed
    return out


def _dims(buf: memoryview, fields: list[tuple[int, int, int, int, int]]) -> list[int]:
    dims: list[int] = []
    for number, wire, _, value, end in fields:
        if number != _T_DIMS:
            continue
        if wire == 0:
            dims.append(value)
        elif wire == 2:  # packed
            pos = value
            while pos < end:
                dim, pos = _varint(buf, pos, end)
                dims.append(dim)
        else:
            raise _Malformed
    if any(d >= 1 << 62 for d in dims):  # negative in two's complement
        raise _Malformed
    return dims


def _external(buf: memoryview, start: int, end: int, split: Split, raw: Any) -> bytes | None:
    """The initializer re-encoded without its raw_data, or None to keep it as it is."""
    fields = _fields(buf, start, end)
    numbers = {f[0] for f in fields}
    if _T_RAW not in numbers or numbers & {_T_EXTERNAL_DATA, _T_DATA_LOCATION}:
        return None
    ((raw_start, raw_end),) = ((f[3], f[4]) for f in fields if f[0] == _T_RAW)
    if raw_end - raw_start < MIN_EXTERNAL:
        return None
    types = [f[3] for f in fields if f[0] == _T_DATA_TYPE and f[1] == 0]
    names = [f for f in fields if f[0] == _T_NAME and f[1] == 2]
    if len(types) != 1 or types[0] not in _DTYPES or len(names) != 1:
        return None
    dtype, dims = _DTYPES[types[0]], _dims(buf, fields)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count * dtype.itemsize != raw_end - raw_start:
        return None  # onnxruntime's own load says what is wrong with it
    name = bytes(buf[names[0][3] : names[0][4]]).decode()
    split.names.append(name)
    split.arrays.append(np.frombuffer(raw, dtype, count, raw_start).reshape(dims))
    kept = b"".join(bytes(buf[f[2] : f[4]]) for f in fields if f[0] != _T_RAW)
    where = _delimited(1, b"location") + _delimited(2, LOCATION.encode())
    return (
        kept
        + _key(_T_DATA_LOCATION, 0)
        + _encode_varint(_EXTERNAL)
        + _delimited(_T_EXTERNAL_DATA, where)
    )


def split_weights(data: bytes | bytearray | memoryview) -> Split | None:
    """The model in `data` with its large main-graph weights taken out, or None (see above)."""
    if sys.byteorder != "little":
        return None
    buf = memoryview(data).cast("B")
    split = Split(b"")
    try:
        top = _fields(buf, 0, len(buf))
        graphs = [f for f in top if f[0] == _MODEL_GRAPH and f[1] == 2]
        if len(graphs) != 1:
            return None
        _, _, g_first, g_start, g_end = graphs[0]
        parts = []
        for number, wire, first, start, end in _fields(buf, g_start, g_end):
            body = None
            if number == _GRAPH_INITIALIZER and wire == 2:
                body = _external(buf, start, end, split, data)
            parts.append(bytes(buf[first:end]) if body is None else _delimited(number, body))
        if not split.names:
            return None  # nothing large: the plain load is as quick
        graph = _delimited(_MODEL_GRAPH, b"".join(parts))
        split.model = bytes(buf[:g_first]) + graph + bytes(buf[g_end:])
    except (_Malformed, UnicodeDecodeError, ValueError):
        return None
    return split
