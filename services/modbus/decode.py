"""ReadRequest planning and block decoding (pure: no I/O).

Points of a block are sorted and contiguous ones merged into as few requests as the protocol
allows (125 registers / 2000 bits). A request's registers are decoded at once: points of the
same type and orders are gathered into one (n, width) array of words, reordered with numpy,
and viewed as big-endian values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.modbus.config import NUMERIC, BlockConfig, ModbusConfig, PointConfig
from shared.errors import PayloadError

F64 = npt.NDArray[np.float64]
IDX = npt.NDArray[np.intp]


@dataclass
class Group:
    """Numeric points of one type and order inside a request."""

    view: str  # numpy dtype of the big-endian value, e.g. ">i4"
    byte_order: str
    word_order: str
    rows: IDX  # (n, width) word offsets into the request
    index: IDX  # position of each point in the request's value array
    scale: F64
    offset: F64


def _idx(values: list[int]) -> IDX:
    return np.array(values, dtype=np.intp)


@dataclass
class ReadRequest:
    """One read request and everything its decoding needs, computed once from the config."""

    unit: int
    table: str
    address: int
    count: int
    poll_ms: int
    points: list[PointConfig]
    groups: list[Group] = field(default_factory=list)
    strings: list[PointConfig] = field(default_factory=list)
    readings: IDX = field(default_factory=lambda: _idx([]))  # points that give readings
    offsets: IDX = field(default_factory=lambda: _idx([]))  # each point's word or bit offset
    bit_index: IDX = field(default_factory=lambda: _idx([]))  # points that are register bits
    bit_shift: npt.NDArray[np.uint16] = field(default_factory=lambda: np.zeros(0, np.uint16))

    def __post_init__(self) -> None:
        keyed: dict[tuple[str, str, str], list[int]] = {}
        for i, p in enumerate(self.points):
            if p.type in NUMERIC and p.bit is None:
                keyed.setdefault((p.type, p.byte_order, p.word_order), []).append(i)
        for (dtype, bo, wo), idx in keyed.items():
            pts = [self.points[i] for i in idx]
            width = pts[0].width
            starts = _idx([p.address - self.address for p in pts])
            self.groups.append(
                Group(
                    ">" + NUMERIC[dtype][0],
                    bo,
                    wo,
                    starts[:, None] + np.arange(width, dtype=np.intp)[None, :],
                    _idx(idx),
                    np.array([p.scale for p in pts]),
                    np.array([p.offset for p in pts]),
                )
            )
        self.strings = [p for p in self.points if p.type == "string"]
        self.readings = _idx([i for i, p in enumerate(self.points) if p.type != "string"])
        self.offsets = _idx([p.address - self.address for p in self.points])
        bits = [i for i, p in enumerate(self.points) if p.bit is not None]
        self.bit_index = _idx(bits)
        self.bit_shift = np.array([self.points[i].bit for i in bits], dtype=np.uint16)

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


@dataclass
class Columns:
    """The reading columns of requests polled together, fixed at config time: the signal index
    of each reading, and the slice of the columns each request fills."""

    requests: list[ReadRequest]
    sig: npt.NDArray[np.uint16]
    spans: list[tuple[int, int]]

    @classmethod
    def of(cls, requests: list[ReadRequest], signals: list[str]) -> Columns:
        index = {name: i for i, name in enumerate(signals)}
        sig: list[int] = []
        spans = []
        for r in requests:
            start = len(sig)
            sig += [index[r.points[i].name] for i in r.readings]
            spans.append((start, len(sig)))
        arr = np.array(sig, dtype=np.uint16)
        arr.flags.writeable = False  # shared by every batch of these requests
        return cls(requests, arr, spans)

    def __len__(self) -> int:
        return int(self.sig.shape[0])


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
        raw = np.ascontiguousarray(words.astype(">u2")).view(g.view).ravel()
        values[g.index] = raw.astype(np.float64) * g.scale + g.offset
    if req.bit_index.size:
        words = regs[req.offsets[req.bit_index]]
        values[req.bit_index] = (words >> req.bit_shift) & 1
    return values


def decode_bits(req: ReadRequest, bits: list[bool]) -> F64:
    return np.asarray(bits[: req.count], dtype=np.float64)[req.offsets]


def decode_string(p: PointConfig, regs: npt.NDArray[np.uint16], base: int) -> str:
    words = regs[p.address - base : p.address - base + p.width]
    raw = reorder(words, p.byte_order, "big").astype(">u2").tobytes()
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def encode_value(p: PointConfig, value: float) -> list[int]:
    """Registers to write for `value` (the inverse of decoding); a value the point's type cannot
    hold is refused, never clipped, so a write never lands as a different number."""
    code = NUMERIC[p.type][0]
    raw = (value - p.offset) / p.scale
    if not math.isfinite(raw):
        raise PayloadError(f"point {p.name!r}: cannot write {value!r}")
    if code[0] in "iu":
        info = np.iinfo(np.dtype(code))
        whole = round(raw)
        if not int(info.min) <= whole <= int(info.max):
            raise PayloadError(
                f"point {p.name!r}: {value!r} is {whole} in registers, outside {p.type} "
                f"[{info.min}, {info.max}]"
            )
        arr = np.array([whole], dtype=">" + code)
    else:
        if abs(raw) > float(np.finfo(np.dtype(code)).max):
            raise PayloadError(f"point {p.name!r}: {value!r} does not fit a {p.type}")
        arr = np.array([raw], dtype=">" + code)
    words = arr.view(">u2").astype(np.uint16)
    return [int(w) for w in reorder(words, p.byte_order, p.word_order)]
