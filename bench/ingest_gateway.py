"""mqtt-ingest as a plant gateway's peer, side by side with Node-RED: 2,000 topics, one bare JSON
value per message.

    .venv/bin/python bench/ingest_gateway.py [--rates 20000 35000 40000 50000] [--seconds 3]
                                             [--rounds 3] [--node-red PATH]

One mosquitto (the shipped settings) and three systems on it, each its own process, each with
its own input prefix so that only the one under test receives the load:
- mqtt-ingest (one Python thread): input `gw/+/+` → signal `{1}_{2}`, one ReadingBatch per 5 ms
  tick at QoS 1 on `ef/bench/raw/plant`;
- Node-RED, per message (its natural flow): mqtt in `nr/+/+` → function (parse the number, name it
  from the topic levels) → mqtt out, one JSON reading per message at QoS 0 on `ef/bench/nr/plant`;
- Node-RED, batched: mqtt in `nrb/+/+` → function that gathers readings for 5 ms after the first
  (mqtt-ingest's coalescing) → mqtt out, one JSON batch at QoS 1 on `ef/bench/nrb/plant`.
The flows are bench/node_red/flows.json; Node-RED is installed by bench/install_node_red.sh (the
bench runs mqtt-ingest alone, and says so, without it).

The load comes from GENERATORS processes writing prebuilt MQTT 3.1.1 PUBLISH packets (QoS 0) to
raw sockets, paced in 2 ms slices, round-robin over the 2,000 topics; each payload is the send
time (Unix seconds, µs precision) as a bare JSON number, so each reading carries its own
publish time. One `mosquitto_sub` (C) receives every output and stamps each message on arrival
(`%U`): latency is that stamp minus the reading's send time. Per offered rate and system, the
systems taking turns within each rate: readings delivered per second, the system process's CPU
per message (user + system from /proc), p50/p99 publish → output. `mosquitto_sub` on the input
topics at the highest rate shows what generators and broker deliver without any system.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.broker import LocalBroker, free_port

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [f"dev{d:02d}/s{s:02d}" for d in range(40) for s in range(50)]  # 2,000 topics
GENERATORS = 2
SLICE_S = 0.002
NODE_RED_DIR = ROOT / "bench" / "node_red"
NODE_RED = ROOT / "var" / "node-red" / "node_modules" / ".bin" / "node-red"
INSTALL_HINT = (
    "make bench-deps (sh bench/install_node_red.sh; needs node and npm: "
    "apt-get install -y nodejs npm)"
)


@dataclass
class System:
    name: str
    prefix: str  # what its input subscribes: PREFIX/+/+
    output: str  # the topic it publishes readings on
    pid: int = 0
    rows: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, payload)


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


def generator(
    port: int, prefix: str, rate: float, seconds: float, offset: int, go: Any, out: Any
) -> None:
    """Raw-socket MQTT 3.1.1 publisher: what a gateway's C stack puts on the wire."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"gen{offset}-{os.getpid()}".encode()
    sock.sendall(_packet(0x10, _str(b"MQTT") + b"\x04\x02\x00\x3c" + _str(client_id)))
    assert sock.recv(4)[:1] == b"\x20"
    heads = [_str(f"{prefix}/{levels}".encode()) for levels in LEVELS]
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
    out.put((sent, elapsed, float(stamp)))


