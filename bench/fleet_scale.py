"""A mass deployment to 1,000 nodes, each the real agent code, against the raw broker.

One mosquitto, SeaweedFS, and the fleet service as its own process (`edgefleet run fleet`, so
its CPU and memory are its own). The nodes are `edgefleet.agent.agent.Agent` objects, many per
process (`--procs` processes): each has its own MQTT connection, state file, blob cache and
reports, and goes through the real protocol: signature, site and revision checks, the fleet's
`library.download_url`, the download from S3 with its sha256 check and rename, the state file
written atomically at every step, the flow files written and parsed, the retained reports.

Stand-ins, because 1,000 sites' instances (~5 processes each) cannot run on one machine:
- activation (`SiteSupervisor.reconcile` and the health gate) is a sleep of `--activate-ms`
  (default 300: a hot swap through the retained config and the first result of the new model
  at the flow's 100 ms period, as a real node sees it);
- the model check (`inspect_model` in a child process and `check_fits`) is skipped: on a real
  node it runs on that node's CPU (bench/signature_cost.py measures it), here it would put
  1,000 child processes on two cores.

Measured, per phase (deploy with download, deploy of a new version with download, rollback from
the cache): `deploy` (or `rollback`) command → every node's `applied` report seen by a
subscriber on `+/reported`, per-node p50/p99, → the fleet's `deployment show` says succeeded;
the fleet service's CPU and memory. The raw limit, in the same run: one client publishes the
same number of retained QoS 1 messages (the size of a real desired state) at once and a
subscriber receives them all.

    PYTHONPATH=. .venv/bin/python bench/fleet_scale.py [--nodes 1000] [--procs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import yaml

from edgefleet.agent.agent import Agent
from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.flow import FlowSpec
from edgefleet.locals3 import LocalS3
from edgefleet.site.model import SiteSpec
from edgefleet.site.supervisor import Reconciled
from shared import codec
from shared.messages import DesiredState
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.signing import SigningKey
from tests.inference import models

PREFIX = "scale"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the nodes (workers)


class StandInSupervisor:
    """What the agent asks of `SiteSupervisor`, with activation taking a fixed time."""

    def __init__(self, spec: SiteSpec, workdir: Path, activate_s: float) -> None:
        self.site = SimpleNamespace(spec=spec)
        self.workdir = workdir
        self.activate_s = activate_s
        self.deployed: list[FlowSpec] = []
        self.instances: dict[str, Any] = {}

    def derive(self, deployed: list[FlowSpec], files: dict[str, str] | None = None) -> dict:
        return {}

    async def reconcile(
        self, deployed: list[FlowSpec], files: dict[str, str] | None = None
    ) -> Reconciled:
        await asyncio.sleep(self.activate_s)
        self.deployed = list(deployed)
        return Reconciled()


class ScaleAgent(Agent):
    async def _check_models(self, desired: DesiredState, flows: list[FlowSpec]) -> None:
        return None  # stand-in: see the module's docstring

    async def _health_gate(self, flows: list[FlowSpec]) -> None:
        return None  # part of the activation stand-in's time


def node_spec(site: str, port: int, key: str) -> SiteSpec:
    return SiteSpec.model_validate(
        {
            "site": site,
            "prefix": PREFIX,
            "broker": {"host": "127.0.0.1", "port": port},
            "labels": {"role": "pump"},
            "log_level": "WARNING",
            "timings": {"status_interval_s": 600, "reconnect_initial_s": 0.2},
            "fleet": {"trusted_keys": [key], "command_timeout_s": 60},
        }
    )


async def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    agents = []
    for i in range(args.first, args.first + args.count):
        site = f"n{i:04d}"
        sup = StandInSupervisor(
            node_spec(site, args.port, args.key), args.dir / site, args.activate_ms / 1000
        )
        agent = ScaleAgent(sup)  # type: ignore[arg-type]
        await agent.recover()
        agents.append(agent)
    for agent in agents:
        await agent.start()
    print("started", flush=True)
    await stop.wait()
    await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)


# ---------------------------------------------------------------------- the measurement


class Watcher:
    """Every node's reports, decoded once each: per deployment, when each node applied it."""

    def __init__(self, port: int) -> None:
        self.applied: dict[str, dict[str, float]] = {}
        self.desired: bytes = b""
        self.raw: dict[str, float] = {}
        self.changed = asyncio.Event()
        settings = BrokerSettings(port=port, client_id="watcher", max_inflight=500)
        self.conn = MqttConnection(settings, self._on)

    async def _on(self, m: Received) -> None:
        now = time.perf_counter()
        if m.topic.endswith("/reported"):
            r = codec.decode(m.payload, m.content_type)
            if r.get("state") == "applied" and r.get("deployment"):
                self.applied.setdefault(r["deployment"], {}).setdefault(r["site"], now)
                self.changed.set()
        elif m.topic.endswith("/desired") and not self.desired:
            self.desired = m.payload
        elif m.topic.startswith("rawbench/"):
            self.raw.setdefault(m.topic, now)
            self.changed.set()

    async def wait(self, done: Any, timeout: float = 300) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


