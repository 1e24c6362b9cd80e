"""The one payload codec: msgpack by default, JSON on request, told apart by content type.

numpy arrays travel in msgpack as one extension value (dtype, shape, little-endian bytes), so a
receiver gets an array back with a single `frombuffer`; in JSON they become lists, NaN becomes null.
"""

from __future__ import annotations

import json
import math
import re
import struct
from enum import Enum, StrEnum
from typing import Any

import msgpack
import numpy as np

from shared.errors import PayloadError

MSGPACK = "application/msgpack"
JSON = "application/json"

_ND_EXT = 1  # msgpack extension code of a numpy array
_HEADER_LEN = struct.Struct("<H")
_NUMERIC_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248])")


class Encoding(StrEnum):
    MSGPACK = "msgpack"
    JSON = "json"

    @property
    def content_type(self) -> str:
        return MSGPACK if self is Encoding.MSGPACK else JSON


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.dtype.kind in "UO":  # labels: a plain list of strings
            return arr.tolist()
        if arr.dtype.kind not in "biuf":
            raise PayloadError(f"cannot encode an array of dtype {arr.dtype}")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(
            _ND_EXT, _HEADER_LEN.pack(len(header)) + header + np.ascontiguousarray(arr).tobytes()
        )
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Enum):
        return obj.value
    raise PayloadError(f"cannot encode a {type(obj).__name__}")


def _ext_header(n: int) -> bytes:
    """msgpack ext 8/16/32 header of `n` data bytes (valid for every length, fixext or not)."""
    if n <= 0xFF:
        return struct.pack(">BBb", 0xC7, n, _ND_EXT)
    if n <= 0xFFFF:
        return struct.pack(">BHb", 0xC8, n, _ND_EXT)
    return struct.pack(">BIb", 0xC9, n, _ND_EXT)


def _pack_parts(obj: Any, parts: list[bytes | memoryview], packer: msgpack.Packer) -> None:
    """Pack `obj` into `packer`'s buffer, cut into `parts` around each numeric array of a map:
    the array's piece views its own memory, so the final join is the only copy of its bytes
    (packb with an ExtType made three: tobytes, the header concatenation, the packer's buffer)."""
    if type(obj) is dict:
        packer.pack_map_header(len(obj))
        for key, value in obj.items():
            packer.pack(key)
            _pack_parts(value, parts, packer)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        arr = obj.astype(obj.dtype.newbyteorder("<")) if obj.dtype.byteorder == ">" else obj
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)  # a copy only for a strided view
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        parts.append(packer.bytes())
        packer.reset()
        parts.append(
            _ext_header(2 + len(header) + arr.nbytes) + _HEADER_LEN.pack(len(header)) + header
        )
        parts.append(arr.reshape(-1).data)
    else:
        packer.pack(obj)


def _unpack_ext(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        raise PayloadError(f"unknown msgpack extension type {code}")
    try:
        (n,) = _HEADER_LEN.unpack_from(data)
        dtype_text, shape = msgpack.unpackb(data[2 : 2 + n])
        # Only plain numeric dtypes: numpy parses other dtype strings with a grammar of its
        # own (structured types, deprecated aliases), which a payload must never reach.
        if not isinstance(dtype_text, str) or not _NUMERIC_DTYPE.fullmatch(dtype_text):
            raise PayloadError(f"array dtype {dtype_text!r} is not numeric")
        dtype = np.dtype(dtype_text)
        arr = np.frombuffer(data, dtype=dtype, offset=2 + n)
        return arr.reshape(shape)
    except PayloadError:
        raise
    except (ValueError, TypeError, struct.error, msgpack.UnpackException) as exc:
        raise PayloadError(f"malformed array in msgpack payload: {exc}") from None


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: arrays as lists, NaN and infinities as null."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.size and not np.isfinite(obj).all():
            out = obj.astype(object)
            out[~np.isfinite(obj)] = None
            return out.tolist()
        return obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        raise PayloadError("bytes cannot be encoded as JSON")
    if isinstance(obj, (np.integer, np.floating, np.bool_, Enum)):
        return to_jsonable(_pack_default(obj))
    return obj


def encode(obj: Any, encoding: Encoding | str = Encoding.MSGPACK) -> tuple[bytes, str]:
    """Encode `obj`; return the payload and its content type."""
    enc = Encoding(encoding)
    if enc is Encoding.MSGPACK:
        parts: list[bytes | memoryview] = []
        packer = msgpack.Packer(default=_pack_default, use_bin_type=True, autoreset=False)
        _pack_parts(obj, parts, packer)
        parts.append(packer.bytes())
        return b"".join(parts), MSGPACK
    text = json.dumps(to_jsonable(obj), allow_nan=False, separators=(",", ":"))
    return text.encode(), JSON


def decode(payload: bytes, content_type: str | None = None) -> Any:
    """Decode a payload by its content type; without one, JSON is recognized by its first byte."""
    if content_type is None:
        head = payload.lstrip()[:1]
        content_type = JSON if head in (b"{", b"[") else MSGPACK
    base = content_type.split(";", 1)[0].strip().lower()
    if base == MSGPACK:
        try:
            return msgpack.unpackb(payload, ext_hook=_unpack_ext, raw=False, strict_map_key=False)
        except PayloadError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise PayloadError(f"payload is not valid msgpack: {exc}") from None
    if base == JSON or base.endswith("+json"):
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"payload is not valid JSON: {exc}") from None
    raise PayloadError(f"unsupported content type {content_type!r}")
