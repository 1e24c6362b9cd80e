"""Modbus adapter: poll a device's registers and coils, publish reading batches, serve writes.

`edgefleet run modbus --config FILE`. One TCP session (plain or RTU framing) for all unit ids.
A request that times out or answers an exception code gives bad-quality readings (NaN) for its
points and shows in the status; the session is rebuilt when the device stays silent.
Write requests arrive on `ef/{site}/cmd/{source}` (MQTT v5 request/response) and are answered
with the value read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import numpy as np

from services.modbus.config import ModbusConfig, PointConfig
from services.modbus.decode import ReadRequest, decode_bits, decode_registers, decode_string, plan
from services.modbus.device import Device, DeviceError
from services.modbus.writes import Writer
from shared.health import HealthModel
from shared.messages import Quality, ReadingBatch
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

NAME = "modbus"
log = logging.getLogger(__name__)


class ModbusHealth(HealthModel):
    readings: int
    bad: int
    device_down: bool
    errors: dict[str, int]  # exception codes (0x02) and timeouts, by count
    requests: int
    strings: dict[str, str]
    writes: int


class ModbusService(Service[ModbusConfig]):
    health_section = "modbus"

    def __init__(self, rt: Runtime, config: ModbusConfig) -> None:
        super().__init__(rt, config)
        self.device = Device(config)
        self.requests = plan(config)
        self.signals = [p.name for r in self.requests for p in r.points if p.type != "string"]
        self._sig = {name: i for i, name in enumerate(self.signals)}
        self.readings = 0
        self.bad = 0
        self.exceptions: Counter[str] = Counter()
        self.strings: dict[str, str] = {}
        self.writer = Writer(rt, config, self.device)

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        await self.device.close()

    def health(self) -> ModbusHealth:
        return ModbusHealth(
            readings=self.readings,
            bad=self.bad,
            device_down=self.device.down,
            errors=dict(self.exceptions),
            requests=len(self.requests),
            strings=dict(self.strings),
            writes=self.writer.count,
        )

    async def read(self, req: ReadRequest) -> tuple[int, np.ndarray, Quality]:
        """One request: stamp (midpoint of the round trip), values per point, quality."""
        t0 = time.time_ns()
        fn = {
            "holding": "read_holding_registers",
            "input": "read_input_registers",
            "coil": "read_coils",
            "discrete": "read_discrete_inputs",
        }[req.table]
        try:
            rr = await self.device.call(fn, req.address, count=req.count, device_id=req.unit)
        except DeviceError as exc:
            key = f"0x{exc.code:02X}" if exc.code else "timeout"
            self.exceptions[key] += 1
            return (t0 + time.time_ns()) // 2, np.full(len(req.points), np.nan), Quality.BAD
        t = (t0 + time.time_ns()) // 2
        if req.is_bits:
            return t, decode_bits(req, rr.bits), Quality.GOOD
        regs = np.asarray(rr.registers, dtype=np.uint16)
        for p in req.points:
            if p.type == "string":
                self.strings[p.name] = decode_string(p, regs, req.address)
        return t, decode_registers(req, regs), Quality.GOOD

    async def poll_once(self, requests: list[ReadRequest]) -> ReadingBatch:
        ts, sigs, values, qs = [], [], [], []
        for req in requests:
            t, vals, q = await self.read(req)
            for p, v in zip(req.points, vals, strict=True):
                if p.type == "string":
                    continue
                ts.append(t)
                sigs.append(self._sig[p.name])
                values.append(v)
                qs.append(q)
        batch = ReadingBatch.from_columns(self.config.source, self.signals, ts, sigs, values, qs)
        self.readings += len(batch)
        self.bad += int(np.count_nonzero(batch.q))
        return batch

    def loops(self) -> dict[str, Loop]:
        periods: dict[int, list[ReadRequest]] = {}
        for r in self.requests:
            periods.setdefault(r.poll_ms, []).append(r)
        out: dict[str, Loop] = {}
        for period, reqs in sorted(periods.items()):

            async def poll_loop(period: int = period, reqs: list[ReadRequest] = reqs) -> None:
                topic = self.rt.topics.raw(self.config.source)
                start = time.monotonic()
                k = 0
                while True:
                    batch = await self.poll_once(reqs)
                    await self.rt.publish(topic, batch.to_wire(), qos=self.config.publish_qos)
                    k = max(k + 1, int((time.monotonic() - start) * 1000 / period))
                    await asyncio.sleep(max(start + k * period / 1000 - time.monotonic(), 0))

            out[f"poll_{period}ms_loop"] = poll_loop
        return out


def point_by_name(config: ModbusConfig) -> dict[str, tuple[int, str, PointConfig]]:
    return {p.name: (b.unit, b.table, p) for b in config.blocks for p in b.points}


async def main(config: ModbusConfig) -> None:
    await run(NAME, config, lambda rt: ModbusService(rt, config))


SPEC = ServiceSpec(NAME, ModbusConfig, main)
