"""Write requests on `ef/{site}/cmd/{source}`: write through the adapter's session, read back,
answer on the request's response topic with its correlation data.

Target: `{point: NAME}` (a point marked `writable`) or `{table, address}` and optionally `unit`
(1 by default): one coil or one uint16 holding register.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.modbus.config import NUMERIC, ModbusConfig, PointConfig
from services.modbus.decode import ReadRequest, decode_registers, encode_value
from services.modbus.device import Device, DeviceError
from shared import codec
from shared.errors import PayloadError
from shared.messages import WriteRequest, WriteResponse
from shared.mqtt import Received
from shared.runtime import Runtime

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, rt: Runtime, config: ModbusConfig, device: Device) -> None:
        self.rt, self.config, self.device = rt, config, device
        self.points = {p.name: (b.unit, b.table, p) for b in config.blocks for p in b.points}
        self.count = 0

    def _target(self, target: dict[str, Any]) -> tuple[int, str, PointConfig]:
        if "point" in target:
            found = self.points.get(str(target["point"]))
            if found is None or not found[2].writable:
                raise PayloadError(f"no writable point {target['point']!r} in {self.config.source}")
            return found
        try:
            unit = int(target.get("unit", 1))
            table, address = str(target["table"]), int(target["address"])
        except (KeyError, TypeError, ValueError):
            raise PayloadError(
                "target needs {point} or {table, address} (and unit, 1 by default)"
            ) from None
        if table not in ("coil", "holding"):
            raise PayloadError(f"cannot write to table {table!r}: only coil or holding")
        kind = "bool" if table == "coil" else "uint16"
        raw = PointConfig.model_validate({"name": "raw", "address": address, "type": kind})
        return unit, table, raw

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

    async def handle(self, message: Received) -> None:
        request = WriteRequest.from_wire(codec.decode(message.payload, message.content_type))
        try:
            unit, table, point = self._target(request.target)
            readback = await self.write(unit, table, point, float(request.value))
            response = WriteResponse(request_id=request.request_id, ok=True, readback=readback)
            self.count += 1
        except (PayloadError, DeviceError) as exc:
            log.warning("write %s to %s refused: %s", request.request_id, request.target, exc)
            response = WriteResponse(request_id=request.request_id, ok=False, error=str(exc))
        if message.response_topic:
            await self.rt.publish(
                message.response_topic, response, qos=1, correlation_data=message.correlation_data
            )