def run_generators(port: int, prefix: str, rate: float, seconds: float) -> tuple[int, float, float]:
    """(messages sent, seconds, the last send time) of GENERATORS processes."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=generator, args=(port, prefix, rate / GENERATORS, seconds, k, go, out))
        for k in range(GENERATORS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results)


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


def start_node_red(node_red: Path, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """Node-RED headless on the bench flows; its user dir is a temporary copy."""
    user_dir = tmp / "node-red"
    user_dir.mkdir()
    shutil.copy(NODE_RED_DIR / "flows.json", user_dir / "flows.json")
    env = dict(os.environ, EF_BENCH_MQTT_PORT=str(port), EF_BENCH_UI_PORT=str(free_port()))
    log = (tmp / "node-red.log").open("wb")
    return subprocess.Popen(
        [
            str(node_red),
            "--settings",
            str(NODE_RED_DIR / "settings.js"),
            "--userDir",
            str(user_dir),
            str(user_dir / "flows.json"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class Receiver:
    """One `mosquitto_sub` (C) on every system's output, each message stamped as it arrives,
    written to a file: nothing in Python reads while a system is under load."""

    def __init__(self, port: int, systems: list[System], path: Path) -> None:
        self.by_topic = {s.output.encode(): s for s in systems}
        self.path, self.offset = path, 0
        args = ["mosquitto_sub", "-p", str(port), "-q", "1", "-F", "%U %t %x"]
        for s in systems:
            args += ["-t", s.output]
        self.proc = subprocess.Popen(args, stdout=path.open("wb"))

    def collect(self) -> None:
        """Hand the complete lines written since the last call to their systems."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            stamp, topic, payload = line.split(b" ", 2)
            system = self.by_topic.get(topic)
            if system is not None:
                system.rows.append((float(stamp), payload))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def wait_flowing(port: int, receiver: Receiver, system: System, timeout: float = 180.0) -> None:
    """Publish probes to the system's input until one comes out: connected and subscribed."""
    deadline = time.monotonic() + timeout
    while True:
        receiver.collect()
        if system.rows:
            return
        if not psutil.pid_exists(system.pid) or time.monotonic() > deadline:
            raise TimeoutError(f"{system.name}: nothing on {system.output} after {timeout:.0f} s")
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-t", f"{system.prefix}/probe/p", "-m", "0"],
            check=True,
        )
        time.sleep(0.3)


