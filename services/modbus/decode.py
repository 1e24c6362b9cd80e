"""Read request planning and block decoding (pure: no I/O).

Points of a block are sorted and contiguous ones merged into as few requests as the protocol
allows (125 registers / 2000 bits). A request's registers are decoded at once: points of the
same type and orders are gathered into one (n, width) array of words, reordered with numpy,
and viewed as big-endian values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.modbus.config import BlockConfig, ModbusConfig, PointConfig

CODES = {
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "int64": "i8",
    "uint64": "u8",
    "float32": "f4",
    "float64": "f8",
}
F64 = npt.NDArray[np.float64]


@dataclass
class Group:
    """Numeric points of one type and order inside a request."""

    dtype: str
    byte_order: str
    word_order: str
    rows: npt.NDArray[np.intp]  # (n, width) word offsets into the request
    index: npt.NDArray[np.intp]  # position of each point in the request's value array
    scale: F64
    offset: F64


@dataclass
class ReadRequest:
    unit: int
    table: str
    address: int
    count: int
    poll_ms: int
    points: list[PointConfig]
    groups: list[Group] = field(default_factory=list)

    def __post_init__(self) -> None:
        keyed: dict[tuple[str, str, str], list[int]] = {}
        for i, p in enumerate(self.points):
            if p.type in CODES and p.bit is None:
                keyed.setdefault((p.type, p.byte_order, p.word_order), []).append(i)
        for (dtype, bo, wo), idx in keyed.items():
            pts = [self.points[i] for i in idx]
            width = pts[0].width
            starts = np.array([p.address - self.address for p in pts], dtype=np.intp)
            self.groups.append(
                Group(
                    dtype,
                    bo,
                    wo,
                    starts[:, None] + np.arange(width, dtype=np.intp)[None, :],
                    np.array(idx, dtype=np.intp),
                    np.array([p.scale for p in pts]),
                    np.array([p.offset for p in pts]),
                )
            )

    @property
    def is_bits(self) -> bool:
        return self.table in ("coil", "discrete")


def plan_block(
    block: BlockConfig, poll_ms: int, max_registers: int, max_bits: int
) -> list[ReadRequest]:
    limit = max_bits if block.table in ("coil", "discrete") else max_registers
    requests: list[ReadRequest] = []
    current: list[PointConfig] = []
    start = end = 0
    for p in sorted(block.points, key=lambda p: p.address):
        p_end = p.address + p.width
        if current and p.address <= end and max(end, p_end) - start <= limit:
            current.append(p)
            end = max(end, p_end)
            continue
        if current:
            requests.append(
                ReadRequest(block.unit, block.table, start, end - start, poll_ms, current)
            )
        current, start, end = [p], p.address, p_end
    requests.append(ReadRequest(block.unit, block.table, start, end - start, poll_ms, current))
    return requests


def plan(config: ModbusConfig) -> list[ReadRequest]:
    out: list[ReadRequest] = []
    for block in config.blocks:
        out += plan_block(
            block, block.poll_ms or config.poll_ms, config.max_registers, config.max_bits
        )
    return out


def reorder(
    words: npt.NDArray[np.uint16], byte_order: str, word_order: str
) -> npt.NDArray[np.uint16]:
    """Words as the device sent them → words of the big-endian value (rows = values)."""
    if word_order == "little":
        words = words[..., ::-1]
    if byte_order == "little":
        words = words.byteswap()
    return words


def decode_registers(req: ReadRequest, regs: npt.NDArray[np.uint16]) -> F64:
    """Values (float64) of every point of a register request; strings come out NaN."""
    values = np.full(len(req.points), np.nan)
    for g in req.groups:
        words = reorder(regs[g.rows], g.byte_order, g.word_order)
        raw = np.ascontiguousarray(words.astype(">u2")).view(">" + CODES[g.dtype]).ravel()
        values[g.index] = raw.astype(np.float64) * g.scale + g.offset
    for i, p in enumerate(req.points):
        if p.bit is not None:
            values[i] = float((int(regs[p.address - req.address]) >> p.bit) & 1)
    return values


def decode_bits(req: ReadRequest, bits: list[bool]) -> F64:
    arr = np.asarray(bits[: req.count], dtype=np.float64)
    return np.array([arr[p.address - req.address] for p in req.points])


def decode_string(p: PointConfig, regs: npt.NDArray[np.uint16], base: int) -> str:
    words = regs[p.address - base : p.address - base + p.width]
    raw = reorder(words, p.byte_order, "big").astype(">u2").tobytes()
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def encode_value(p: PointConfig, value: float) -> list[int]:
    """Registers to write for `value` (the inverse of decoding)."""
    raw = (value - p.offset) / p.scale
    code = CODES[p.type]
    arr = np.array([round(raw) if code[0] in "iu" else raw], dtype=">" + code)
    words = arr.view(">u2").astype(np.uint16)
    return [int(w) for w in reorder(words, p.byte_order, p.word_order)]
