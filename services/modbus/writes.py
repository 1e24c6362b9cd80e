"""Write requests on `ef/{site}/cmd/{source}` (shared/requests.py serves them): write through
the adapter's session, read back, answer with the value read back.

Target: `{point: NAME}` (a point marked `writable`) or `{table, address}` and optionally `unit`
(1 by default): one coil or one uint16 holding register.
"""

from __future__ import annotations

import logging

import numpy as np

from services.modbus.config import NUMERIC, ModbusConfig, PointConfig
from services.modbus.decode import ReadRequest, decode_registers, encode_value
from services.modbus.device import Device, DeviceError
from shared.errors import Refused
from shared.messages import PointTarget, RegisterTarget, WriteRequest, WriteTarget
from shared.requests import RequestServer, serve_writes
from shared.runtime import Runtime

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, rt: Runtime, config: ModbusConfig, device: Device) -> None:
        self.rt, self.config, self.device = rt, config, device
        self.points = {p.name: (b.unit, b.table, p) for b in config.blocks for p in b.points}
        self.server: RequestServer[WriteRequest] | None = None

    async def start(self) -> None:
        self.server = await serve_writes(
            self.rt, self.rt.topics.cmd(self.config.source), self.handle
        )

    @property
    def count(self) -> int:
        return self.server.stats.served if self.server else 0

    def _target(self, target: WriteTarget) -> tuple[int, str, PointConfig]:
        if isinstance(target, PointTarget):
            found = self.points.get(target.point)
            if found is None or not found[2].writable:
                raise Refused(f"no writable point {target.point!r} in {self.config.source}")
            return found
        if not isinstance(target, RegisterTarget):
            raise Refused("target needs {point} or {table, address} (and unit, 1 by default)")
        if target.table not in ("coil", "holding"):
            raise Refused(f"cannot write to table {target.table!r}: only coil or holding")
        kind = "bool" if target.table == "coil" else "uint16"
        raw = PointConfig.model_validate({"name": "raw", "address": target.address, "type": kind})
        return 1 if target.unit is None else target.unit, target.table, raw

    async def write(self, unit: int, table: str, p: PointConfig, value: float) -> float:
        """Write, then read back and decode; returns the read-back value."""
        if table == "coil":
            await self.device.call("write_coil", p.address, bool(value), device_id=unit)
            rr = await self.device.call("read_coils", p.address, count=1, device_id=unit)
            return float(bool(rr.bits[0]))
        if table != "holding" or p.type not in NUMERIC or p.bit is not None:
            raise DeviceError(0, f"point {p.name!r} is not writable as a register")
        regs = encode_value(p, value)
        await self.device.call("write_registers", p.address, regs, device_id=unit)
        rr = await self.device.call(
            "read_holding_registers", p.address, count=p.width, device_id=unit
        )
        req = ReadRequest(unit, table, p.address, p.width, 0, [p])
        return float(decode_registers(req, np.asarray(rr.registers, dtype=np.uint16))[0])

    async def handle(self, request: WriteRequest) -> float:
        unit, table, point = self._target(request.target)
        try:
            return await self.write(unit, table, point, float(request.value))
        except DeviceError as exc:
            raise Refused(str(exc)) from None