async def raw_limit(watcher: Watcher, n: int, port: int, round_: int) -> float:
    """N retained QoS 1 publishes of a desired state's size at once → all received."""
    payload = watcher.desired or b"x" * 2048
    conn = MqttConnection(BrokerSettings(port=port, client_id=f"raw{round_}", max_inflight=500),
                          lambda m: asyncio.sleep(0))  # fmt: skip
    task = asyncio.create_task(conn.run())
    await asyncio.wait_for(conn.wait_connected(), 10)
    topics = [f"rawbench/r{round_}n{i:04d}/desired" for i in range(n)]
    t0 = time.perf_counter()
    await asyncio.gather(*(conn.publish(t, payload, qos=1, retain=True) for t in topics))
    await watcher.wait(lambda: all(t in watcher.raw for t in topics))
    took = max(watcher.raw[t] for t in topics) - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return took


FLOW = """\
name: pump
align:
  period_ms: 100
  max_delay_ms: 200
  features:
{features}model: {{ref: {ref}}}
"""


async def push_version(fleet: FleetClient, tmp: Path, seed: int) -> int:
    path = models.mlp(tmp / f"m{seed}.onnx", seed=seed)
    ref = (await fleet.push(path, "pump-ae", "model"))["resource"]["ref"]
    features = "".join(
        f"    - {{signal: plc1/{f}, fill: hold, max_age_ms: 1000, name: {f}}}\n"
        for f in models.FEATURES
    )
    text = FLOW.format(features=features, ref=ref)
    pushed = await fleet.call("flow.push", {"text": text, "filename": "pump.yaml"}, timeout=120)
    version: int = pushed["flow"]["version"]
    return version


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def phase(
    name: str, fleet: FleetClient, watcher: Watcher, fleet_proc: psutil.Process, n: int,
    cmd: str, cmd_args: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    cpu0 = sum(fleet_proc.cpu_times()[:2])
    t0 = time.perf_counter()
    result = await fleet.call(cmd, cmd_args, timeout=300)
    t_cmd = time.perf_counter() - t0
    dep = result["deployment"]["id"]
    await watcher.wait(lambda: len(watcher.applied.get(dep, {})) >= n)
    per_node = [t - t0 for t in watcher.applied[dep].values()]
    t_all = max(per_node)
    while True:
        shown = await fleet.call("deployment.show", {"id": dep}, timeout=120)
        if shown["deployment"]["state"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    t_fleet = time.perf_counter() - t0
    cpu = sum(fleet_proc.cpu_times()[:2]) - cpu0
    return {
        "phase": name,
        "command_s": round(t_cmd, 2),
        "all_applied_s": round(t_all, 2),
        "p50_s": round(pct(per_node, 0.5), 2),
        "p99_s": round(pct(per_node, 0.99), 2),
        "fleet_succeeded_s": round(t_fleet, 2),
        "fleet_cpu_s": round(cpu, 2),
        "fleet_rss_mb": round(fleet_proc.memory_info().rss / 2**20),
    }


async def run(args: argparse.Namespace) -> None:
    n = args.nodes
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        broker = LocalBroker(tmp / "broker").start()
        s3 = LocalS3(tmp / "s3").start()
        key = SigningKey.generate()
        key.save(tmp / "fleet.key")
        os.environ["SCALE_S3_SECRET"] = s3.secret_key
        config = {
            "prefix": PREFIX,
            "broker": {"host": broker.host, "port": broker.port},
            "db": str(tmp / "fleet.db"),
            "work_dir": str(tmp / "work"),
            "signing_key": str(tmp / "fleet.key"),
            "log_level": "WARNING",
            "s3": {"endpoint": s3.endpoint, "access_key": s3.access_key,
                   "secret_key_env": "SCALE_S3_SECRET"},
        }  # fmt: skip
        (tmp / "fleet.yaml").write_text(yaml.safe_dump(config))
        fleet_yaml = str(tmp / "fleet.yaml")
        fleet_popen = spawn(tmp / "fleet.log", "-m", "edgefleet.cli", "run", "fleet", "--config",
                            fleet_yaml)  # fmt: skip
        workers: list[subprocess.Popen[bytes]] = []
        rows: list[dict[str, Any]] = []
        raws: list[float] = []
        try:
            async with connect(f"{broker.host}:{broker.port}", prefix=PREFIX, timeout=300) as fleet:
                for _ in range(200):
                    with contextlib.suppress(Exception):
                        await fleet.call("library.list", timeout=0.5)
                        break
                v1 = await push_version(fleet, tmp, seed=2)
                v2 = await push_version(fleet, tmp, seed=7)
                watcher = Watcher(broker.port)
                wtask = asyncio.create_task(watcher.conn.run())
                await watcher.conn.subscribe(f"{PREFIX}/+/reported", qos=1)
                await watcher.conn.subscribe(f"{PREFIX}/+/desired", qos=1)
                await watcher.conn.subscribe("rawbench/#", qos=1)
                await asyncio.wait_for(watcher.conn.wait_connected(), 10)

                per = -(-n // args.procs)
                t_start = time.perf_counter()
                for first in range(0, n, per):
                    workers.append(spawn(
                        tmp / f"worker{first}.log", __file__, "--worker", "--first", str(first),
                        "--count", str(min(per, n - first)), "--port", str(broker.port),
                        "--key", key.public.text(), "--dir", str(tmp / "nodes"),
                        "--activate-ms", str(args.activate_ms),
                    ))  # fmt: skip

                async def online() -> int:
                    nodes = (await fleet.call("node.list", timeout=120))["nodes"]
                    return sum(1 for x in nodes if x["online"] == "online")

                while await online() < n:  # noqa: ASYNC110 (the fleet's answer: asked again)
                    await asyncio.sleep(0.5)
                t_online = time.perf_counter() - t_start
                await fleet.call("group.create", {"name": "pumps", "selector": "role=pump"})
                proc = psutil.Process(fleet_popen.pid)
                rows.append(await phase("deploy pump@1, every node downloads", fleet, watcher,
                                        proc, n, "deploy", {"flows": [f"pump@{v1}"],
                                                            "group": "pumps"}))  # fmt: skip
                raws.append(await raw_limit(watcher, n, broker.port, 1))
                rows.append(await phase("deploy pump@2, a new model downloaded", fleet, watcher,
                                        proc, n, "deploy", {"flows": [f"pump@{v2}"],
                                                            "group": "pumps"}))  # fmt: skip
                back = {"flow": "pump", "to": v1}
                rows.append(await phase("rollback pump --to 1, from the cache", fleet, watcher,
                                        proc, n, "rollback", back))  # fmt: skip
                raws.append(await raw_limit(watcher, n, broker.port, 2))
                wtask.cancel()
                await asyncio.gather(wtask, return_exceptions=True)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    w.kill()
            fleet_popen.terminate()
            fleet_popen.wait(30)
            s3.stop()
            broker.stop()
    raw = min(raws)
    print(f"nodes {n} in {args.procs} processes, activation stand-in {args.activate_ms} ms; "
          f"all online in the fleet's node table {t_online:.1f} s")  # fmt: skip
    each = ", ".join(f"{r:.3f}" for r in raws)
    print(f"raw: {n} retained QoS 1 publishes → all received: {each} s (best {raw:.3f} s)")
    for r in rows:
        print(f"{r['phase']:<40} all applied {r['all_applied_s']:6.2f} s "
              f"({r['all_applied_s'] / raw:5.1f}x raw), per node p50 {r['p50_s']:.2f} s "
              f"p99 {r['p99_s']:.2f} s; command {r['command_s']:.2f} s; fleet says succeeded "
              f"{r['fleet_succeeded_s']:.2f} s; fleet CPU {r['fleet_cpu_s']:.1f} s, "
              f"RSS {r['fleet_rss_mb']} MB")  # fmt: skip
    if args.json:
        print(json.dumps({"raw_s": raws, "phases": rows}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4, help="processes the nodes are spread over")
    p.add_argument("--activate-ms", type=float, default=300, help="the activation stand-in")
    p.add_argument("--dir", type=Path, default=None, help="where the nodes' state goes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker and os.environ.get("SCALE_PROFILE"):  # where a node's time goes
        import cProfile

        out = f"{os.environ['SCALE_PROFILE']}.{args.first}"
        cProfile.runctx("asyncio.run(worker(args))", globals(), {"args": args}, out)
        return
    asyncio.run(worker(args) if args.worker else run(args))


if __name__ == "__main__":
    main()
