"""OPC UA adapter throughput: data changes/s into the broker and CPU per 1,000 readings, beside
a raw asyncua subscription client against the same server in the same run; and the time from a
server restart to the first good reading again.

    PYTHONPATH=. python bench/opcua_throughput.py [--seconds 5]

Cases: 200 signals changing every 100 ms, 1,000 signals changing every 1 s. The server (a plain
asyncua server with that many Double variables) runs in a child process, so this process's CPU
time is the client's alone. Both clients subscribe with a 100 ms publishing interval and a
sampling interval equal to the update period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.server.server import Server

from edgefleet.broker import LocalBroker
from edgefleet.sim.plant import free_port
from services.opcua.config import OpcUaConfig
from services.opcua.service import OpcuaService
from shared.config import validate
from shared.messages import ReadingBatch
from shared.runtime import Runtime


def serve(port: int, n: int, period_s: float, ready: Any) -> None:
    async def run() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
        ns = await server.register_namespace("urn:edgefleet:bench")
        folder = await server.nodes.objects.add_object(f"ns={ns};s=Bench", f"{ns}:Bench")
        nodes = [
            (await folder.add_variable(f"ns={ns};s=v{i}", f"{ns}:v{i}", 0.0)).nodeid
            for i in range(n)
        ]
        await server.start()
        ready.set()
        k = 0
        start = time.monotonic()
        while True:
            k += 1
            now = datetime.now(UTC)
            for i, nid in enumerate(nodes):
                dv = ua.DataValue(ua.Variant(float(k * 1000 + i)), SourceTimestamp=now)
                await server.write_attribute_value(nid, dv)
            await asyncio.sleep(max(0.0, start + k * period_s - time.monotonic()))

    asyncio.run(run())


class Server_:
    def __init__(self, n: int, period_s: float) -> None:
        self.n, self.period_s = n, period_s
        self.port = free_port()
        self.proc: multiprocessing.Process | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/bench"

    async def start(self) -> float:
        """Start the server; return the monotonic time it listens."""
        ready = multiprocessing.Event()
        self.proc = multiprocessing.Process(
            target=serve, args=(self.port, self.n, self.period_s, ready), daemon=True
        )
        self.proc.start()
        await asyncio.to_thread(ready.wait, 60)
        return time.monotonic()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.n += 1


async def raw(server: Server_, seconds: float) -> tuple[float, float]:
    """asyncua's own subscription API, one handler call per value."""
    counter = Counter()
    async with Client(server.endpoint, timeout=10) as client:
        sub = await client.create_subscription(100, counter)
        nodes = [client.get_node(f"ns=2;s=v{i}") for i in range(server.n)]
        queue = max(2, int(2 * 100 / (server.period_s * 1000)) + 1)
        await sub.subscribe_data_change(
            nodes, queuesize=queue, sampling_interval=server.period_s * 1000
        )
        await asyncio.sleep(1.5)
        n0, cpu0, t0 = counter.n, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        n, cpu, elapsed = counter.n - n0, time.process_time() - cpu0, time.monotonic() - t0
        await sub.delete()
    return n / elapsed, cpu / max(n, 1) * 1e6


def adapter_config(server: Server_, broker: LocalBroker) -> OpcUaConfig:
    return validate(
        OpcUaConfig,
        {
            "site": "bench",
            "instance": "opcua-bench",
            "source": "opc",
            "endpoint": server.endpoint,
            "publishing_ms": 100,
            "sampling_ms": server.period_s * 1000,
            "signals": [{"name": f"v{i}", "node": f"ns=2;s=v{i}"} for i in range(server.n)],
            "broker": {"host": broker.host, "port": broker.port},
            "watchdog": {
                "keepalive_s": 1.0,
                "stall_after_s": 5.0,
                "check_s": 0.1,
                "reconnect_initial_s": 0.05,
                "reconnect_max_s": 0.2,
            },
        },
        "bench",
    )


async def adapter(
    server: Server_, broker: LocalBroker, seconds: float, restart: bool
) -> tuple[float, float, float | None, int]:
    cfg = adapter_config(server, broker)
    rt = Runtime("opcua", cfg)
    a = OpcuaService(rt, cfg)
    good_after: list[float] = []
    restarted_at: list[float] = []
    good_again = asyncio.Event()
    publish = a.publish

    async def sink(batch: ReadingBatch) -> None:
        if restarted_at and not good_after and (batch.q == 0).any():
            good_after.append(time.monotonic())
            good_again.set()
        await publish(batch)

    a.session.sink = sink
    mqtt = asyncio.create_task(rt.mqtt.run())
    await asyncio.wait_for(rt.mqtt.wait_connected(), 10)
    session = asyncio.create_task(a.session.run())
    await asyncio.wait_for(a.session.wait_ready(), 30)
    await asyncio.sleep(1.5)
    h = a.session.health
    n0, cpu0, t0 = h.readings, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    n, cpu, elapsed = h.readings - n0, time.process_time() - cpu0, time.monotonic() - t0
    recovery = None
    if restart:
        server.stop()
        await asyncio.sleep(1.0)
        restarted_at.append(await server.start())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(good_again.wait(), 30)
        recovery = good_after[0] - restarted_at[0] if good_after else None
    session.cancel()
    await asyncio.gather(session, return_exceptions=True)
    await a.session.close()
    dropped = rt.mqtt.stats.dropped
    mqtt.cancel()
    await asyncio.gather(mqtt, return_exceptions=True)
    return n / elapsed, cpu / max(n, 1) * 1e6, recovery, dropped


async def case(n: int, period_s: float, seconds: float, broker: LocalBroker) -> None:
    server = Server_(n, period_s)
    await server.start()
    try:
        raw_rate, raw_cpu = await raw(server, seconds)
        rate, cpu, recovery, dropped = await adapter(server, broker, seconds, restart=True)
    finally:
        server.stop()
    offered = n / period_s
    print(f"== {n} signals every {period_s * 1000:.0f} ms (offered {offered:,.0f} changes/s)")
    print(f"raw asyncua subscription: {raw_rate:,.0f} changes/s, CPU {raw_cpu:.1f} ms / 1,000")
    print(
        f"adapter into the broker:  {rate:,.0f} readings/s, CPU {cpu:.1f} ms / 1,000 readings, "
        f"{dropped} dropped"
    )
    print(
        f"ratio adapter/raw: rate {rate / raw_rate:.2f}, CPU per reading {cpu / raw_cpu:.2f}; "
        f"adapter/offered {rate / offered:.2f}"
    )
    print(
        "server restart → first good reading: "
        + (f"{recovery:.2f} s" if recovery is not None else "none within 30 s")
    )


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp)).start()
        try:
            await case(200, 0.1, seconds, broker)
            await case(1000, 1.0, seconds, broker)
        finally:
            broker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)  # asyncua logs tracebacks on a server restart
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(ap.parse_args().seconds))
