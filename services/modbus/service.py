"""Modbus adapter: poll a device's registers and coils, publish reading batches, serve writes.

`edgefleet run modbus --config FILE`. One TCP session (plain or RTU framing) for all unit ids.
A request that times out or answers an exception code gives bad-quality readings (NaN) for its
points and shows in the status; the session is rebuilt when the device stays silent, and a
failed connect is tried again after a capped backoff (polls in between give bad readings).
Write requests arrive on `ef/{site}/cmd/{source}` (MQTT v5 request/response) and are answered
with the value read back.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from services.modbus.config import ModbusConfig
from services.modbus.decode import (
    Columns,
    ReadRequest,
    decode_bits,
    decode_registers,
    decode_string,
    plan,
)
from services.modbus.device import Device, DeviceError
from services.modbus.writes import Writer
from shared import clock
from shared.health import HealthModel
from shared.messages import Quality, ReadingBatch
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

NAME = "modbus"
log = logging.getLogger(__name__)
READ = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


class ModbusHealth(HealthModel):
    readings: int
    bad: int
    device_down: bool
    connects: int  # connect attempts
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
        self.columns = Columns.of(self.requests, self.signals)
        self.readings = 0
        self.bad = 0
        self.exceptions: Counter[str] = Counter()
        self.strings: dict[str, str] = {}
        self.writer = Writer(rt, config, self.device)
        # Per poll group (period): the earliest time a reading it has not yet sent can carry
        # (a reading is stamped within its read, and a read starts no earlier than scheduled).
        self._next_reading: dict[int, int] = {}

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        await self.device.close()

    def health(self) -> ModbusHealth:
        return ModbusHealth(
            readings=self.readings,
            bad=self.bad,
            device_down=self.device.down,
            connects=self.device.connects,
            errors=dict(self.exceptions),
            requests=len(self.requests),
            strings=dict(self.strings),
            writes=self.writer.count,
        )

    async def read(self, req: ReadRequest) -> tuple[int, np.ndarray, Quality]:
        """One request: stamp (midpoint of the round trip), values per point, quality."""
        t0 = clock.now_ns()
        try:
            rr = await self.device.call(
                READ[req.table], req.address, count=req.count, device_id=req.unit
            )
        except DeviceError as exc:
            key = f"0x{exc.code:02X}" if exc.code else "timeout"
            self.exceptions[key] += 1
            # an answer that says no, or none at all (a timeout, a refused connection): both
            # are what a person must hear about; the error channel merges a burst into one
            if self.rt is not None:
                last = req.address + req.count - 1
                self.rt.errors.error(
                    f"unit {req.unit} {req.table} {req.address}..{last}: {exc}; its "
                    f"{len(req.points)} point(s) are bad quality until it answers again"
                )
            return (t0 + clock.now_ns()) // 2, np.full(len(req.points), np.nan), Quality.BAD
        t = (t0 + clock.now_ns()) // 2
        if req.is_bits:
            return t, decode_bits(req, rr.bits), Quality.GOOD
        regs = np.asarray(rr.registers, dtype=np.uint16)
        for p in req.strings:
            self.strings[p.name] = decode_string(p, regs, req.address)
        return t, decode_registers(req, regs), Quality.GOOD

    def complete_ns(self) -> int:
        """No reading of this source stamped at or before this time is still to come: every
        group's next reading starts later (the aligner emits without waiting for a signal that
        did not change)."""
        return min(clock.now_ns(), *self._next_reading.values()) - 1

    async def poll_once(self, columns: Columns | None = None) -> ReadingBatch:
        """Read every request of `columns` (all by default) into one batch, column-wise."""
        cols = columns or self.columns
        n = len(cols)
        t = np.empty(n, np.int64)
        value = np.empty(n, np.float64)
        q = np.empty(n, np.uint8)
        for req, (a, b) in zip(cols.requests, cols.spans, strict=True):
            t_req, values, quality = await self.read(req)
            t[a:b], q[a:b] = t_req, quality
            value[a:b] = values if b - a == len(req.points) else values[req.readings]
        batch = ReadingBatch(self.config.source, self.signals, t, cols.sig, value, q)
        self.readings += n
        self.bad += int(np.count_nonzero(q))
        return batch

    def loops(self) -> dict[str, Loop]:
        periods: dict[int, list[ReadRequest]] = {}
        for r in self.requests:
            periods.setdefault(r.poll_ms, []).append(r)
        out: dict[str, Loop] = {}
        started = clock.now_ns()
        for period in periods:
            self._next_reading[period] = started

        for period, reqs in sorted(periods.items()):
            cols = Columns.of(reqs, self.signals)

            async def poll_loop(period: int = period, cols: Columns = cols) -> None:
                topic = self.rt.topics.raw(self.config.source)
                start = clock.monotonic()
                k = 0
                while True:
                    self._next_reading[period] = clock.now_ns()  # this poll's reads start now
                    batch = await self.poll_once(cols)
                    k = max(k + 1, int((clock.monotonic() - start) * 1000 / period))
                    wait = max(start + k * period / 1000 - clock.monotonic(), 0)
                    self._next_reading[period] = clock.now_ns() + int(wait * 1e9)
                    batch.complete_ns = self.complete_ns()
                    await self.rt.publish(topic, batch.to_wire(), qos=self.config.publish_qos)
                    await clock.sleep_until(start + k * period / 1000)

            out[f"poll_{period}ms_loop"] = poll_loop
        return out


async def main(config: ModbusConfig) -> None:
    await run(NAME, config, lambda rt: ModbusService(rt, config))


SPEC = ServiceSpec(NAME, ModbusConfig, main, service=ModbusService)
