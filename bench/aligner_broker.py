"""The aligner service through a real mosquitto, beside raw broker fan-through in the same run.

    PYTHONPATH=. .venv/bin/python bench/aligner_broker.py [--seconds 30] [--batch-ms 100]
        [--latency-seconds 5]

Throughput: a paho publisher sends pre-encoded adapter-shaped ReadingBatch messages (QoS 1,
8 sources, 64 signals of 1 kHz / 100 Hz / 10 Hz / 0.2 Hz, one batch per source per --batch-ms of
device time, as in bench/aligner_inprocess.py) as fast as it can to the aligner service (its own
process, `services.aligner.service.main`); a paho subscriber in a third process counts samples.
Readings/s = readings sent / time from the first publish to the arrival of the last sample.
Raw: the same publisher → subscriber with the same payloads and no aligner.

Latency, paced in real time: every 20 ms each of 8 sources sends a batch (2 signals at 1 kHz
plus 6 polled values), device time = local time. For each sample the completing batch is the one
after which the engine (replayed offline on the same batches) could decide it; the delay is from
publishing that batch to the sample arriving at the subscriber (so one extra broker hop is
included). Raw: the same payload sizes paced the same way, publish → arrival.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.aligner_inprocess import make_batches, make_spec
from edgefleet.broker import LocalBroker
from services.aligner.alignment import Aligner
from services.aligner.config import AlignerConfig, AlignSpec
from shared import codec
from shared.messages import ReadingBatch, SampleBatch
from shared.topics import Topics

TOPICS = Topics("bench")
MS = 1_000_000


def client(port: int) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    return c


def run_aligner(port: int, spec: dict[str, Any]) -> None:
    import asyncio

    from services.aligner.service import main

    cfg = AlignerConfig.model_validate(
        {
            "site": "bench",
            "instance": "aligner-bench",
            "broker": {"port": port},
            "log_level": "WARNING",
            "flow": {"name": "bench", "align": spec},
        }
    )
    asyncio.run(main(cfg))


def subscriber(port: int, topic: str, ready: Any, out: Any, want: int, timeout: float) -> None:
    """Record (arrival ns, payload) until `want` messages arrived or, on a samples topic, a
    sample at or after time `want`; or until timeout."""
    got: list[tuple[int, bytes]] = []
    done = False
    samples = "/samples/" in topic

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        nonlocal done
        got.append((time.time_ns(), msg.payload))
        done = int(codec.decode(msg.payload)["t"][-1]) >= want if samples else len(got) >= want

    sub = client(port)
    sub.on_message = on_message
    sub.subscribe(topic, 1)
    sub.loop_start()
    time.sleep(0.3)
    ready.set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done:
        time.sleep(0.005)
    sub.loop_stop()
    out.put(got)


def samples_in(got: list[tuple[int, bytes]]) -> list[tuple[int, np.ndarray]]:
    return [(arr, SampleBatch.from_wire(codec.decode(p)).t) for arr, p in got]


def with_processes(
    port: int, topic: str, want: int, timeout: float, spec: dict[str, Any] | None, publish: Any
) -> list[tuple[int, bytes]]:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=subscriber, args=(port, topic, ready, out, want, timeout))
    sub.start()
    ready.wait(30)
    aligner = None
    if spec is not None:
        aligner = ctx.Process(target=run_aligner, args=(port, spec))
        aligner.start()
        time.sleep(2.0)  # connected and subscribed
    publish()
    got: list[tuple[int, bytes]] = out.get(timeout=timeout + 60)
    sub.join(10)
    if aligner is not None and aligner.pid is not None:
        os.kill(aligner.pid, signal.SIGTERM)
        aligner.join(10)
    return got


def publish_all(port: int, payloads: list[tuple[str, bytes]]) -> float:
    pub = client(port)
    pub.loop_start()
    start = time.time_ns()
    for topic, payload in payloads:
        pub.publish(topic, payload, 1)
    return start


def throughput(port: int, seconds: float, period_ms: float, batch_ms: float) -> None:
    # Device time starts well after the processes are up and runs ahead of the local clock,
    # so no deadline fires during the run: samples come from early emission only.
    t0 = time.time_ns() + 10 * 10**9
    batches = make_batches(seconds, batch_ms, t0=t0)
    # A last reading of every signal after the end, so every sample is decidable early.
    end = t0 + int(seconds * 1e9) + MS
    batches += [
        ReadingBatch.from_columns(b.source, b.signals, np.full(8, end), np.arange(8), np.zeros(8))
        for b in batches[:8]
    ]
    spec = make_spec(period_ms, 1)
    want = max(completing_batch(spec.model_dump(), batches))  # the last sample time
    payloads = [(TOPICS.raw(b.source), codec.encode(b.to_wire())[0]) for b in batches]
    readings = sum(len(b) for b in batches)
    size = np.mean([len(p) for _, p in payloads])
    starts: list[float] = []
    got = with_processes(
        port,
        TOPICS.samples("bench"),
        want,
        60 + seconds,
        spec.model_dump(),
        lambda: starts.append(publish_all(port, payloads)),
    )
    n = sum(int((t >= t0).sum()) for _, t in samples_in(got))
    secs = (got[-1][0] - starts[0]) / 1e9
    print(
        f"aligner: {len(payloads)} batches of {readings / len(payloads):.0f} readings "
        f"({size:.0f} B): {readings / secs / 1e6:.2f} M readings/s, {len(payloads) / secs:,.0f} "
        f"msg/s ({n} samples of the data's {(want - t0) // (int(period_ms) * MS) + 1}; "
        f"{secs:.2f} s from the first publish to the last sample's arrival)"
    )
    raw = [(TOPICS.raw("rawbench"), p) for _, p in payloads]
    starts.clear()
    got = with_processes(
        port,
        TOPICS.raw("rawbench"),
        len(raw),
        60,
        None,
        lambda: starts.append(publish_all(port, raw)),
    )
    secs = (got[-1][0] - starts[0]) / 1e9
    print(
        f"raw broker fan-through (paho → mosquitto → paho, QoS 1, same payloads): "
        f"{len(got) / secs:,.0f} msg/s = {readings / secs / 1e6:.2f} M readings/s "
        f"({len(got)}/{len(raw)} arrived)"
    )


def paced_batches(seconds: float, t0: int) -> list[ReadingBatch]:
    names = ["v0", "v1", "p0", "p1", "p2", "p3", "p4", "p5"]
    out = []
    for step in range(int(seconds * 50)):
        lo = t0 + step * 20 * MS
        for src in range(8):
            t_fast = lo + np.arange(1, 21) * MS
            t = np.concatenate([t_fast, t_fast, np.full(6, lo + 20 * MS)])
            sig = np.concatenate([np.zeros(20), np.ones(20), np.arange(2, 8)])
            out.append(ReadingBatch.from_columns(f"s{src}", names, t, sig, np.sin(t / 1e8)))
    return out


def paced_spec() -> dict[str, Any]:
    feats: list[dict[str, Any]] = []
    for src in range(8):
        feats += [{"signal": f"s{src}/v0", "agg": "rms"}, {"signal": f"s{src}/v1", "agg": "max"}]
        feats += [{"signal": f"s{src}/p{i}", "fill": "hold", "max_age_ms": 500} for i in range(6)]
    return {"period_ms": 100, "max_delay_ms": 250, "on_missing": "nan", "features": feats}


def completing_batch(spec: dict[str, Any], batches: list[ReadingBatch]) -> dict[int, int]:
    """Sample time → index of the batch after which the engine could decide it."""
    engine, done = Aligner("bench", AlignSpec.model_validate(spec)), {}
    for i, b in enumerate(batches):
        engine.ingest(b, b.t.min())
        out = engine.emit(-(2**62))
        if out is not None:
            done.update({int(t): i for t in out.t})
    return done


def paced_publish(port: int, payloads: list[tuple[str, bytes]], t0: int) -> list[int]:
    pub = client(port)
    pub.loop_start()
    sent = []
    for i, (topic, payload) in enumerate(payloads):
        due = t0 + (i // 8 + 1) * 20 * MS  # a batch leaves when its last reading exists
        while (now := time.time_ns()) < due:
            time.sleep(min(0.001, (due - now) / 1e9))
        pub.publish(topic, payload, 1)
        sent.append(time.time_ns())
    return sent


def retained_health(port: int) -> dict[str, Any]:
    """The aligner's last status (retained; `stopped` carries the final health)."""
    got: list[bytes] = []
    c = client(port)
    c.on_message = lambda _c, _u, msg: got.append(msg.payload)
    c.subscribe(TOPICS.status("aligner-bench"), 1)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    c.loop_stop()
    return dict(codec.decode(got[-1])["health"]["aligner"]) if got else {}