def times(system: System, payload_hex: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(send time, time the system read it) in seconds, per reading of one output message:
    the generator's payload, and mqtt-ingest's arrival stamp or Node-RED's `Date.now()`."""
    payload = bytes.fromhex(payload_hex.decode())
    if "/raw/" in system.output:  # a ReadingBatch of mqtt-ingest
        from shared import codec
        from shared.messages import ReadingBatch

        batch = ReadingBatch.from_wire(codec.decode(payload, None))
        return batch.value, batch.t / 1e9
    d = json.loads(payload)
    value, t = d["value"], d["t"]
    if not isinstance(value, list):
        value, t = [value], [t]
    return np.asarray(value, np.float64), np.asarray(t, np.float64) / 1e3


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
    sent, elapsed, _ = run_generators(port, "gw", rate, seconds)
    time.sleep(1.0)
    proc.terminate()
    proc.wait()
    reader.join(2)
    got = len(times) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return sent / elapsed, got


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()  # /proc/PID/stat: every thread of the process
    return float(times.user + times.system)


def drain(receiver: Receiver, system: System, last_sent: float, limit_s: float = 120.0) -> int:
    """Wait until the system has sent everything it still holds, so that a backlog does not spill
    into the next window: the last reading the generators sent has come out, or nothing has for
    5 s (it was dropped; a starved Node-RED can be silent for 2 s with a backlog). Returns the
    readings that came after the window closed."""
    late, quiet, deadline = 0, 0.0, time.monotonic() + limit_s
    while time.monotonic() < deadline and quiet < 5.0:
        time.sleep(0.25)
        receiver.collect()
        rows, system.rows = system.rows, []
        quiet = 0.0 if rows else quiet + 0.25
        sent = [times(system, p)[0] for _, p in rows]
        late += sum(len(x) for x in sent)
        if any(x.max() >= last_sent for x in sent):
            break
    return late


def window(port: int, receiver: Receiver, system: System, rate: float, seconds: float) -> str:
    """Offer `rate` to one system; one table row."""
    cpu0, t0 = cpu_s(system.pid), time.time()
    sent, elapsed, last_sent = run_generators(port, system.prefix, rate, seconds)
    time.sleep(1.0)  # the last ticks and anything queued at the broker
    t1 = time.time()
    cpu = cpu_s(system.pid) - cpu0
    receiver.collect()
    rows, system.rows = system.rows, []
    mine = [(at, p) for at, p in rows if t0 <= at < t1]
    sent_read = [times(system, p) for _, p in mine]
    came_late = [times(system, p)[0] for at, p in rows if at >= t1]
    late = sum(len(x) for x in came_late)
    if not any(x.max() >= last_sent for x in [x for x, _ in sent_read] + came_late):
        late += drain(receiver, system, last_sent)
    readings = sum(len(x) for x, _ in sent_read)
    if readings:
        sent_at = np.concatenate([x for x, _ in sent_read])
        read_at = np.concatenate([r for _, r in sent_read])
        out_at = np.concatenate(
            [np.full(len(x), at) for (at, _), (x, _) in zip(mine, sent_read, strict=True)]
        )
        total, before, after = (
            (out_at - sent_at) * 1e3,
            (read_at - sent_at) * 1e3,
            (out_at - read_at) * 1e3,
        )
    else:
        total = before = after = np.full(1, np.nan)
    per_msg = f"{cpu / readings * 1e6:>10.1f}" if readings else f"{'-':>10}"
    return (
        f"{sent / elapsed:>13.0f} {system.name:>22} {readings / elapsed:>11.0f} "
        f"{readings / max(sent, 1):>6.2f} {late:>7} {len(mine) / elapsed:>10.0f} "
        f"{per_msg} {cpu / (t1 - t0) * 100:>6.0f} "
        f"{np.percentile(total, 50):>7.1f} {np.percentile(total, 99):>7.1f} "
        f"{np.percentile(before, 99):>7.1f} {np.percentile(after, 99):>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="*", default=[20e3, 35e3, 40e3, 50e3])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--coalesce-ms", type=float, default=5.0)
    parser.add_argument("--node-red", type=Path, default=Path(os.environ.get("NODE_RED", NODE_RED)))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the finally below stops what it started
    ours = System("mqtt-ingest", "gw", "ef/bench/raw/plant")
    systems = [ours]
    if args.node_red.exists():
        systems += [
            System("node-red per message", "nr", "ef/bench/nr/plant"),
            System("node-red batched", "nrb", "ef/bench/nrb/plant"),
        ]
    else:
        print(f"Node-RED not found at {args.node_red}: mqtt-ingest alone. Install: {INSTALL_HINT}")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "broker") as broker:
        port = broker.port
        receiver = Receiver(port, systems, Path(tmp) / "received.txt")
        service = ctx.Process(target=ingest_process, args=(port, args.coalesce_ms))
        node_red = None
        try:
            service.start()
            assert service.pid is not None
            ours.pid = service.pid
            if len(systems) > 1:
                node_red = start_node_red(args.node_red, port, Path(tmp))
                for s in systems[1:]:
                    s.pid = node_red.pid
            for s in systems:
                wait_flowing(port, receiver, s)
                run_generators(port, s.prefix, 10e3, 1.0)  # warm-up: caches, V8's JIT
            time.sleep(1.0)
            receiver.collect()
            for s in systems:
                s.rows.clear()
            for rnd in range(1, args.rounds + 1):
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print(f"\nround {rnd}: load average {load} (2 cores)")
                offered, delivered = c_ceiling(port, max(args.rates), args.seconds)
                print(
                    f"generators ({GENERATORS} processes) → mosquitto_sub (C): offered "
                    f"{offered:.0f} msg/s, delivered {delivered:.0f} msg/s "
                    f"({delivered / offered:.2f})"
                )
                print(
                    f"{'offered msg/s':>13} {'system':>22} {'readings/s':>11} {'ratio':>6} "
                    f"{'late':>7} {'out msg/s':>10} {'CPU µs/msg':>10} {'CPU %':>6} {'p50 ms':>7} "
                    f"{'p99 ms':>7} {'p99 in':>7} {'p99 out':>7}"
                )
                for rate in args.rates:
                    turn = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
                    for s in turn:  # who goes first changes per round: no fixed advantage
                        print(window(port, receiver, s, rate, args.seconds), flush=True)
        finally:
            if service.pid is not None:
                os.kill(service.pid, signal.SIGTERM)
                service.join(15)
            if node_red is not None:
                node_red.terminate()
                try:
                    node_red.wait(15)
                except subprocess.TimeoutExpired:  # still chewing through a backlog
                    node_red.kill()
            receiver.stop()


if __name__ == "__main__":
    main()
