"""A whole site end to end through mosquitto, as `edgefleet up` runs it (not a test).

    PYTHONPATH=. .venv/bin/python bench/site_e2e.py [--seconds 20]

Simulator (Modbus, its own process) → modbus adapter → aligner → inference → results, each a
process started by `SiteSupervisor`; a subscriber in this process takes every raw batch and
every result. Phases, each a fresh site on a fresh broker:

- idle: the Modbus source polled once a second (8 readings/s); CPU of the site over the phase;
- 1k: the Modbus source polled every 10 ms, 10 points (1,000 readings/s);
- 10k: the same plus an mqtt-ingest source fed by this process with 9 signals at 1 kHz, one
  message of 100 values per signal every 100 ms (9,000 readings/s).

Readings/s: readings seen on `raw/+` over the measured window. Latency: result arrival (local
clock) minus the sample time t it belongs to; a sample at t covers the readings of (t − period,
t], so this is the delay from the newest reading a result uses to that result. RSS and CPU per
instance from psutil (CPU: cpu time over the window / wall time, in % of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from edgefleet.broker import LocalBroker, free_port, wait_port
from edgefleet.site.supervisor import SiteSupervisor
from shared import codec
from shared.messages import now_ns
from shared.mqtt import BrokerSettings, MqttConnection, Received
from tests.inference.models import mlp

ROOT = Path(__file__).resolve().parents[1]
POINTS = [{"name": f"p{a}", "address": a} for a in range(10)]
VIB = [f"v{i}" for i in range(9)]


def site_files(root: Path, port: int, modbus: int, poll_ms: int, ingest: bool) -> Path:
    sources: list[dict[str, Any]] = [
        {
            "name": "plc1",
            "kind": "modbus",
            "device": {"port": modbus},
            "poll_ms": poll_ms,
            "blocks": [{"unit": 1, "table": "input", "points": POINTS}],
        }
    ]
    features = [
        {"signal": f"plc1/{p['name']}", "fill": "hold", "max_age_ms": 2000} for p in POINTS[:5]
    ]
    if ingest:
        sources.append(
            {
                "name": "vib",
                "kind": "mqtt",
                "inputs": [
                    {
                        "topic": "bench/vib",
                        "timestamp": {"path": "t", "unit": "ns"},
                        "signals": [{"name": v, "path": v, "period_us": 1000} for v in VIB],
                    }
                ],
            }
        )
        features += [{"signal": f"vib/{v}", "agg": "rms"} for v in VIB]
    flow = {
        "name": "bench",
        "align": {"period_ms": 100, "max_delay_ms": 300, "features": features},
        "model": {"path": "model.onnx"},
    }
    mlp(root / "model.onnx", f=len(features))
    (root / "flow.yaml").write_text(yaml.safe_dump(flow))
    site = {
        "site": "bench",
        "broker": {"port": port},
        "timings": {"status_interval_s": 2},
        "sources": sources,
        "flows": ["flow.yaml"],
    }
    (root / "site.yaml").write_text(yaml.safe_dump(site))
    return root / "site.yaml"


class Tap:
    def __init__(self) -> None:
        self.readings = 0
        self.latency_ms: list[float] = []
        self.counting = False

    async def on_message(self, message: Received) -> None:
        if not self.counting:
            return
        body = codec.decode(message.payload, message.content_type)
        if "/raw/" in message.topic:
            self.readings += len(body["t"])
        else:
            now = now_ns()
            self.latency_ms.extend(((now - np.asarray(body["t"])) / 1e6).tolist())


async def vibration(conn: MqttConnection, stop: asyncio.Event) -> None:
    """9 signals at 1 kHz: one JSON message of 100 values per signal every 100 ms."""
    k = np.arange(100)
    next_t = time.time()
    while not stop.is_set():
        t0 = int(next_t * 1e9)
        body = {
            "t": t0,
            **{v: np.sin(2 * math.pi * 50 * (t0 / 1e9 + k / 1000)).tolist() for v in VIB},
        }
        payload, ctype = codec.encode(body, "json")
        await conn.publish("bench/vib", payload, content_type=ctype)
        next_t += 0.1
        await asyncio.sleep(max(0.0, next_t - time.time()))


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


async def phase(name: str, seconds: float, poll_ms: int, ingest: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        modbus = free_port()
        sim = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "edgefleet.sim.cli", "--modbus-port", str(modbus)],
            "--no-opcua",
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        broker = LocalBroker(root / "broker").start()
        try:
            wait_port("127.0.0.1", modbus, 20)
            site = site_files(root, broker.port, modbus, poll_ms, ingest)
            return await measure(name, site, root, broker, sim, seconds, ingest)
        finally:
            broker.stop()
            sim.terminate()
            await sim.wait()


async def measure(
    name: str, site: Path, root: Path, broker: LocalBroker, sim: Any, seconds: float, ingest: bool
) -> dict[str, Any]:
    tap = Tap()
    conn = MqttConnection(BrokerSettings(port=broker.port, client_id="bench-tap"), tap.on_message)
    await conn.subscribe("ef/bench/raw/+", qos=0)
    await conn.subscribe("ef/bench/results/+", qos=0)
    runner = asyncio.create_task(conn.run())
    stop = asyncio.Event()
    async with SiteSupervisor(site, root / "w") as sup:
        await sup.wait_online(60)
        feeder = asyncio.create_task(vibration(conn, stop)) if ingest else None
        await asyncio.sleep(3)  # warm up
        procs = {n: psutil.Process(s.pid) for n, s in sup.instances.items() if s.pid}
        procs["mosquitto"] = psutil.Process(broker.process.pid)  # type: ignore[union-attr]
        cpu0 = {n: cpu_s([p]) for n, p in procs.items()}
        tap.counting, t0 = True, time.monotonic()
        await asyncio.sleep(seconds)
        tap.counting, wall = False, time.monotonic() - t0
        cpu = {n: 100 * (cpu_s([p]) - cpu0[n]) / wall for n, p in procs.items()}
        rss = {n: p.memory_info().rss / 2**20 for n, p in procs.items()}
        stop.set()
        if feeder:
            await feeder
        restarts = sum(s.restarts for s in sup.instances.values())
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    lat = np.asarray(tap.latency_ms) if tap.latency_ms else np.asarray([math.nan])
    return {
        "phase": name,
        "readings_s": tap.readings / wall,
        "results": len(tap.latency_ms),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "cpu": cpu,
        "rss": rss,
        "restarts": restarts,
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"\n[{r['phase']}] readings/s {r['readings_s']:.0f}, results {r['results']}, "
        f"latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms, restarts {r['restarts']}"
    )
    for n in r["cpu"]:
        print(f"  {n:<18} cpu {r['cpu'][n]:5.1f} %   rss {r['rss'][n]:6.1f} MiB")
    print(
        f"  {'site (sum)':<18} cpu {sum(r['cpu'].values()):5.1f} %   "
        f"rss {sum(r['rss'].values()):6.1f} MiB"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    report(await phase("idle", args.seconds, 1000, ingest=False))
    report(await phase("1k", args.seconds, 10, ingest=False))
    report(await phase("10k", args.seconds, 10, ingest=True))


if __name__ == "__main__":
    asyncio.run(main())
