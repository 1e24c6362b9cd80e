"""Messages/s and readings/s through the runtime (publish → broker → subscribe), beside the
raw fan-through of the bare client library (paho) against the same broker in the same run.

    .venv/bin/python bench/runtime_throughput.py [--seconds 3]

For batches of 1, 10, 100 and 1,000 readings. Runtime: a `Runtime` publishing ReadingBatch
messages (encoded each time, as a service does) to a `Runtime` subscriber in another process
that decodes each into a ReadingBatch. Raw: paho publishing the same pre-encoded payload at QoS 0
to a paho subscriber in another process that only counts. Both count what arrived; the ratio is
runtime / raw for the same batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.broker import LocalBroker
from shared import codec
from shared.config import ServiceConfig
from shared.messages import ReadingBatch
from shared.mqtt import Received
from shared.runtime import Runtime

TOPIC = "ef/bench/raw/bench"


def batch(n: int) -> ReadingBatch:
    t0 = time.time_ns()
    return ReadingBatch.from_columns(
        "bench",
        [f"s{i}" for i in range(10)],
        t0 + np.arange(n) * 1000,
        np.arange(n) % 10,
        np.random.default_rng(0).normal(size=n),
    )


def cfg(port: int, instance: str) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {"site": "bench", "instance": instance, "broker": {"port": port}}
    )


def paho_subscriber(port: int, seconds: float, ready: mp.Event, out: mp.Queue) -> None:
    count = 0

    def on_message(*_: object) -> None:
        nonlocal count
        count += 1

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(TOPIC, 0)
    sub.loop_start()
    time.sleep(0.3)
    ready.set()
    time.sleep(seconds + 0.5)
    sub.loop_stop()
    out.put(count)


def runtime_subscriber(port: int, seconds: float, ready: mp.Event, out: mp.Queue) -> None:
    async def run() -> int:
        rt = Runtime("bench-sub", cfg(port, "sub"))
        readings = 0

        async def handle(message: Received) -> None:
            nonlocal readings
            readings += len(
                ReadingBatch.from_wire(codec.decode(message.payload, message.content_type))
            )

        await rt.subscribe(TOPIC, handle, qos=0)
        task = asyncio.create_task(rt.serve())
        await rt.mqtt.wait_connected()
        ready.set()
        await asyncio.sleep(seconds + 0.5)
        rt.stop.set()
        await task
        return readings

    out.put(asyncio.run(run()))


def run_with_subscriber(target, port: int, seconds: float, publish) -> int:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(port, seconds, ready, out))
    proc.start()
    ready.wait(30)
    publish()
    count = int(out.get(timeout=60))
    proc.join(10)
    return count


def paho_publish(port: int, payload: bytes, seconds: float) -> None:
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pub.publish(TOPIC, payload, 0)
    pub.loop_stop()
    pub.disconnect()


def runtime_publish(port: int, n: int, seconds: float) -> None:
    async def run() -> None:
        rt = Runtime("bench-pub", cfg(port, "pub"))
        task = asyncio.create_task(rt.serve())
        await rt.mqtt.wait_connected()
        wire = batch(n).to_wire()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await rt.publish(TOPIC, wire)
        rt.stop.set()
        await task

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    s = args.seconds
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp)) as broker:
        port = broker.port
        print(
            f"{'batch':>6} {'raw msg/s':>10} {'runtime msg/s':>14} {'ratio':>6} "
            f"{'runtime readings/s':>19}"
        )
        for n in (1, 10, 100, 1000):
            payload, _ = codec.encode(batch(n).to_wire())
            raw = (
                run_with_subscriber(
                    paho_subscriber, port, s, lambda payload=payload: paho_publish(port, payload, s)
                )
                / s
            )
            readings = (
                run_with_subscriber(
                    runtime_subscriber, port, s, lambda n=n: runtime_publish(port, n, s)
                )
                / s
            )
            msgs = readings / n
            print(f"{n:>6} {raw:>10.0f} {msgs:>14.0f} {msgs / raw:>6.2f} {readings:>19.0f}")


if __name__ == "__main__":
    main()
