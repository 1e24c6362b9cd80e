"""Actuator latency: from a result's publication to the write landing on the device, p50/p99.

    PYTHONPATH=. python bench/actuator_latency.py [--writes 200]

The broker, the Modbus adapter and the actuator run as separate processes (`edgefleet run`),
as on a site; this process plays the inference instance (it publishes the results) and runs the
simulator, whose Modbus server notes the instant each write to the alarm-lamp coil arrives.
Every result flips the lamp (score 0.9, then 0.1, ...: for_samples 1, no cooldown), so each one
is a write; the next result goes out once the actuator's event for the previous one is seen, so
the figures are of one write at a time, not of a queue. Also reported: the actuator's own time
from sending the request to the read-back answer (`ms` in its events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.broker import LocalBroker
from edgefleet.sim.plant import PlantSimulator
from shared.messages import ModelRef, ResultBatch, Status, now_ns
from shared.topics import Topics
from tests.helpers import Probe

SITE, FLOW, SHA = "bench", "pump", "ab" * 32


def configs(port: int, modbus_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    base = {"site": SITE, "broker": {"port": port}, "log_level": "WARNING"}
    modbus = {
        **base,
        "instance": "modbus-plc1",
        "source": "plc1",
        "device": {"port": modbus_port},
        "poll_ms": 1000,
        "blocks": [
            {
                "table": "coil",
                "points": [{"name": "alarm_lamp", "address": 0, "type": "bool"}],
            }
        ],
    }
    actuator = {
        **base,
        "instance": "actuator-pump",
        "flow": FLOW,
        "enabled": True,
        "watchdog_s": 600,
        "actions": [
            {
                "name": "lamp",
                "when": "score > 0.8",
                "write": {"source": "plc1", "table": "coil", "address": 0, "value": True},
                "reset": {"when": "score < 0.6", "value": False},
                "cooldown_s": 0,
                "max_writes_per_minute": 100_000,
            }
        ],
    }
    return modbus, actuator


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def run(writes: int) -> None:
    topics = Topics(SITE)
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp) / "broker").start()
        procs = []
        try:
            async with PlantSimulator(opcua=False) as sim, Probe(broker.host, broker.port) as probe:
                assert sim.modbus is not None
                landed: asyncio.Queue[int] = asyncio.Queue()
                on_write = sim.modbus.on_write

                def note(unit: int, table: str, address: int, values: list[int]) -> None:
                    if table == "coil" and address == 0:
                        landed.put_nowait(time.time_ns())
                    if on_write is not None:
                        on_write(unit, table, address, values)

                sim.modbus.on_write = note
                status = Status(
                    instance=f"inference-{FLOW}",
                    service="inference",
                    state="online",
                    health={"inference": {"model": {"sha256": SHA}}},
                )
                await probe.publish(
                    topics.status(f"inference-{FLOW}"), status.to_wire(), qos=1, retain=True
                )
                await probe.subscribe(topics.everything())
                for name, cfg in zip(
                    ("modbus", "actuator"), configs(broker.port, sim.modbus_port or 0), strict=True
                ):
                    path = Path(tmp) / f"{name}.yaml"
                    path.write_text(json.dumps(cfg))
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "edgefleet.cli",
                            "run",
                            name,
                            "--config",
                            str(path),
                        )
                    )
                for instance in ("modbus-plc1", "actuator-pump"):
                    await probe.wait_for(
                        topics.status(instance), lambda s: s["state"] == "online", timeout=30
                    )
                delays, answers = [], []
                for k in range(writes + 10):
                    t = now_ns()
                    batch = ResultBatch(
                        FLOW,
                        ModelRef("ae", "3", SHA),
                        np.array([t], np.int64),
                        {"score": np.array([0.9 if k % 2 == 0 else 0.1])},
                        np.zeros(1, np.float32),
                    )
                    sent = time.time_ns()
                    await probe.publish(topics.results(FLOW), batch.to_wire(), qos=0)
                    arrived = await asyncio.wait_for(landed.get(), 5)
                    [event] = await probe.wait_for(
                        topics.events(FLOW), lambda e, rid=batch.ids[0]: e["result_id"] == rid
                    )
                    if event["decision"] != "acted":
                        raise SystemExit(f"unexpected event: {event}")
                    if k >= 10:  # warm-up
                        delays.append((arrived - sent) / 1e6)
                        answers.append(event["write"]["ms"])
        finally:
            for proc in procs:
                proc.terminate()
                await proc.wait()
            broker.stop()
    print(f"{writes} writes through the Modbus adapter (one at a time)")
    print(
        f"result published → coil written on the device: p50 {statistics.median(delays):.2f} ms, "
        f"p99 {pct(delays, 99):.2f} ms, max {max(delays):.2f} ms"
    )
    print(
        f"actuator request → read-back answer: p50 {statistics.median(answers):.2f} ms, "
        f"p99 {pct(answers, 99):.2f} ms"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=200)
    asyncio.run(run(p.parse_args().writes))


if __name__ == "__main__":
    main()