def pct(delays_ms: np.ndarray) -> str:
    p50, p99 = np.percentile(delays_ms, [50, 99])
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {delays_ms.max():.2f} ms"


def latency(port: int, seconds: float) -> None:
    spec = paced_spec()
    t0 = time.time_ns() + 3 * 10**9  # after the processes are up
    t0 -= t0 % (100 * MS)
    batches = paced_batches(seconds, t0)
    done = completing_batch(spec, batches)
    payloads = [(TOPICS.raw(b.source), codec.encode(b.to_wire())[0]) for b in batches]
    sent: list[list[int]] = []
    got = with_processes(
        port,
        TOPICS.samples("bench"),
        max(done),
        seconds + 20,
        spec,
        lambda: sent.append(paced_publish(port, payloads, t0)),
    )
    delays = [
        (arr - sent[0][done[int(t)]]) / 1e6
        for arr, ts in samples_in(got)
        for t in ts
        if int(t) in done
    ]
    print(
        f"aligner, paced ({len(payloads) / seconds:.0f} batches/s, "
        f"{sum(len(b) for b in batches) / seconds:,.0f} readings/s): completing batch → "
        f"sample at subscriber over {len(delays)} samples: {pct(np.array(delays))}"
    )
    own = retained_health(port).get("emit_delay_ms", {})
    print(f"  the aligner's own measure, due batch arrival → publish returned: {own}")
    raw = [(TOPICS.raw("rawbench"), p) for _, p in payloads]
    t0 = time.time_ns() + 2 * 10**9
    sent.clear()
    got = with_processes(
        port,
        TOPICS.raw("rawbench"),
        len(raw),
        seconds + 20,
        None,
        lambda: sent.append(paced_publish(port, raw, t0)),
    )
    raw_delays = np.array([(arr - s) / 1e6 for (arr, _), s in zip(got, sent[0], strict=False)])
    print(f"raw broker, paced, same payloads: publish → arrival: {pct(raw_delays)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="device time sent, throughput")
    ap.add_argument("--period-ms", type=float, default=100.0)
    ap.add_argument("--batch-ms", type=float, default=100.0, help="one batch per source per ...")
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp)) as broker:
        throughput(broker.port, args.seconds, args.period_ms, args.batch_ms)
        if args.latency_seconds > 0:
            latency(broker.port, args.latency_seconds)


if __name__ == "__main__":
    main()
