"""Modbus TCP server of the simulator: a register image per unit, served by pymodbus.

`framer="rtu"` serves RTU frames (unit id, PDU, CRC; no MBAP header) over the TCP connection,
like a serial-to-Ethernet gateway in transparent mode; the default is plain Modbus TCP.

The image (numpy arrays) is the one source of truth. pymodbus calls `_action` on every request;
a read copies the requested range from the image into pymodbus's registers, a write lands in
the image and is reported to `on_write`. Unmapped addresses answer "illegal data address".
`mute()` makes the device stop answering (answers are dropped until `unmute()`),
`fail_with(code, unit=None)` makes every request (or those to one unit) answer with an exception
code, any of 01-0B: the ones pymodbus names through its request handling, the others (0x09,
which the Modbus specification leaves unassigned, yet a device may send) by rewriting the
exception byte of the answer on its way out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgefleet.sim import registers as regmap

log = logging.getLogger(__name__)

FC_TABLE = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
WriteCallback = Callable[[int, str, int, list[int]], None]
Framer = Literal["tcp", "rtu"]
FRAMERS: dict[str, FramerType] = {"tcp": FramerType.SOCKET, "rtu": FramerType.RTU}
SimAction = Callable[
    [int, int, int, int, list[int], list[int] | list[bool] | None],
    Coroutine[None, None, ExcCodes | None],
]


@dataclass
class UnitImage:
    """Current contents of one unit's four tables."""

    unit: int
    holding: np.ndarray = field(init=False)
    input: np.ndarray = field(init=False)
    coil: np.ndarray = field(init=False)
    discrete: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for table in ("holding", "input"):
            arr = np.zeros(regmap.table_size(self.unit, table), dtype=np.uint16)
            for p in regmap.points(self.unit, table):
                if p.value is not None:
                    arr[p.address : p.address + p.width] = p.registers()
            setattr(self, table, arr)
        for table in ("coil", "discrete"):
            size = (regmap.table_size(self.unit, table) + 15) // 16 * 16
            bits = np.zeros(max(size, 16), dtype=bool)
            if self.unit == 1:
                base = regmap.STATIC_COIL_BASE
                bits[base : base + 16] = [(regmap.STATIC_BITS >> i) & 1 for i in range(16)]
            setattr(self, table, bits)

    def table(self, name: str) -> np.ndarray:
        arr: np.ndarray = getattr(self, name)
        return arr

    def put(self, point: regmap.Point, value: float | int | str | bool) -> None:
        """Encode `value` at the point's address."""
        arr = self.table(point.table)
        if point.dtype == "bool":
            arr[point.address] = bool(value)
        else:
            arr[point.address : point.address + point.width] = point.registers(value)

    def _sim_blocks(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """pymodbus blocks covering exactly the mapped addresses (the rest is invalid)."""

        def reg_blocks(table: str) -> list[SimData]:
            out = []
            for p in regmap.points(self.unit, table):
                out.append(
                    SimData(
                        p.address,
                        count=p.width,
                        values=0,
                        datatype=DataType.REGISTERS,
                        readonly=not p.writable,
                    )
                )
            return out or [SimData(0, values=0, datatype=DataType.INVALID)]

        def bit_block(table: str) -> list[SimData]:
            return [SimData(0, values=[False] * len(self.table(table)), datatype=DataType.BITS)]

        return bit_block("coil"), bit_block("discrete"), reg_blocks("holding"), reg_blocks("input")


async def _no_target(*_args: object) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


class ModbusSimServer:
    """pymodbus TCP server over the images of every unit (TCP or RTU framing)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        on_write: WriteCallback | None = None,
        framer: Framer = "tcp",
    ) -> None:
        if framer not in FRAMERS:
            raise ValueError(f"modbus framer must be one of {sorted(FRAMERS)}, not {framer!r}")
        self.host, self.port, self.framer = host, port, framer
        self.images = {unit: UnitImage(unit) for unit in regmap.UNITS}
        self.on_write = on_write
        self.requests = 0
        self._server: ModbusTcpServer | None = None
        self._muted = False
        self._exceptions: dict[int | None, int] = {}  # unit (None: every unit) -> code

    def mute(self) -> None:
        """Stop answering: every request is taken and dropped (the client times out)."""
        self._muted = True

    def unmute(self) -> None:
        self._muted = False

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._muted:
            return b""
        # An MBAP frame (7 bytes) with an exception PDU: function | 0x80, the code stand-in.
        if len(data) == 9 and data[7] & 0x80 and data[8] == ExcCodes.DEVICE_FAILURE:
            code = self._exceptions.get(data[6], self._exceptions.get(None))
            if code is not None and code not in ExcCodes._value2member_map_:
                return data[:8] + bytes([code])
        return data

    def fail_with(self, code: int | None, unit: int | None = None) -> None:
        """Answer every request (to `unit`, or to every unit) with Modbus exception `code`
        (1..11), or None to stop."""
        if code is None:
            self._exceptions.pop(unit, None)
            return
        if not 1 <= code <= 11:
            raise ValueError(f"a Modbus exception code is 1..11 here, not {code}")
        if code not in ExcCodes._value2member_map_ and self.framer != "tcp":
            raise ValueError(f"exception code {code} is served with TCP framing only")
        self._exceptions[unit] = code

    async def start(self) -> None:
        devices = []
        for unit, image in self.images.items():
            devices.append(
                SimDevice(unit, simdata=image._sim_blocks(), action=self._make_action(unit))
            )
        # Any other unit id: answer like a gateway whose target does not respond (0x0B).
        devices.append(
            SimDevice(
                0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)], action=_no_target
            )
        )
        self._server = ModbusTcpServer(
            devices,
            framer=FRAMERS[self.framer],
            address=(self.host, self.port),
            trace_packet=self._trace_packet,
        )
        await self._server.serve_forever(background=True)
        log.info("modbus server (%s framing) on %s:%d", self.framer, self.host, self.port)

    async def stop(self) -> None:
        self._muted = False
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
            log.info("modbus server on port %d stopped", self.port)

    def _make_action(self, unit: int) -> SimAction:
        async def action(
            func_code: int,
            start: int,
            address: int,
            count: int,
            current: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return await self._action(unit, func_code, start, address, count, current, set_values)

        return action

    async def _action(
        self,
        unit: int,
        func_code: int,
        start: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        code = self._exceptions.get(unit, self._exceptions.get(None))
        if code is not None:  # a code pymodbus has no name for goes out as 04, then rewritten
            return (
                ExcCodes(code) if code in ExcCodes._value2member_map_ else ExcCodes.DEVICE_FAILURE
            )
        table = FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        image = self.images[unit]
        arr = image.table(table)
        if table in ("coil", "discrete"):
            # `start` and `count` are in 16-bit registers of packed bits here.
            first = address // 16
            if set_values is not None:
                arr[address : address + len(set_values)] = [bool(v) for v in set_values]
            bits = arr[first * 16 : (first + count) * 16]
            packed = np.packbits(bits, bitorder="little").view("<u2")
            current[first - start : first - start + count] = [int(w) for w in packed]
        else:
            if set_values is not None:
                arr[address : address + len(set_values)] = set_values
            current[address - start : address - start + count] = [
                int(w) for w in arr[address : address + count]
            ]
        if set_values is not None and self.on_write is not None:
            self.on_write(unit, table, address, [int(v) for v in set_values])
        return None
