"""Modbus register map of the simulated station, and encoding of values into 16-bit registers.

Orders: a value is first written big-endian (bytes A B C D ...); `word_order="little"` reverses
the 16-bit words, `byte_order="little"` swaps the two bytes inside each word. For 32 bits:
big/big = ABCD, word little = CDAB, byte little = BADC, both little = DCBA.
A point's `scale` and `offset` are what a reader applies: value = raw * scale + offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# The simulator's own table and encoder, on purpose not the adapter's (services/modbus/config.py):
# a test server that shared the client's decoding would agree with a decoding bug. Unlike the
# adapter's writes, this encoder clips to the type's range: an out-of-range value saturates.
DTYPES: dict[str, str] = {
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "int64": "i8",
    "uint64": "u8",
    "float32": "f4",
    "float64": "f8",
}


def order_code(width_words: int, byte_order: str, word_order: str) -> str:
    """Letters for an order, e.g. 2 words, byte big, word little → 'CDAB'."""
    letters = [chr(ord("A") + i) for i in range(2 * width_words)]
    words = [letters[i : i + 2] for i in range(0, len(letters), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return "".join("".join(w) for w in words)


def words_from_bytes(raw: bytes, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Big-endian value bytes → register values in the given orders."""
    words = np.frombuffer(raw, dtype=">u2")
    if word_order == "little":
        words = words[::-1]
    if byte_order == "little":
        words = words.byteswap()
    return [int(w) for w in words]


