"""Sparkplug B: the sink's DDATA/s and the source's readings/s, each beside the raw limit
(protobuf encode or decode + a bare paho client) measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/sparkplug.py [--messages 20000] [--per-message 10]

Sink: `--messages` result batches of `--per-message` results (every score changes) go through
`SparkplugSink.send` in this process (no forwarder queue: forwarder_throughput.py measures that),
one DDATA of `--per-message` metric values each; the clock stops when a paho subscriber has every
DDATA. Raw: the same DDATA payloads built with the protobuf module and published by bare paho
(QoS 0), same subscriber.

Source: a paho publisher (another process) sends an NBIRTH and `--messages` DDATA of
`--per-message` metrics each (pre-encoded, QoS 0) to `edgefleet run sparkplug` (its own
process, `--coalesce-ms`: 5 by default, 0 for one reading batch per message); the clock stops
when a paho subscriber on raw/{source} has every reading. Raw: the same publisher to a paho
subscriber that decodes each payload with protobuf and reads every value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgefleet.broker import LocalBroker  # noqa: E402
from services.forwarder.config import ForwarderConfig  # noqa: E402
from services.forwarder.queue import RESULT, Row  # noqa: E402
from services.forwarder.sparkplug import SparkplugSink  # noqa: E402
from shared import codec  # noqa: E402
from shared.messages import ModelRef, ReadingBatch, ResultBatch  # noqa: E402
from shared.sparkplug import Metric, Payload  # noqa: E402
from shared.sparkplug import sparkplug_b_pb2 as pb  # noqa: E402

SITE, GROUP, NODE, FLOW = "bench", "plant", "edge1", "pump"
T0_MS = 1_700_000_000_000


def client(port: int) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    return c


class Counter:
    """A paho subscriber that counts (or weighs, with `weigh`) what arrives on one filter."""

    def __init__(self, port: int, topic: str, weigh: Any = None) -> None:
        self.count, self.target, self.last = 0, -1, 0.0
        self.weigh = weigh or (lambda payload: 1)
        self.done = threading.Event()
        self.sub = client(port)
        self.sub.on_message = self._on_message
        self.sub.subscribe(topic, 0)
        self.sub.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.count += self.weigh(message.payload)
        self.last = time.perf_counter()
        if self.count >= self.target >= 0:
            self.done.set()

    def wait(self, target: int, idle_s: float = 10.0) -> None:
        """Until `target` arrived, or nothing did for `idle_s` (QoS 0 may lose some: the rate is
        then of what arrived, and the loss is printed)."""
        self.target = target
        if self.count >= target:
            self.done.set()
        seen = -1
        while not self.done.wait(idle_s):
            if self.count == seen:
                print(f"  lost: {target - self.count} of {target} (QoS 0)")
                return
            seen = self.count

    def close(self) -> None:
        self.sub.loop_stop()
        self.sub.disconnect()


def ddata(i: int, per: int) -> bytes:
    """What the sink sends for batch i: `per` values of one metric, each with its time."""
    p = Payload(timestamp=T0_MS, seq=i % 256)
    for j in range(per):
        p.metrics.append(
            Metric(alias=3, timestamp=T0_MS + i * per + j, datatype=pb.Float, float_value=i + j)
        )
    data: bytes = p.SerializeToString()
    return data


# ---------------------------------------------------------------- sink


def sink_raw(port: int, messages: int, per: int) -> float:
    topic = f"spBv1.0/{GROUP}/DDATA/{NODE}/{FLOW}"
    counter = Counter(port, topic)
    pub = client(port)
    pub.loop_start()
    start = time.perf_counter()
    infos = [pub.publish(topic, ddata(i, per), 0) for i in range(messages)]
    infos[-1].wait_for_publish(120)
    counter.wait(messages)
    elapsed = counter.last - start
    pub.loop_stop()
    pub.disconnect()
    counter.close()
    return counter.count / elapsed


def result_rows(messages: int, per: int) -> list[Row]:
    rows = []
    for i in range(messages):
        t = (T0_MS + np.arange(i * per, (i + 1) * per, dtype=np.int64)) * 1_000_000
        batch = ResultBatch(
            FLOW,
            ModelRef("pump-ae", "3", "ab" * 32),
            t,
            {"score": (np.arange(per, dtype=np.float32) + i * per) / 7},
            np.full(per, 40.0, np.float32),
        )
        payload, ctype = codec.encode(batch.to_wire())
        rows.append(Row(i, RESULT, f"ef/{SITE}/results/{FLOW}", payload, ctype, per, 0, False))
    return rows


async def sink_run(port: int, work: Path, messages: int, per: int) -> float:
    config = ForwarderConfig.model_validate(
        {
            "site": SITE,
            "instance": "fwd",
            "queue_dir": str(work),
            "sinks": [
                {"kind": "sparkplug", "name": "scada", "broker": {"port": port}, "group_id": GROUP}
            ],
        }
    )
    sink = SparkplugSink(config.sinks[0], config)  # type: ignore[arg-type]
    await sink.start()
    task = asyncio.create_task(sink.connection.run())
    await sink.ready()
    counter = Counter(port, f"spBv1.0/{GROUP}/DDATA/{SITE}/{FLOW}")
    rows = result_rows(messages + 1, per)
    await sink.send(rows[:1])  # the device's DBIRTH, before the clock
    start = time.perf_counter()
    for i in range(1, messages + 1):
        await sink.send(rows[i : i + 1])  # one DDATA per send (a send's rows share one)
    await asyncio.to_thread(counter.wait, messages)
    elapsed = counter.last - start
    counter.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return counter.count / elapsed


# ---------------------------------------------------------------- source


def node_publisher(port: int, messages: int, per: int, go: Any) -> None:
    birth = Payload(timestamp=T0_MS, seq=0)
    birth.metrics.append(Metric(name="bdSeq", datatype=pb.Int64, long_value=0))
    for j in range(per):
        birth.metrics.append(Metric(name=f"m{j}", alias=j, datatype=pb.Double, double_value=0.0))
    data = []
    for i in range(messages):
        p = Payload(timestamp=T0_MS + i, seq=(i + 1) % 256)
        for j in range(per):
            p.metrics.append(Metric(alias=j, double_value=i + j))
        data.append(p.SerializeToString())
    pub = client(port)
    pub.loop_start()
    go.wait()
    pub.publish(f"spBv1.0/{GROUP}/NBIRTH/{NODE}", birth.SerializeToString(), 0)
    infos = [pub.publish(f"spBv1.0/{GROUP}/NDATA/{NODE}", payload, 0) for payload in data]
    infos[-1].wait_for_publish(120)  # written to the socket: QoS 0 goes out in order
    pub.loop_stop()
    pub.disconnect()


def start_node(port: int, messages: int, per: int) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    proc = ctx.Process(target=node_publisher, args=(port, messages, per, go))
    proc.start()
    time.sleep(1.5 + messages / 20_000)  # encoding before the clock starts
    return proc, go


def raw_decode(payload: bytes) -> int:
    p = Payload.FromString(payload)
    values = [m.double_value for m in p.metrics]
    return len(values)


def source_raw(port: int, messages: int, per: int) -> float:
    counter = Counter(port, f"spBv1.0/{GROUP}/+/{NODE}", raw_decode)
    proc, go = start_node(port, messages, per)
    start = time.perf_counter()
    go.set()
    counter.wait(messages * per + per)  # the birth's values too
    elapsed = counter.last - start
    proc.join(30)
    counter.close()
    return counter.count / elapsed


def readings_in(payload: bytes) -> int:
    return len(ReadingBatch.from_wire(codec.decode(payload, codec.MSGPACK)))


def source_run(port: int, work: Path, messages: int, per: int, coalesce_ms: float) -> float:
    config = work / "sparkplug.json"
    config.write_text(
        json.dumps(
            {
                "site": SITE,
                "instance": "sparkplug-spb",
                "source": "spb",
                "group_id": GROUP,
                "broker": {"port": port},
                "log_level": "WARNING",
                "coalesce_ms": coalesce_ms,
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "run", "sparkplug", "--config", str(config)],
        cwd=ROOT,
    )
    try:
        counter = Counter(port, f"ef/{SITE}/raw/spb", readings_in)
        time.sleep(2.0)  # the service connects and subscribes
        node, go = start_node(port, messages, per)
        start = time.perf_counter()
        go.set()
        counter.wait(messages * per + per)
        elapsed = counter.last - start
        node.join(30)
        counter.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return counter.count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-message", type=int, default=10)
    parser.add_argument("--coalesce-ms", type=float, default=5.0, help="of the source")
    args = parser.parse_args()
    n, per = args.messages, args.per_message
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker").start()
        try:
            raw = sink_raw(broker.port, n, per)
            sink = asyncio.run(sink_run(broker.port, work / "q", n, per))
            print(f"sink: {sink:,.0f} DDATA/s ({sink * per:,.0f} values/s) of {per} values each")
            print(
                f"  raw protobuf encode + paho publish: {raw:,.0f} DDATA/s; ratio {sink / raw:.2f}"
            )
            raw = source_raw(broker.port, n, per)
            source = source_run(broker.port, work, n, per, args.coalesce_ms)
            print(
                f"source: {source:,.0f} readings/s from DDATA of {per} metrics "
                f"(coalesce_ms {args.coalesce_ms:g})"
            )
            ratio = source / raw
            print(f"  raw paho receive + protobuf decode: {raw:,.0f} values/s; ratio {ratio:.2f}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
