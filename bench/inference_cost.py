"""What the inference service costs on top of onnxruntime, and what it sustains over the broker.

    PYTHONPATH=. python bench/inference_cost.py [--model mlp|iforest|zipmap] [--seconds 0.5]
        [--broker] [--messages 2000] [--batch 8]

Part 1, in one process, no broker: per batch size (1, 8, 64, 512), the cost per sample of the
service path (decode → check → batch → run → map outputs → encode) against `session.run` alone on
the same model and the same samples, as a ratio; and the cost of running the batch in a worker
thread (asyncio.to_thread) against inline, which decides `offload_above_us`.
Part 2 (--broker): a local mosquitto and `edgefleet run inference` as a separate process; this
process publishes sample messages (QoS 0) and counts results: results/s sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.broker import LocalBroker
from services.inference.batching import Pending, rows_of
from services.inference.config import InferenceSettings, ModelSpec
from services.inference.engine import build_engine
from shared import codec
from shared.messages import SampleBatch
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Topics
from tests.helpers import Probe
from tests.inference import models

SIZES = (1, 8, 64, 512)
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "mlp": models.mlp,
    "iforest": models.isolation_forest,
    "zipmap": models.zipmap_classifier,
}


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """Median over 5 rounds of the mean time per call, after a warm-up."""
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            n += 1
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return float(np.median(rounds))


def sample_batch(n: int, t0: int = 1_700_000_000_000_000_000) -> SampleBatch:
    x = models.training_data(n, seed=n)
    return SampleBatch(
        "bench",
        models.FEATURES,
        t0 + np.arange(n, dtype=np.int64) * 100_000_000,
        x,
        np.zeros(x.shape, np.uint8),
        np.zeros(x.shape, np.float32),
    )


def cost_table(model_path: Path, seconds: float) -> None:
    settings = InferenceSettings(
        flow="bench", model=ModelSpec(path=model_path), features=models.FEATURES
    )
    engine = build_engine(settings)
    session = ort.InferenceSession(
        str(model_path), providers=["CPUExecutionProvider"], sess_options=_one_thread()
    )
    name = session.get_inputs()[0].name
    print(f"model {model_path.stem}: µs per call (per sample); service path vs session.run")
    print(
        f"{'batch':>6} {'session.run':>20} {'service path':>20} {'ratio':>6} "
        f"{'to_thread extra':>16}"
    )
    for n in SIZES:
        batch = sample_batch(n)
        payload, ctype = codec.encode(batch.to_wire())

        def service_path(payload: bytes = payload, ctype: str = ctype) -> bytes:
            b = SampleBatch.from_wire(codec.decode(payload, ctype))
            outcome = engine.infer(rows_of([Pending(b, time.time_ns())]))
            assert outcome.result is not None
            return codec.encode(outcome.result.to_wire())[0]

        raw = per_call_us(lambda: session.run(None, {name: batch.x}), seconds)  # noqa: B023
        full = per_call_us(service_path, seconds)
        rows = rows_of([Pending(batch, 0)])
        offload = _offload_extra_us(lambda: engine.infer(rows), seconds)  # noqa: B023
        print(
            f"{n:>6} {raw:>10.1f} ({raw / n:>6.3f}) {full:>10.1f} ({full / n:>6.3f}) "
            f"{full / raw:>6.1f} {offload:>16.1f}"
        )


def _offload_extra_us(fn: Callable[[], Any], seconds: float) -> float:
    async def inline() -> None:
        fn()

    async def threaded() -> None:
        await asyncio.to_thread(fn)

    async def measure() -> float:
        async def timed(coro_fn: Callable[[], Any]) -> float:
            for _ in range(20):
                await coro_fn()
            rounds = []
            for _ in range(5):
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / 5:
                    await coro_fn()
                    n += 1
                rounds.append((time.perf_counter() - start) / n * 1e6)
            return float(np.median(rounds))

        return await timed(threaded) - await timed(inline)

    return asyncio.run(measure())


def _one_thread() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return opts


def broker_run(
    model_path: Path, messages: int, batch: int, offload_us: float, settle: int, gap_ms: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "broker") as broker:
        cfg = Path(tmp) / "inference.yaml"
        cfg.write_text(
            f"site: bench\ninstance: inference-bench\nflow: bench\nmodel: {{path: {model_path}}}\n"
            f"features: {models.FEATURES}\nbroker: {{host: {broker.host}, port: {broker.port}}}\n"
            f"publish_qos: 0\noffload_above_us: {offload_us}\nsettle_passes: {settle}\n"
            "log_level: WARNING\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        profile = os.environ.get("BENCH_PROFILE")  # a file: profile the service with cProfile
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        command = ["-m", "edgefleet.cli", "run", "inference", "--config", str(cfg)]
        proc = subprocess.Popen([sys.executable, *prefix, *command], env=env)
        try:
            asyncio.run(_publish_and_count(broker.host, broker.port, messages, batch, gap_ms))
        finally:
            proc.terminate()
            proc.wait(10)


async def _publish_and_count(
    host: str, port: int, messages: int, batch: int, gap_ms: float
) -> None:
    topics = Topics("bench")
    want = messages * batch
    counted = {"rows": 0, "messages": 0}
    latencies: list[float] = []
    all_in = asyncio.Event()

    async def on_result(message: Received) -> None:
        body = codec.decode(message.payload, message.content_type)
        counted["rows"] += len(body["t"])
        latencies.extend(body["latency_us"].tolist())
        counted["messages"] += 1
        if counted["rows"] >= want:
            all_in.set()

    async with Probe(host, port) as probe:
        await probe.subscribe(topics.status("inference-bench"))
        await probe.wait_for(topics.status("inference-bench"), lambda s: s["state"] == "online", 30)
        results = MqttConnection(BrokerSettings(host=host, port=port), on_result)
        reader = asyncio.create_task(results.run())
        await results.wait_connected()
        await results.subscribe(topics.results("bench"), qos=0)
        payloads = [
            codec.encode(sample_batch(batch, t0=i * 10**12).to_wire())[0] for i in range(messages)
        ]
        start = time.perf_counter()
        for payload in payloads:
            await probe.publish_raw(topics.samples("bench"), payload, content_type=codec.MSGPACK)
            if gap_ms:
                await asyncio.sleep(gap_ms / 1000)
        sent = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 120)
        elapsed = time.perf_counter() - start
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        got, n_msgs = counted["rows"], counted["messages"]
        print(
            f"{messages} messages × {batch} samples published in {sent:.2f} s; "
            f"{got}/{want} results in {elapsed:.2f} s: {got / elapsed:,.0f} results/s, "
            f"{n_msgs} result messages (mean run of {got / max(n_msgs, 1):.1f} samples); "
            f"latency in service p50 {np.median(latencies):.0f} µs, "
            f"p99 {np.percentile(latencies, 99):.0f} µs"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=sorted(BUILDERS), default="mlp")
    p.add_argument("--seconds", type=float, default=0.5, help="measuring time per figure")
    p.add_argument("--broker", action="store_true", help="also measure results/s over mosquitto")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8, help="samples per published message")
    p.add_argument("--offload-above-us", type=float, default=2000.0)
    p.add_argument("--settle-passes", type=int, default=3)
    p.add_argument("--gap-ms", type=float, default=0.0, help="pause between published messages")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = BUILDERS[args.model](Path(tmp) / f"{args.model}.onnx")
        cost_table(path, args.seconds)
        if args.broker:
            broker_run(
                path,
                args.messages,
                args.batch,
                args.offload_above_us,
                args.settle_passes,
                args.gap_ms,
            )


if __name__ == "__main__":
    main()