def encode(
    value: float | int,
    dtype: str,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """Registers holding `value` as `dtype`; integers are rounded and clipped to its range."""
    code = DTYPES[dtype]
    exact = isinstance(value, int) and scale == 1.0 and offset == 0.0
    raw_value: int | float = value if exact else (value - offset) / scale
    if code[0] in "iu":
        info = np.iinfo(np.dtype(code))
        clipped = min(max(raw_value if exact else round(raw_value), int(info.min)), int(info.max))
        raw = np.array([clipped], dtype=">" + code).tobytes()
    else:
        raw = np.array([raw_value], dtype=">" + code).tobytes()
    return words_from_bytes(raw, byte_order, word_order)


def encode_string(text: str, n_registers: int, byte_order: str = "big") -> list[int]:
    """ASCII text, NUL-padded to `n_registers`, first character in the high byte unless swapped."""
    raw = text.encode("ascii")[: 2 * n_registers].ljust(2 * n_registers, b"\0")
    return words_from_bytes(raw, byte_order, "big")


def encode_bits(bits: list[bool]) -> int:
    """A bit-field register, bits[0] being the least significant bit."""
    return sum(1 << i for i, b in enumerate(bits) if b)


@dataclass(frozen=True)
class Point:
    """One mapped value: where it is, how it is encoded, what it carries."""

    unit: int
    table: str
    address: int
    dtype: str  # a DTYPES key, "string", "bits" (bit-field register) or "bool" (coil/discrete)
    signal: str
    unit_label: str = ""
    scale: float = 1.0
    offset: float = 0.0
    byte_order: str = "big"
    word_order: str = "big"
    length: int = 1  # registers, for strings
    writable: bool = False
    value: float | int | str | bool | None = None  # constant (static test block, strings)

    @property
    def width(self) -> int:
        if self.dtype in DTYPES:
            return np.dtype(DTYPES[self.dtype]).itemsize // 2
        if self.dtype == "string":
            return self.length
        return 1

    def registers(self, value: float | int | str | bool | None = None) -> list[int]:
        """Encode `value` (or the point's constant) into registers."""
        v = self.value if value is None else value
        if self.dtype == "string":
            return encode_string(str(v), self.length, self.byte_order)
        if self.dtype == "bits":
            return [int(v or 0) & 0xFFFF]
        assert isinstance(v, (int, float)), f"{self.signal}: no value to encode"
        return encode(v, self.dtype, self.byte_order, self.word_order, self.scale, self.offset)

    @property
    def order(self) -> str:
        if self.dtype in ("bool", "bits"):
            return ""
        if self.dtype == "string":
            return "AB" if self.byte_order == "big" else "BA"
        return order_code(self.width, self.byte_order, self.word_order)


STATIC_BASE = 100
STATIC_VALUES: list[tuple[str, int | float, tuple[tuple[str, str], ...]]] = [
    ("int16", -12345, (("big", "big"), ("little", "big"))),
    ("uint16", 54321, (("big", "big"), ("little", "big"))),
    (
        "int32",
        -123456789,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
    (
        "uint32",
        3123456789,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
    (
        "int64",
        -1234567890123456789,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
    (
        "uint64",
        12345678901234567890,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
    (
        "float32",
        -1234.5,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
    (
        "float64",
        -98765.4321,
        (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")),
    ),
]
STATIC_BITS = 0xA53C
STATIC_TEXT = "EDGEFLEET-SIM"


def static_block(unit: int, table: str) -> list[Point]:
    """Known constants of every type and order, from address 100 of `table`."""
    points: list[Point] = []
    addr = STATIC_BASE
    for dtype, value, orders in STATIC_VALUES:
        for byte_order, word_order in orders:
            width = np.dtype(DTYPES[dtype]).itemsize // 2
            name = f"static.{dtype}.{order_code(width, byte_order, word_order)}"
            p = Point(
                unit,
                table,
                addr,
                dtype,
                name,
                byte_order=byte_order,
                word_order=word_order,
                value=value,
            )
            points.append(p)
            addr += p.width
    points.append(
        Point(unit, table, addr, "int16", "static.scaled_int16", "bar", scale=0.01, value=-12.34)
    )
    points.append(
        Point(
            unit,
            table,
            addr + 1,
            "uint16",
            "static.scaled_offset_uint16",
            "degC",
            scale=0.1,
            offset=-50.0,
            value=21.5,
        )
    )
    points.append(Point(unit, table, addr + 2, "bits", "static.bits", value=STATIC_BITS))
    points.append(
        Point(unit, table, addr + 3, "string", "static.string.AB", length=8, value=STATIC_TEXT)
    )
    points.append(
        Point(
            unit,
            table,
            addr + 11,
            "string",
            "static.string.BA",
            length=8,
            byte_order="little",
            value=STATIC_TEXT,
        )
    )
    return points


STATUS_BITS = (
    "running",
    "stop_commanded",
    "alarm_lamp",
    "cavitation",
    "bearing_wear",
    "blocked_valve",
    "fault_any",
)
SERIAL = "EFP-2024-000117"
MODEL = "CentriFlow CF-100"


def _pump_points() -> list[Point]:
    ir = [
        Point(1, "input", 0, "int16", "suction_pressure", "bar", scale=0.01),
        Point(1, "input", 1, "int16", "discharge_pressure", "bar", scale=0.01),
        Point(1, "input", 2, "uint16", "flow", "m3/h", scale=0.1),
        Point(1, "input", 3, "uint16", "motor_current", "A", scale=0.1),
        Point(1, "input", 4, "int16", "bearing_temperature", "degC", scale=0.1),
        Point(1, "input", 5, "int16", "fluid_temperature", "degC", scale=0.1),
        Point(1, "input", 6, "uint16", "vibration", "mm/s", scale=0.01),
        Point(1, "input", 7, "uint16", "speed", "rpm"),
        Point(1, "input", 8, "bits", "status"),
        Point(
            1,
            "input",
            9,
            "uint16",
            "fluid_temperature",
            "degC",
            scale=0.1,
            offset=-50.0,
            byte_order="little",
        ),
        Point(1, "input", 10, "float32", "flow", "m3/h"),
        Point(1, "input", 12, "float32", "discharge_pressure", "bar", word_order="little"),
        Point(1, "input", 14, "float32", "suction_pressure", "bar", byte_order="little"),
        Point(
            1,
            "input",
            16,
            "float32",
            "motor_current",
            "A",
            byte_order="little",
            word_order="little",
        ),
        Point(1, "input", 18, "float64", "flow", "m3/h"),
        Point(
            1, "input", 22, "float64", "vibration", "mm/s", byte_order="little", word_order="little"
        ),
        Point(1, "input", 26, "uint32", "run_seconds", "s"),
        Point(
            1, "input", 28, "int32", "bearing_temperature", "degC", scale=0.001, word_order="little"
        ),
        Point(1, "input", 30, "uint64", "volume_litres", "l"),
        Point(
            1, "input", 34, "int64", "sim_time_ms", "ms", byte_order="little", word_order="little"
        ),
        Point(1, "input", 38, "string", "serial", length=8, value=SERIAL),
        Point(1, "input", 46, "string", "model", length=10, value=MODEL),
    ]
    hr = [
        Point(1, "holding", 0, "uint16", "speed_setpoint", "rpm", writable=True),
        Point(1, "holding", 1, "bits", "control", writable=True),
    ]
    co = [
        Point(1, "coil", 0, "bool", "alarm_lamp", writable=True),
        Point(1, "coil", 1, "bool", "pump_stop", writable=True),
    ]
    di = [Point(1, "discrete", i, "bool", name) for i, name in enumerate(STATUS_BITS)]
    return ir + hr + co + di + static_block(1, "holding") + static_block(1, "input")


def _tank_points() -> list[Point]:
    return [
        Point(2, "input", 0, "uint16", "tank_level", "m", scale=0.001),
        Point(2, "input", 1, "float32", "tank_level", "m", word_order="little"),
        Point(2, "holding", 0, "uint16", "tank_high_threshold", "m", scale=0.001, writable=True),
        Point(2, "discrete", 0, "bool", "tank_high"),
    ]


POINTS: list[Point] = _pump_points() + _tank_points()
UNITS = (1, 2)
STATIC_COIL_BASE = 32  # 16 constant coils / discrete inputs: bit i of STATIC_BITS


def points(unit: int | None = None, table: str | None = None) -> Iterator[Point]:
    for p in POINTS:
        if (unit is None or p.unit == unit) and (table is None or p.table == table):
            yield p


def table_size(unit: int, table: str) -> int:
    """Registers (or bits) a table spans, up to its last mapped address."""
    ends = [p.address + p.width for p in points(unit, table)]
    if table in ("coil", "discrete") and unit == 1:
        ends.append(STATIC_COIL_BASE + 16)
    return max(ends, default=0)
