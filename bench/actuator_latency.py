"""Actuator latency: from a result's publication to the write landing on the device, p50/p99.

    PYTHONPATH=. python bench/actuator_latency.py [--writes 200] [--adapter modbus|opcua|both]

The broker, the adapter (Modbus or OPC UA) and the actuator run as separate processes
(`edgefleet run`), as on a site; this process plays the inference instance (it publishes the
results) and runs the simulator, whose server notes the instant each write to the alarm lamp is
done: the Modbus server when the coil write arrives, the OPC UA server after it applied the
Write service call to `ns=2;s=Pump.AlarmLamp` (its PostWrite callback). Every result flips the
lamp (score 0.9, then 0.1, ...: for_samples 1, no cooldown), so each one is a write; the next
result goes out once the actuator's event for the previous one is seen, so the figures are of one
write at a time, not of a queue. Also reported: the actuator's own time
from sending the request to the read-back answer (`ms` in its events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from asyncua.common.callback import CallbackType, ServerItemCallback

from edgefleet.broker import LocalBroker
from edgefleet.sim.opcua_server import node_id
from edgefleet.sim.plant import PlantSimulator
from shared.messages import ModelRef, ResultBatch, Status, now_ns
from shared.topics import Topics
from tests.helpers import Probe

SITE, FLOW, SHA = "bench", "pump", "ab" * 32


LAMP_NODE = node_id("AlarmLamp")


def configs(port: int, adapter: str, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The adapter's config and the actuator's; `device` is the Modbus port or OPC UA endpoint."""
    base = {"site": SITE, "broker": {"port": port}, "log_level": "WARNING"}
    if adapter == "modbus":
        source = {
            **base,
            "instance": "modbus-plc1",
            "source": "plc1",
            "device": {"port": int(device)},
            "poll_ms": 1000,
            "blocks": [
                {
                    "table": "coil",
                    "points": [{"name": "alarm_lamp", "address": 0, "type": "bool"}],
                }
            ],
        }
        write: dict[str, Any] = {"source": "plc1", "table": "coil", "address": 0, "value": True}
    else:
        source = {
            **base,
            "instance": "opcua-opc1",
            "source": "opc1",
            "endpoint": device,
            "signals": [{"name": "alarm_lamp", "node": LAMP_NODE, "writable": True}],
            "watchdog": {"stall_after_s": None},  # the lamp only changes when written
        }
        write = {"source": "opc1", "signal": "alarm_lamp", "value": True}
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
                "write": write,
                "reset": {"when": "score < 0.6", "value": False},
                "cooldown_s": 0,
                "max_writes_per_minute": 100_000,
            }
        ],
    }
    return source, actuator


def note_writes(sim: PlantSimulator, adapter: str, landed: asyncio.Queue[int]) -> None:
    """Put the instant of each write of the alarm lamp on the simulator's server in `landed`."""
    if adapter == "modbus":
        assert sim.modbus is not None
        on_write = sim.modbus.on_write

        def note(unit: int, table: str, address: int, values: list[int]) -> None:
            if table == "coil" and address == 0:
                landed.put_nowait(time.time_ns())
            if on_write is not None:
                on_write(unit, table, address, values)

        sim.modbus.on_write = note
        return
    assert sim.opcua is not None and sim.opcua._server is not None
    lamp = sim.opcua._nodes["alarm_lamp"].nodeid

    def written(event: ServerItemCallback, _dispatcher: Any) -> None:
        done = time.time_ns()
        for item, status in zip(
            event.request_params.NodesToWrite, event.response_params, strict=True
        ):
            if item.NodeId == lamp and status.is_good():
                landed.put_nowait(done)

    sim.opcua._server.subscribe_server_callback(CallbackType.PostWrite, written)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def run(adapter: str, writes: int) -> tuple[list[float], list[float]]:
    """Latencies (ms) result published → lamp written on the device, and the actuator's own."""
    topics = Topics(SITE)
    instance = "modbus-plc1" if adapter == "modbus" else "opcua-opc1"
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp) / "broker").start()
        procs = []
        try:
            async with (
                PlantSimulator(opcua=adapter == "opcua", modbus=adapter == "modbus") as sim,
                Probe(broker.host, broker.port) as probe,
            ):
                landed: asyncio.Queue[int] = asyncio.Queue()
                note_writes(sim, adapter, landed)
                device = str(sim.modbus_port) if adapter == "modbus" else sim.opcua_endpoint
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
                    (adapter, "actuator"),
                    configs(broker.port, adapter, device or ""),
                    strict=True,
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
                await probe.wait_for(
                    topics.status(instance),
                    lambda s: (
                        s["state"] == "online"
                        and s["health"].get("opcua", {"connected": True})["connected"]
                    ),
                    timeout=30,
                )
                await probe.wait_for(
                    topics.status("actuator-pump"), lambda s: s["state"] == "online", timeout=30
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
                await stop(procs)  # before the simulator stops: no session lost at the end
        finally:
            await stop(procs)
            broker.stop()
    return delays, answers


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def report(adapter: str, delays: list[float], answers: list[float]) -> None:
    name, what = ("Modbus", "coil") if adapter == "modbus" else ("OPC UA", "node")
    print(f"{len(delays)} writes through the {name} adapter (one at a time)")
    print(
        f"  result published → {what} written on the device: "
        f"p50 {statistics.median(delays):.2f} ms, p99 {pct(delays, 99):.2f} ms, "
        f"max {max(delays):.2f} ms"
    )
    print(
        f"  actuator request → read-back answer: p50 {statistics.median(answers):.2f} ms, "
        f"p99 {pct(answers, 99):.2f} ms"
    )


async def run_all(adapters: list[str], writes: int) -> None:
    for adapter in adapters:
        report(adapter, *await run(adapter, writes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=200)
    p.add_argument("--adapter", choices=["modbus", "opcua", "both"], default="both")
    args = p.parse_args()
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # the simulator's server: no security
    adapters = ["modbus", "opcua"] if args.adapter == "both" else [args.adapter]
    asyncio.run(run_all(adapters, args.writes))


if __name__ == "__main__":
    main()
