"""`edgefleet demo`: a local broker, a gateway sending telemetry, mqtt-ingest, and live traffic.

Everything it starts is stopped on Ctrl-C (or after `duration` seconds), leaving nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from edgefleet.broker import LocalBroker, free_port
from edgefleet.tap import tap
from shared import codec
from shared.mqtt import BrokerSettings, MqttConnection

SITE = "demo"
GATEWAY_TOPIC = "plant/line1/pump1/telemetry"


def ingest_config(port: int) -> dict[str, object]:
    return {
        "site": SITE,
        "instance": "ingest-gateway",
        "broker": {"port": port},
        "timings": {"status_interval_s": 5},
        "inputs": [
            {
                "topic": "plant/+/+/telemetry",
                "source": "gateway",
                "timestamp": {"path": "ts", "unit": "ms"},
                "signals": [
                    {"name": "pressure", "path": "pressure_bar"},
                    {"name": "temp", "path": "temp_c"},
                ],
            }
        ],
    }


async def gateway(settings: BrokerSettings, period_s: float = 0.5) -> None:
    """Stands for another system on the plant network, publishing JSON telemetry."""
    connection = MqttConnection(settings)
    runner = asyncio.create_task(connection.run())
    try:
        await connection.wait_connected()
        while True:
            t = time.time()
            body = {
                "ts": int(t * 1000),
                "pressure_bar": round(4.0 + 0.2 * math.sin(t / 3), 3),
                "temp_c": round(45 + 0.5 * math.sin(t / 30), 2),
            }
            payload, content_type = codec.encode(body, "json")
            await connection.publish(GATEWAY_TOPIC, payload, content_type=content_type)
            await asyncio.sleep(period_s)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _demo(settings: BrokerSettings, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(gateway(settings)),
        asyncio.create_task(tap("ef/#", settings)),
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_demo(workdir: Path, port: int = 0, duration: float | None = None) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(workdir / "broker", port=port or free_port())
    broker.start()
    config = workdir / "ingest.yaml"
    config.write_text(yaml.safe_dump(ingest_config(broker.port), sort_keys=False))
    log = (workdir / "ingest.log").open("wb")
    ingest = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "run", "mqtt-ingest", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    print(
        f"edgefleet demo: broker on 127.0.0.1:{broker.port}, mqtt-ingest running "
        f"(log: {workdir / 'ingest.log'}). Live traffic below; Ctrl-C stops everything.",
        file=sys.stderr,
        flush=True,
    )
    try:
        settings = BrokerSettings(port=broker.port, reconnect_max_s=1.0)
        asyncio.run(_demo(settings, duration))
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()
        log.close()
        broker.stop()
        print("edgefleet demo: stopped; nothing left running.", file=sys.stderr)
    return 0
