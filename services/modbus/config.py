"""Configuration of the Modbus adapter: one device (a TCP endpoint, several unit ids), its points.

Addresses are 0-based within a table; Modicon numbers (40001, 30001, 10001) are refused with a
hint. A reader computes value = raw × scale + offset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.config import ServiceConfig, StrictModel, TopicId

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bool",
]
# The adapter's one table of register types: the numpy code of the big-endian value (once its
# words are in order) and the width in registers. Decoding, planning and writing all read it.
NUMERIC: dict[str, tuple[str, int]] = {
    "int16": ("i2", 1),
    "uint16": ("u2", 1),
    "int32": ("i4", 2),
    "uint32": ("u4", 2),
    "int64": ("i8", 4),
    "uint64": ("u8", 4),
    "float32": ("f4", 2),
    "float64": ("f8", 4),
}
MODICON = {"holding": 40001, "input": 30001, "discrete": 10001}


class PointConfig(StrictModel):
    """One value: `type` at `address` (registers), or a bit (`bit:` of a register, or a coil)."""

    name: TopicId
    address: int = Field(ge=0, le=65535)
    type: DataType = "uint16"
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    bit: int | None = Field(None, ge=0, le=15)  # one bit of a 16-bit register (a bit field)
    length: int | None = Field(None, ge=1, le=125)  # registers, for strings
    writable: bool = False

    @model_validator(mode="after")
    def _shape(self) -> PointConfig:
        if self.type == "string" and self.length is None:
            raise ValueError("a string point needs `length` (registers)")
        return self

    @property
    def width(self) -> int:
        if self.type == "string":
            return self.length or 1
        return NUMERIC[self.type][1] if self.type in NUMERIC else 1  # bool: one register or bit


class BlockConfig(StrictModel):
    """Points of one unit and table, polled together (contiguous ones in one request)."""

    unit: int = Field(1, ge=0, le=255)
    table: Table
    poll_ms: int | None = Field(None, ge=10)  # overrides the source's poll period
    points: list[PointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _addresses(self) -> BlockConfig:
        base = MODICON.get(self.table)
        for p in self.points:
            if base is not None and base <= p.address < base + 9999:
                raise ValueError(
                    f"point {p.name!r}: address {p.address} looks like a Modicon number; "
                    f"addresses are 0-based within the {self.table} table: use {p.address - base}"
                )
            if self.table in ("coil", "discrete") and p.type != "bool":
                raise ValueError(f"point {p.name!r}: {self.table} points have type bool")
            if self.table in ("holding", "input") and p.type == "bool" and p.bit is None:
                raise ValueError(f"point {p.name!r}: a bool in a register needs `bit`")
        return self


class DeviceConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    framer: Literal["tcp", "rtu"] = "tcp"  # rtu: RTU frames over TCP (serial gateways)
    timeout_s: float = Field(1.0, gt=0)
    dead_after_s: float = Field(5.0, gt=0)  # no answer this long: the device is reported down
    # after a failed connect, the next try waits a capped exponential backoff: reconnect_s,
    # doubling up to reconnect_max_s (polls in between give bad readings at once)
    reconnect_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class ModbusConfig(ServiceConfig):
    source: TopicId  # readings on ef/{site}/raw/{source}, writes served on ef/{site}/cmd/{source}
    device: DeviceConfig = Field(default_factory=lambda: DeviceConfig.model_validate({}))
    poll_ms: int = Field(1000, ge=10)
    max_registers: int = Field(125, ge=1, le=125)
    max_bits: int = Field(2000, ge=1, le=2000)
    blocks: list[BlockConfig] = Field(min_length=1)
    publish_qos: int = Field(0, ge=0, le=1)

    @model_validator(mode="after")
    def _unique(self) -> ModbusConfig:
        names = [p.name for b in self.blocks for p in b.points]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"point names must be unique in a source: {dup}")
        return self
