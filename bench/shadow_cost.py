"""What a shadow model costs the live one: live p99 latency with and without a shadow, same run.

    PYTHONPATH=. python bench/shadow_cost.py [--period-ms 10] [--per-message 8] [--phase-s 4]
        [--rounds 3]

A local mosquitto and `edgefleet run inference` as a separate process (a small MLP live, another
as the shadow). This process publishes sample messages every period (QoS 0) and records each live
result. Phases alternate, `--rounds` times: no shadow → shadow added by a retained config →
shadow dropped. Alternating spreads the machine's load drift over both sides. Per side:
- the service's own `latency_us` (arrival at the service → result published) p50/p99;
- end to end (this process's publish → the live result's arrival here) p50/p99, which also
  counts time a message waits in the socket while the service's event loop is busy;
- the ratio with/without of each p99 (goal: within 1.10).
The raw limit in the same run: a pass-through echo of the same messages by the broker alone
(this process subscribed to its own samples), end to end p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
        self.sent_at: dict[int, float] = {}  # first sample time of a message → publish time
        self.e2e: dict[str, list[float]] = {}
        self.service: dict[str, list[np.ndarray[Any, Any]]] = {}
        self.echo: list[float] = []
        self.status: dict[str, Any] = {}
        self.phase = "start"

    async def handle(self, message: Received) -> None:
        now = time.perf_counter()
        if "/samples/" in message.topic and self.phase != "echo":
            return  # the echo is measured in its own phase only
        body = codec.decode(message.payload, message.content_type)
        if "/results/" in message.topic:
            first = int(np.asarray(body["t"])[0])
            if first in self.sent_at:
                self.e2e.setdefault(self.phase, []).append((now - self.sent_at[first]) * 1e6)
            self.service.setdefault(self.phase, []).append(np.asarray(body["latency_us"]))
        elif "/samples/" in message.topic:
            first = int(np.asarray(SampleBatch.from_wire(body).t)[0])
            if first in self.sent_at:
                self.echo.append((now - self.sent_at[first]) * 1e6)
        elif "/status/" in message.topic and isinstance(body, dict):
            self.status = body


async def run(args: argparse.Namespace, broker: LocalBroker, tmp: Path) -> dict[str, Any]:
    topics = Topics("bench")
    rec = Recorder()
    conn = MqttConnection(BrokerSettings(host=broker.host, port=broker.port), rec.handle)
    await conn.subscribe(topics.results("bench"), 0)
    await conn.subscribe(topics.status(INSTANCE), 0)
    await conn.subscribe(topics.samples("bench"), 0)
    runner = asyncio.create_task(conn.run())
    await conn.wait_connected()
    while rec.status.get("state") != "online":  # noqa: ASYNC110 (a bench polling a status)
        await asyncio.sleep(0.05)
    rng = np.random.default_rng(0)
    stop = asyncio.Event()
    sent = 0

    async def feed() -> None:
        nonlocal sent
        period, n = args.period_ms / 1000, args.per_message
        next_at = time.perf_counter()
        while not stop.is_set():
            x = rng.normal(size=(n, len(models.FEATURES))).astype(np.float32)
            t = T0 + (sent + np.arange(n, dtype=np.int64)) * 1_000_000
            batch = SampleBatch(
                "bench", models.FEATURES, t, x, np.zeros(x.shape, np.uint8),
                np.zeros(x.shape, np.float32),
            )  # fmt: skip
            payload, ctype = codec.encode(batch.to_wire())
            rec.sent_at[int(t[0])] = time.perf_counter()
            await conn.publish(topics.samples("bench"), payload, content_type=ctype)
            sent += n
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    revision = 0

    async def config(**keys: Any) -> None:
        nonlocal revision
        revision += 1
        update = ConfigUpdate(instance=INSTANCE, revision=revision, config=keys)
        payload, ctype = codec.encode(update.to_wire())
        await conn.publish(topics.config(INSTANCE), payload, content_type=ctype, qos=1, retain=True)

    async def until(predicate: Any, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(rec.status.get("health", {}).get("inference", {})):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    shadow_model = str(models.mlp(tmp / "shadow.onnx", seed=7))
    feeder = asyncio.create_task(feed())
    rec.phase = "warmup"
    await asyncio.sleep(1.0)
    rec.phase = "echo"
    await asyncio.sleep(args.phase_s / 2)
    for _ in range(args.rounds):
        rec.phase = "without"
        await asyncio.sleep(args.phase_s)
        rec.phase = "switching"
        await config(shadow={"path": shadow_model})
        await until(lambda s: s.get("revision") == revision and s.get("shadow") is not None)
        await asyncio.sleep(0.5)
        rec.phase = "with"
        await asyncio.sleep(args.phase_s)
        rec.phase = "switching"
        await config(shadow=None)
        await until(lambda s: s.get("revision") == revision and s.get("shadow") is None)
        await asyncio.sleep(0.5)
    stop.set()
    await feeder
    await asyncio.sleep(0.5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    return report(args, rec)


def report(args: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    out: dict[str, Any] = {"period_ms": args.period_ms, "per_message": args.per_message}
    print(
        f"period {args.period_ms} ms, {args.per_message} samples per message, {args.rounds} rounds"
    )
    echo = np.percentile(rec.echo, (50, 99)) if rec.echo else np.zeros(2)
    print(f"  raw limit: broker echo end to end  p50 {echo[0]:7.0f} µs  p99 {echo[1]:7.0f} µs")
    for side in ("without", "with"):
        svc = np.concatenate(rec.service.get(side, [np.zeros(1)]))
        e2e = np.asarray(rec.e2e.get(side, [0.0]))
        s, e = np.percentile(svc, (50, 99)), np.percentile(e2e, (50, 99))
        out[side] = {"service_p50": s[0], "service_p99": s[1], "e2e_p50": e[0], "e2e_p99": e[1]}
        print(
            f"  {side:7s} shadow: service p50 {s[0]:6.0f} µs p99 {s[1]:6.0f} µs | "
            f"end to end p50 {e[0]:6.0f} µs p99 {e[1]:6.0f} µs  ({len(e2e)} messages)"
        )
    for key in ("service_p99", "e2e_p99"):
        ratio = out["with"][key] / max(out["without"][key], 1e-9)
        out[f"ratio_{key}"] = ratio
        print(f"  {key} with/without: {ratio:.3f} (goal ≤ 1.10)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--period-ms", type=float, default=10.0)
    p.add_argument("--per-message", type=int, default=8)
    p.add_argument("--phase-s", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, LocalBroker(Path(tmp_name) / "b") as broker:
        tmp = Path(tmp_name)
        model = models.mlp(tmp / "live.onnx")
        cfg = tmp / "inference.yaml"
        cfg.write_text(
            f"site: bench\ninstance: {INSTANCE}\nflow: bench\nmodel: {{path: {model}}}\n"
            f"features: {models.FEATURES}\nbroker: {{host: {broker.host}, port: {broker.port}}}\n"
            "watch_s: 0\ntimings: {status_interval_s: 0.5}\nlog_level: WARNING\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        command = [sys.executable, "-m", "edgefleet.cli", "run", "inference", "--config", str(cfg)]
        proc = subprocess.Popen(command, env=env)
        try:
            asyncio.run(run(args, broker, tmp))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
