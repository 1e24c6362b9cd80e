"""Results/s through the forwarder with its durable queue on, beside the raw broker
fan-through (paho publisher → paho subscriber) in the same run, and the drain rate of a backlog.

    .venv/bin/python bench/forwarder_throughput.py [--messages 20000] [--per-message 10]
                                                  [--backlog 600000]

Live: a paho publisher (another process) sends `--messages` ResultBatch messages of
`--per-message` results at QoS 1 to the site broker as fast as PUBACKs allow; the forwarder
(`edgefleet run forwarder`, its own process) queues each (SQLite, WAL, synchronous FULL) before
acking it, and sends it on; the clock stops when the last result is in the sink (a paho
subscriber on a second broker for the MQTT sink; the history file for SQLite). Raw: the same
publisher straight to a paho subscriber on the site broker, QoS 1, nothing else.

Drain: `--backlog` results (default 600,000 = 10 min at 1,000 results/s) are put straight into the
sink's queue file, as an outage would leave them; then the forwarder starts with the sink up and
the clock runs from its first delivered result to the last.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgefleet.broker import LocalBroker  # noqa: E402
from services.forwarder.config import QueueLimits  # noqa: E402
from services.forwarder.queue import RESULT, DurableQueue, Item  # noqa: E402
from shared import codec  # noqa: E402
from shared.messages import ModelRef, ResultBatch  # noqa: E402

SITE, FLOW = "bench", "pump"
TOPIC = f"ef/{SITE}/results/{FLOW}"
T0 = 1_700_000_000_000_000_000


def payload(i: int, per: int) -> bytes:
    t = T0 + (np.arange(i * per, (i + 1) * per, dtype=np.int64) * 1_000_000)
    batch = ResultBatch(
        FLOW,
        ModelRef("pump-ae", "3", "ab" * 32),
        t,
        {"score": np.random.default_rng(i).random(per, dtype=np.float32)},
        np.full(per, 40.0, np.float32),
    )
    return codec.encode(batch.to_wire())[0]


def client(port: int, client_id: str = "") -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    return c


def publisher(port: int, messages: int, per: int, go: Any) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = codec.MSGPACK
    payloads = [payload(i, per) for i in range(messages)]
    pub = client(port)
    pub.loop_start()
    go.wait()
    infos = [pub.publish(TOPIC, p, 1, properties=props) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()


class Counter:
    """A paho subscriber (QoS 1) that counts messages and notes the time of the first and last."""

    def __init__(self, port: int, topic: str) -> None:
        self.count, self.first, self.last = 0, 0.0, 0.0
        self.done = threading.Event()
        self.target = -1
        self.sub = client(port)
        self.sub.on_message = self._on_message
        self.sub.subscribe(topic, 1)
        self.sub.loop_start()
        time.sleep(0.3)

    def _on_message(self, *_: Any) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count == 1:
            self.first = self.last
        if self.count == self.target:
            self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"{self.count} of {self.target} messages arrived")

    def close(self) -> None:
        self.sub.loop_stop()
        self.sub.disconnect()


def start_publisher(port: int, messages: int, per: int) -> tuple[mp.Process, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    proc = ctx.Process(target=publisher, args=(port, messages, per, go))
    proc.start()
    time.sleep(1.0 + messages / 20_000)  # encoding the payloads before the clock starts
    return proc, go


def raw(site: LocalBroker, messages: int, per: int) -> float:
    counter = Counter(site.port, TOPIC)
    counter.target = messages
    proc, go = start_publisher(site.port, messages, per)
    start = time.perf_counter()
    go.set()
    counter.wait(300)
    elapsed = counter.last - start
    proc.join(30)
    counter.close()
    return messages * per / elapsed


def forwarder(work: Path, site_port: int, sink: dict[str, Any]) -> subprocess.Popen[bytes]:
    config = {
        "site": SITE,
        "instance": "fwd",
        "broker": {"port": site_port},
        "queue_dir": str(work / "queues"),
        "sinks": [sink],
        "log_level": "WARNING",
    }
    path = work / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "edgefleet.cli", "run", "forwarder", "--config", str(path)]
    return subprocess.Popen(cmd, cwd=ROOT)


def wait_online(site_port: int) -> None:
    online = threading.Event()
    sub = client(site_port)

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        status = codec.decode(message.payload)
        if status.get("state") == "online":
            online.set()

    sub.on_message = on_message
    sub.subscribe(f"ef/{SITE}/status/fwd", 1)
    sub.loop_start()
    online.wait(30)
    sub.loop_stop()
    sub.disconnect()


def sqlite_count(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def wait_sqlite(path: Path, results: int, timeout: float = 600) -> tuple[float, float]:
    """Poll the history file (a benchmark, not a service); return when the first and last
    results were seen."""
    first = 0.0
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        n = sqlite_count(path)
        if n and not first:
            first = time.perf_counter()
        if n >= results:
            return first, time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"{sqlite_count(path)} of {results} results in {path}")


def sinks(work: Path, cloud_port: int) -> dict[str, dict[str, Any]]:
    return {
        "mqtt": {"kind": "mqtt", "name": "cloud", "broker": {"port": cloud_port}},
        "sqlite": {"kind": "sqlite", "name": "history", "path": str(work / "history.db")},
    }


def live(work: Path, site: LocalBroker, cloud: LocalBroker, kind: str, messages: int, per: int):  # type: ignore[no-untyped-def]
    sink = sinks(work, cloud.port)[kind]
    counter = Counter(cloud.port, TOPIC) if kind == "mqtt" else None
    if counter:
        counter.target = messages
    proc = forwarder(work, site.port, sink)
    try:
        wait_online(site.port)
        pub, go = start_publisher(site.port, messages, per)
        start = time.perf_counter()
        go.set()
        if counter:
            counter.wait(600)
            end = counter.last
            counter.close()
        else:
            end = wait_sqlite(work / "history.db", messages * per)[1]
        pub.join(30)
        return messages * per / (end - start)
    finally:
        proc.terminate()
        proc.wait(30)


def prefill(queue_file: Path, backlog: int, per: int) -> float:
    import asyncio

    async def run() -> None:
        queue = DurableQueue(queue_file, QueueLimits(), dedupe_window=0, suspect_head=0)
        await queue.open()
        messages = backlog // per
        for start in range(0, messages, 5000):
            items = [
                Item(b"", RESULT, TOPIC, payload(i, per), codec.MSGPACK, per)
                for i in range(start, min(start + 5000, messages))
            ]
            await queue.put(items)
        await queue.close()

    t = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t


def drain(work: Path, site: LocalBroker, cloud: LocalBroker, kind: str, backlog: int, per: int):  # type: ignore[no-untyped-def]
    sink = sinks(work, cloud.port)[kind]
    filled = prefill(work / "queues" / f"{sink['name']}.db", backlog, per)
    counter = Counter(cloud.port, TOPIC) if kind == "mqtt" else None
    if counter:
        counter.target = backlog // per
    proc = forwarder(work, site.port, sink)
    try:
        if counter:
            counter.wait(600)
            first, last = counter.first, counter.last
            counter.close()
        else:
            first, last = wait_sqlite(work / "history.db", backlog)
        return backlog / (last - first), filled
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-message", type=int, default=10)
    parser.add_argument("--backlog", type=int, default=600_000)
    parser.add_argument("--only", choices=["live", "drain"], default=None)
    args = parser.parse_args()
    n, per = args.messages, args.per_message
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        with LocalBroker(tmpdir / "site") as site, LocalBroker(tmpdir / "cloud") as cloud:
            if args.only != "drain":
                print(f"live: {n} messages × {per} results, QoS 1 in and out")
                r = raw(site, n, per)
                print(f"  raw paho → broker → paho       {r:>10,.0f} results/s")
                for kind in ("mqtt", "sqlite"):
                    work = tmpdir / f"live-{kind}"
                    work.mkdir()
                    f = live(work, site, cloud, kind, n, per)
                    print(
                        f"  forwarder → {kind:<6} sink         {f:>10,.0f} results/s"
                        f"  ({f / r:.2f} of raw)"
                    )
            if args.only != "live":
                print(
                    f"drain: a backlog of {args.backlog:,} results in {args.backlog // per:,}"
                    f" queued messages"
                )
                for kind in ("mqtt", "sqlite"):
                    work = tmpdir / f"drain-{kind}"
                    work.mkdir()
                    rate, filled = drain(work, site, cloud, kind, args.backlog, per)
                    print(
                        f"  {kind:<6} sink drains at {rate:>10,.0f} results/s: "
                        f"{args.backlog / rate:.1f} s (backlog written in {filled:.1f} s)"
                    )


if __name__ == "__main__":
    main()
