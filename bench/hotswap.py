"""Hot swap under load, and what a shadow model costs the live one. Not a test: figures.

    PYTHONPATH=. python bench/hotswap.py [--period-ms 10] [--per-message 1] [--phase-s 4]

A local mosquitto and `edgefleet run inference` as a separate process (a small MLP). This process
publishes sample messages every period (QoS 0) and records each result's arrival. Phases, in one
run: steady (no shadow) → hot swap by a retained config → hot swap by replacing the model file →
a shadow model added → steady with the shadow. Reported:
- samples sent, sample times with a result, duplicates, lost (must be 0);
- the longest gap between two result messages in each phase, against the period;
- the live results' latency (arrival at the service to result, `latency_us`) p50/p90/p99 with and
  without the shadow model, and the model run time of each model from the status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.broker import LocalBroker
from shared import codec
from shared.messages import ConfigUpdate, SampleBatch
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Topics
from tests.inference import models

T0 = 1_700_000_000_000_000_000
INSTANCE = "inference-bench"


class Recorder:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, int]] = []  # (time, phase, rows)
        self.t: list[np.ndarray[Any, Any]] = []
        self.latency: dict[str, list[np.ndarray[Any, Any]]] = {}
        self.status: dict[str, Any] = {}
        self.phase = "start"

    async def handle(self, message: Received) -> None:
        body = codec.decode(message.payload, message.content_type)
        if "/results/" in message.topic:
            self.arrivals.append((time.perf_counter(), self.phase, len(body["t"])))
            self.t.append(np.asarray(body["t"]))
            self.latency.setdefault(self.phase, []).append(np.asarray(body["latency_us"]))
        elif "/status/" in message.topic and isinstance(body, dict):
            self.status = body


async def run(args: argparse.Namespace, broker: LocalBroker, model: Path, tmp: Path) -> None:
    topics = Topics("bench")
    rec = Recorder()
    conn = MqttConnection(BrokerSettings(host=broker.host, port=broker.port), rec.handle)
    await conn.subscribe(topics.results("bench"), 0)
    await conn.subscribe(topics.status(INSTANCE), 0)
    runner = asyncio.create_task(conn.run())
    await conn.wait_connected()
    while rec.status.get("state") != "online":  # noqa: ASYNC110 (a bench polling a status)
        await asyncio.sleep(0.05)
    sent = 0
    rng = np.random.default_rng(0)
    stop = asyncio.Event()

    async def feed() -> None:
        nonlocal sent
        period, n = args.period_ms / 1000, args.per_message
        next_at = time.perf_counter()
        while not stop.is_set():
            x = rng.normal(size=(n, len(models.FEATURES))).astype(np.float32)
            t = T0 + (sent + np.arange(n, dtype=np.int64)) * 1_000_000
            batch = SampleBatch(
                "bench",
                models.FEATURES,
                t,
                x,
                np.zeros(x.shape, np.uint8),
                np.zeros(x.shape, np.float32),
            )
            payload, ctype = codec.encode(batch.to_wire())
            await conn.publish(topics.samples("bench"), payload, content_type=ctype)
            sent += n
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def config(revision: int, **keys: Any) -> None:
        update = ConfigUpdate(instance=INSTANCE, revision=revision, config=keys)
        payload, ctype = codec.encode(update.to_wire())
        await conn.publish(topics.config(INSTANCE), payload, content_type=ctype, qos=1, retain=True)

    async def until(predicate: Any, timeout: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not predicate(rec.status.get("health", {}).get("inference", {})):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return dict(rec.status["health"]["inference"])

    feeder = asyncio.create_task(feed())
    rec.phase = "steady"
    await asyncio.sleep(args.phase_s)
    rec.phase = "swap_config"
    await config(1, model={"path": str(models.mlp(tmp / "new.onnx", seed=5))})
    await until(lambda s: s.get("swaps", {}).get("done") == 1)
    await asyncio.sleep(1.0)
    rec.phase = "swap_file"
    staged = models.mlp(tmp / "staged.onnx", seed=6)
    shutil.copy(staged, tmp / "replacement.onnx")
    (tmp / "replacement.onnx").replace(tmp / "new.onnx")
    await until(lambda s: s.get("swaps", {}).get("done") == 2)
    await asyncio.sleep(1.0)
    rec.phase = "steady_again"
    await asyncio.sleep(args.phase_s)
    no_shadow = await until(lambda s: True)
    rec.phase = "shadow_added"
    await config(2, shadow={"path": str(models.mlp(tmp / "shadow.onnx", seed=7))})
    await until(lambda s: s.get("shadow") is not None)
    await asyncio.sleep(1.0)
    rec.phase = "with_shadow"
    await asyncio.sleep(args.phase_s)
    with_shadow = await until(lambda s: True)
    stop.set()
    await feeder
    await asyncio.sleep(1.0)  # the last results
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    report(args, rec, sent, no_shadow, with_shadow)


def report(
    args: argparse.Namespace,
    rec: Recorder,
    sent: int,
    no_shadow: dict[str, Any],
    with_shadow: dict[str, Any],
) -> None:
    t = np.concatenate(rec.t) if rec.t else np.empty(0, np.int64)
    unique = np.unique(t)
    print(f"period {args.period_ms} ms, {args.per_message} sample(s) per message")
    print(
        f"samples sent {sent}, with a result {len(unique)}, duplicates {len(t) - len(unique)}, "
        f"lost {sent - len(unique)}"
    )
    times = np.array([a[0] for a in rec.arrivals])
    phases = np.array([a[1] for a in rec.arrivals])
    gaps = np.diff(times) * 1000
    for phase in (
        "steady",
        "swap_config",
        "swap_file",
        "steady_again",
        "shadow_added",
        "with_shadow",
    ):
        sel = phases[1:] == phase
        if sel.any():
            print(
                f"  {phase:13s} longest gap between results {gaps[sel].max():7.1f} ms "
                f"(period {args.period_ms} ms), p99 gap {np.percentile(gaps[sel], 99):6.1f} ms"
            )
    for phase in ("steady_again", "with_shadow"):
        lat = np.concatenate(rec.latency.get(phase, [np.zeros(1)]))
        p = np.percentile(lat, (50, 90, 99))
        print(
            f"  live latency {phase:13s} p50 {p[0]:7.0f} µs  p90 {p[1]:7.0f} µs  p99 {p[2]:7.0f} µs"
        )
    run_live = no_shadow["model"]["health"]["run_us"]
    run_live_s = with_shadow["model"]["health"]["run_us"]
    run_shadow = with_shadow["shadow"]["health"]["run_us"]
    print(
        f"  model run µs (status window): live alone {run_live}, live beside shadow "
        f"{run_live_s}, shadow {run_shadow}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--period-ms", type=float, default=10.0)
    p.add_argument("--per-message", type=int, default=1)
    p.add_argument("--phase-s", type=float, default=4.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, LocalBroker(Path(tmp_name) / "b") as broker:
        tmp = Path(tmp_name)
        model = models.mlp(tmp / "live.onnx")
        cfg = tmp / "inference.yaml"
        cfg.write_text(
            f"site: bench\ninstance: {INSTANCE}\nflow: bench\nmodel: {{path: {model}}}\n"
            f"features: {models.FEATURES}\nbroker: {{host: {broker.host}, port: {broker.port}}}\n"
            "watch_s: 0.5\n" + "timings: {status_interval_s: 0.5}\nlog_level: WARNING\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        command = [sys.executable, "-m", "edgefleet.cli", "run", "inference", "--config", str(cfg)]
        proc = subprocess.Popen(command, env=env)
        try:
            asyncio.run(run(args, broker, model, tmp))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
