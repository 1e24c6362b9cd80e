"""Modbus adapter throughput: readings/s into the broker and CPU per 1,000 readings, with 10
blocks of 100 holding registers, beside raw pymodbus requests/s against the same server.

    PYTHONPATH=. python bench/modbus_throughput.py [--seconds 5]

The Modbus server runs in a child process so this process's CPU time is the client's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgefleet.broker import LocalBroker
from edgefleet.sim.plant import free_port
from services.modbus.config import ModbusConfig
from services.modbus.service import ModbusService
from shared.config import validate
from shared.runtime import Runtime

BLOCKS, REGS = 10, 100


def serve(port: int) -> None:
    async def run() -> None:
        data = [SimData(0, count=BLOCKS * REGS, values=1234, datatype=DataType.REGISTERS)]
        server = ModbusTcpServer(SimDevice(1, simdata=data), address=("127.0.0.1", port))
        await server.serve_forever()

    asyncio.run(run())


async def raw(port: int, seconds: float) -> tuple[float, float]:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await c.connect()
    n, cpu0, t0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        await c.read_holding_registers((n % BLOCKS) * REGS, count=REGS, device_id=1)
        n += 1
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    c.close()
    return n / elapsed, cpu / n * 1e3


async def adapter(port: int, broker: LocalBroker, seconds: float) -> tuple[float, float]:
    blocks = [
        {
            "table": "holding",
            "points": [{"name": f"b{b}r{i}", "address": b * REGS + i} for i in range(REGS)],
        }
        for b in range(BLOCKS)
    ]
    cfg = validate(
        ModbusConfig,
        {
            "site": "bench",
            "instance": "modbus-bench",
            "source": "plc",
            "device": {"port": port},
            "poll_ms": 10,
            "broker": {"host": broker.host, "port": broker.port},
            "blocks": blocks,
        },
        "bench",
    )
    rt = Runtime("modbus", cfg)
    poller = ModbusService(rt, cfg)
    mqtt = asyncio.create_task(rt.mqtt.run())
    await asyncio.wait_for(rt.mqtt.wait_connected(), 10)
    topic = rt.topics.raw("plc")
    n, cpu0, t0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:  # back to back: the sustained ceiling
        batch = await poller.poll_once()
        await rt.publish(topic, batch.to_wire())
        n += len(batch)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    mqtt.cancel()
    await asyncio.gather(mqtt, return_exceptions=True)
    await poller.device.close()
    return n / elapsed, cpu / n * 1e3


async def main(seconds: float) -> None:
    port = free_port()
    proc = multiprocessing.Process(target=serve, args=(port,), daemon=True)
    proc.start()
    await asyncio.sleep(1.0)
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp)).start()
        try:
            req_s, raw_ms = await raw(port, seconds)
            rdg_s, cpu_ms = await adapter(port, broker, seconds)
        finally:
            broker.stop()
            proc.terminate()
            proc.join()
    print(
        f"raw pymodbus: {req_s:,.0f} requests/s of {REGS} registers "
        f"= {req_s * REGS:,.0f} registers/s; client CPU {raw_ms:.3f} ms per request"
    )
    print(
        f"adapter:      {rdg_s:,.0f} readings/s into the broker "
        f"({rdg_s / REGS:,.0f} requests/s); CPU {cpu_ms * 1000:.1f} ms per 1,000 readings"
    )
    print(f"ratio adapter/raw registers per second: {rdg_s / (req_s * REGS):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(ap.parse_args().seconds))
