"""mqtt-ingest as a plant gateway's peer: 2,000 topics, one bare JSON value per message.

    .venv/bin/python bench/ingest_gateway.py [--rates 10000 20000 ...] [--seconds 3] [--rounds 2]

One mosquitto (the shipped settings). mqtt-ingest runs in its own process (one core: a single
Python thread) with one input `gw/+/+` → signal `{1}_{2}`, coalescing per 5 ms tick into
`ef/bench/raw/plant`. The load comes from GENERATORS processes writing prebuilt MQTT 3.1.1
PUBLISH packets (QoS 0) to raw sockets, paced in 2 ms slices, round-robin over the 2,000 topics;
each payload is the send time (Unix seconds, µs precision) as a bare JSON number, so a subscriber
of raw/plant reads each reading's latency from publish to batch. Per offered rate: the readings
delivered per second, the ingest process's CPU per message, and p50/p99 latency. `mosquitto_sub`
(C) on `gw/#` at the highest rate shows what generators and broker deliver without the service.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.broker import LocalBroker

TOPICS = [f"gw/dev{d:02d}/s{s:02d}" for d in range(40) for s in range(50)]  # 2,000
GENERATORS = 2
SLICE_S = 0.002
RAW = "ef/bench/raw/plant"


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def generator(port: int, rate: float, seconds: float, offset: int, go: Any, out: Any) -> None:
    """Raw-socket MQTT 3.1.1 publisher: what a gateway's C stack puts on the wire."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"gen{offset}-{os.getpid()}".encode()
    sock.sendall(_packet(0x10, _str(b"MQTT") + b"\x04\x02\x00\x3c" + _str(client_id)))
    assert sock.recv(4)[:1] == b"\x20"
    heads = [_str(t.encode()) for t in TOPICS]
    go.wait()
    per_slice = rate * SLICE_S
    sent, owed, i = 0, 0.0, offset
    start = next_at = time.perf_counter()
    while next_at - start < seconds:
        owed += per_slice
        k = int(owed)
        owed -= k
        stamp = b"%.6f" % time.time()
        chunk = []
        for _ in range(k):
            body = heads[i % len(heads)] + stamp
            chunk.append(b"\x30" + _remaining_length(len(body)) + body)
            i += GENERATORS
        sock.sendall(b"".join(chunk))
        sent += k
        next_at += SLICE_S
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.perf_counter() - start
    sock.sendall(b"\xe0\x00")
    sock.close()
    out.put((sent, elapsed))


def ingest_process(port: int, coalesce_ms: float) -> None:
    from services.mqtt_ingest.service import IngestConfig, main
    from shared.config import validate

    config = validate(
        IngestConfig,
        {
            "site": "bench",
            "instance": "ingest-gw",
            "broker": {"port": port},
            "coalesce_ms": coalesce_ms,
            "inputs": [{"topic": "gw/+/+", "source": "plant", "signal": "{1}_{2}"}],
        },
        "bench",
    )
    asyncio.run(main(config))


def raw_subscriber(port: int, ready: Any, stop: Any, out: Any) -> None:
    """Count readings on raw/plant and their latency from the generator's send time."""
    from shared import codec
    from shared.messages import ReadingBatch

    rows: list[tuple[float, int, np.ndarray[Any, Any]]] = []

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        batch = ReadingBatch.from_wire(codec.decode(msg.payload, None))
        rows.append((now, len(batch), (now - batch.value).astype(np.float32)))

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(RAW, 0)
    c.loop_start()
    time.sleep(0.3)
    ready.set()
    stop.wait()
    c.loop_stop()
    out.put(rows)


def c_ceiling(port: int, rate: float, seconds: float) -> tuple[float, float]:
    """mosquitto_sub (C) on gw/# under the same generators: (offered, delivered) msg/s."""
    proc = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-t", "gw/#", "-q", "0"], stdout=subprocess.PIPE
    )
    times: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            times.append(time.perf_counter())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.4)
    sent, elapsed = run_generators(port, rate, seconds)
    time.sleep(1.0)
    proc.terminate()
    proc.wait()
    reader.join(2)
    got = len(times) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return sent / elapsed, got


def run_generators(port: int, rate: float, seconds: float) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=generator, args=(port, rate / GENERATORS, seconds, k, go, out))
        for k in range(GENERATORS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[10e3, 20e3, 30e3, 35e3, 40e3, 50e3, 60e3]
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--coalesce-ms", type=float, default=5.0)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp)) as broker:
        port = broker.port
        offered, delivered = c_ceiling(port, max(args.rates), args.seconds)
        print(
            f"generators ({GENERATORS} processes) → mosquitto_sub (C): offered {offered:.0f} "
            f"msg/s, delivered {delivered:.0f} msg/s"
        )
        for rnd in range(1, args.rounds + 1):
            ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
            sub = ctx.Process(target=raw_subscriber, args=(port, ready, stop, out))
            sub.start()
            ready.wait(30)
            service = ctx.Process(target=ingest_process, args=(port, args.coalesce_ms))
            service.start()
            time.sleep(3.0)  # connected and subscribed
            ps = psutil.Process(service.pid)
            windows = []
            for rate in args.rates:
                cpu0 = sum(ps.cpu_times()[:2])
                t0 = time.time()
                sent, elapsed = run_generators(port, rate, args.seconds)
                time.sleep(1.0)  # the last ticks and anything queued at the broker
                t1 = time.time()
                cpu = sum(ps.cpu_times()[:2]) - cpu0
                windows.append((rate, t0, t1, sent, elapsed, cpu))
            os.kill(service.pid, signal.SIGTERM)
            service.join(15)
            stop.set()
            rows = out.get(timeout=60)
            sub.join(10)
            print(f"\nround {rnd}: 2,000 topics, one bare JSON value per message")
            print(
                f"{'offered msg/s':>13} {'readings/s':>11} {'ratio':>6} {'batches/s':>10} "
                f"{'CPU µs/msg':>10} {'CPU %':>6} {'p50 ms':>7} {'p99 ms':>7}"
            )
            for _rate, t0, t1, sent, elapsed, cpu in windows:
                mine = [r for r in rows if t0 <= r[0] < t1]
                readings = sum(r[1] for r in mine)
                lat = np.concatenate([r[2] for r in mine]) * 1e3 if mine else np.zeros(1)
                got = readings / elapsed
                print(
                    f"{sent / elapsed:>13.0f} {got:>11.0f} {readings / max(sent, 1):>6.2f} "
                    f"{len(mine) / elapsed:>10.0f} {cpu / max(readings, 1) * 1e6:>10.1f} "
                    f"{cpu / (t1 - t0) * 100:>6.0f} {np.percentile(lat, 50):>7.1f} "
                    f"{np.percentile(lat, 99):>7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
