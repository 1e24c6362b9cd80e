"""The site broker SIGKILLed under `edgefleet up`: how fast the site recovers, what it loses,
and which retained messages a kill takes back (not a test).

    PYTHONPATH=. .venv/bin/python bench/broker_restart.py [--kills 5] [--retained-runs 5]

Recovery: simulator (Modbus, its own process) → modbus adapter → aligner (100 ms) → inference
→ forwarder (SQLite sink), each a process under `SiteSupervisor` with a local broker, and
site.yaml's default timings and supervisor settings (what a user gets). The broker is SIGKILLed
`--kills` times, each once the site is steady again (`stable_after_s` 3: every kill starts
from the first restart delay; kills closer together than that double it, as for an instance).
Per kill: time to the broker's `online`, to the first result of a sample taken after the kill
(a subscriber in this process), to every instance `online` again; and the samples missing from
the SQLite history around the kill.

Retained: a retained message (QoS 1, acknowledged) on `config/x`, then SIGKILL after a delay,
then a restart: does it come back? Once against mosquitto with the shipped config alone, once
under `SiteSupervisor`, which asks the broker to save when a config, desired or reported
message changes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.broker import LocalBroker, free_port, wait_port
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from shared import codec
from shared.messages import ResultBatch
from shared.mqtt import BrokerSettings, MqttConnection, Received
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site

ROOT = Path(__file__).resolve().parents[1]
PERIOD_NS = 100_000_000


class Recorder:
    """State changes and result arrivals, with an event to wait on either."""

    def __init__(self) -> None:
        self.changes: list[StatusChange] = []
        self.results: list[tuple[float, int]] = []  # (arrival, newest sample time ns)
        self.changed = asyncio.Event()

    def on_status(self, change: StatusChange) -> None:
        self.changes.append(change)
        self.changed.set()

    async def on_result(self, message: Received) -> None:
        batch = ResultBatch.from_wire(codec.decode(message.payload, message.content_type))
        self.results.append((time.time(), int(batch.t.max())))
        self.changed.set()

    async def until(self, found: Any, timeout: float = 60.0) -> Any:
        async with asyncio.timeout(timeout):
            while (value := found()) is None:
                self.changed.clear()
                await self.changed.wait()
        return value


def start_simulator(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgefleet.sim.cli", "--modbus-port", str(port), "--no-opcua"]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port, timeout=20)
    return process, port


async def recovery(root: Path, kills: int) -> list[dict[str, float]]:
    sim, modbus = start_simulator(root / "sim.log")
    try:
        (root / "flows").mkdir()
        mlp(root / "flows" / "pump.onnx", f=len(FEATURES))
        port = free_port()
        data = site_data("bench", port, modbus, forwarder={"queue_dir": str(root / "queue")})
        del data["timings"], data["supervisor"]  # the defaults, as a user gets them
        # but a run counts as stable after 3 s, not 30: each kill, 3 s into a steady site,
        # then starts from the first restart delay, as a crash of a long-running site does
        data["supervisor"] = {"stable_after_s": 3.0}
        data["broker"]["start_local"] = True
        flow = flow_data(sinks=[{"kind": "sqlite", "path": "history.db"}])
        rec = Recorder()
        sup = SiteSupervisor(write_site(root, data, flow), root / "w", on_status=rec.on_status)
        rows: list[dict[str, float]] = []
        async with sup:
            await sup.wait_online(timeout=60)
            conn = MqttConnection(BrokerSettings(port=port, reconnect_max_s=0.5), rec.on_result)
            await conn.subscribe("ef/bench/results/pump")
            task = asyncio.create_task(conn.run())

            def fresh(after: float) -> Any:
                return lambda: next((a for a, t in rec.results if t > after * 1e9), None)

            def change(name: str, state: str, mark: int) -> Any:
                return lambda: next(
                    (c.t for c in rec.changes[mark:] if c.instance == name and c.state == state),
                    None,
                )

            await rec.until(fresh(time.time() + 2.0))
            for _ in range(kills):
                assert sup.broker is not None and sup.broker.pid is not None
                mark = len(rec.changes)
                killed = time.time()
                os.kill(sup.broker.pid, signal.SIGKILL)
                online = await rec.until(change("broker", "online", mark))
                result = await rec.until(fresh(killed))
                everyone = [await rec.until(change(n, "online", mark)) for n in sup.instances]
                rows.append(
                    {
                        "killed": killed,
                        "broker": online - killed,
                        "result": result - killed,
                        "all_online": max(everyone) - killed,
                    }
                )
                await rec.until(fresh(time.time() + 4.0))  # steady again, for over 3 s
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with sqlite3.connect(root / "flows" / "history.db") as db:
            ts = [t for (t,) in db.execute("SELECT t FROM results ORDER BY t")]
        missing = [t for a, b in itertools.pairwise(ts) for t in range(a + PERIOD_NS, b, PERIOD_NS)]
        for row in rows:
            start, end = row["killed"] - 1.0, row["killed"] + row["all_online"] + 1.0
            row["lost"] = sum(1 for t in missing if start <= t / 1e9 <= end)
        print(f"history: {len(ts)} results, {len(missing)} missing in all")
        return rows
    finally:
        sim.terminate()
        sim.wait(10)


async def publish_retained(port: int, topic: str, body: dict[str, Any]) -> None:
    conn = MqttConnection(BrokerSettings(port=port))
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.wait_connected(), 10)
        payload, content_type = codec.encode(body, "json")
        result = await conn.publish(topic, payload, content_type=content_type, qos=1, retain=True)
        assert result.ok and not result.queued, result
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def read_retained(port: int, topic: str) -> Any:
    """The retained body on `topic`, or None; a retained message arrives right after SUBACK."""
    got: list[Any] = []
    arrived = asyncio.Event()

    async def handler(message: Received) -> None:
        got.append(codec.decode(message.payload, message.content_type))
        arrived.set()

    conn = MqttConnection(BrokerSettings(port=port), handler)
    await conn.subscribe(topic)
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.wait_connected(), 10)
        try:
            await asyncio.wait_for(arrived.wait(), 1.0)
        except TimeoutError:
            return None
        return got[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def retained_alone(root: Path, delay: float, n: int) -> bool:
    broker = LocalBroker(root / f"alone-{delay}-{n}").start()
    try:
        await publish_retained(broker.port, "ef/bench/config/x", {"n": n})
        await asyncio.sleep(delay)
        broker.kill()
        broker.start()
        return await read_retained(broker.port, "ef/bench/config/x") == {"n": n}
    finally:
        broker.stop()


async def retained_under_up(root: Path, delay: float, n: int) -> bool:
    port = free_port()
    site = root / f"up-{delay}-{n}"
    site.mkdir()
    (site / "site.yaml").write_text(
        f"site: bench\nbroker: {{port: {port}, start_local: true}}\n"
        "supervisor: {restart_initial_s: 0.1}\n"
    )
    rec = Recorder()
    async with SiteSupervisor(site / "site.yaml", site / "w", on_status=rec.on_status) as sup:
        await sup.wait_watching()
        await publish_retained(port, "ef/bench/config/x", {"n": n})
        await asyncio.sleep(delay)
        assert sup.broker is not None and sup.broker.pid is not None
        mark = len(rec.changes)
        os.kill(sup.broker.pid, signal.SIGKILL)
        await rec.until(
            lambda: next(
                (1 for c in rec.changes[mark:] if c.instance == "broker" and c.state == "online"),
                None,
            )
        )
        return await read_retained(port, "ef/bench/config/x") == {"n": n}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--retained-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "site").mkdir()
        rows = await recovery(root / "site", args.kills) if args.kills else []
        print("kill  broker online  first result  all online  samples lost")
        for i, r in enumerate(rows, 1):
            print(
                f"{i:>4}  {r['broker']:>11.2f} s  {r['result']:>10.2f} s  "
                f"{r['all_online']:>8.2f} s  {r['lost']:>12.0f}"
            )
        results = [r["result"] for r in rows]
        if results:
            print(f"kill -> first result: median {statistics.median(results):.2f} s, "
                  f"max {max(results):.2f} s")  # fmt: skip

        print("\nretained config/x, published (QoS 1, acked), then SIGKILL after a delay:")
        print("delay     mosquitto alone   under up")
        for delay in (0.0, 0.01, 0.1, 1.0, 5.0):
            alone = [await retained_alone(root, delay, n) for n in range(args.retained_runs)]
            up = [await retained_under_up(root, delay, n) for n in range(args.retained_runs)]
            print(f"{delay * 1000:>5.0f} ms  {sum(alone)}/{len(alone)} survive"
                  f"       {sum(up)}/{len(up)} survive")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
