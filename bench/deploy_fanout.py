"""The fleet side of a mass deployment: `deploy` to N nodes, against the raw limit.

N nodes announce themselves (retained `status/agent` with labels, from one client); the fleet
service (in this process) builds, signs, stores and publishes N desired states in one `deploy`.
Measured: the `deploy` command's round trip, the time until a subscriber on `ef/+/desired` has
all N, and the raw limit: the same N payloads published retained QoS 1 by one client on the
same broker, one at a time as the fleet does. Then N nodes report `applied` and the time until
`deployment show` says succeeded.

    PYTHONPATH=. .venv/bin/python bench/deploy_fanout.py [--nodes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.config import Config
from edgefleet.fleet.service import main as fleet_main
from edgefleet.locals3 import LocalS3
from shared.config import validate
from shared.messages import ReportedState, Status
from shared.signing import SigningKey
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.inference import models

PREFIX = "bench"


async def eventually(check: Any, timeout: float = 120.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (a command's answer: no event to await)
            await asyncio.sleep(0.05)


async def setup(fleet: FleetClient, tmp: Path) -> None:
    await fleet.push(models.isolation_forest(tmp / "a.onnx"), "pump-ae", "model")
    features = "".join(
        f"    - {{signal: plc1/{f}, fill: hold, max_age_ms: 500, name: {f}}}\n"
        for f in models.FEATURES
    )
    text = f"name: pump-anomaly\nalign:\n  period_ms: 100\n  max_delay_ms: 100\n  features:\n{features}model: {{ref: pump-ae}}\n"  # noqa: E501
    await fleet.call("flow.push", {"text": text, "filename": "f.yaml"}, timeout=120)


@dataclass
class SimulatedFleet:
    fleet: FleetClient
    agents: Probe  # publishes the nodes' statuses and reports
    watcher: Probe  # subscribed to every node's desired state
    sites: list[str]


@contextlib.asynccontextmanager
async def simulated_fleet(n: int, tmp: Path) -> AsyncIterator[SimulatedFleet]:
    """A real broker, S3 and fleet service (in this process); `n` nodes announced online with
    `role=pump` (retained agent statuses from one client) and the group `pumps` of them."""
    broker = LocalBroker(tmp / "broker").start()
    s3 = LocalS3(tmp / "s3").start()
    key = tmp / "fleet.key"
    SigningKey.generate().save(key)
    os.environ["BENCH_S3_SECRET"] = s3.secret_key
    config = validate(
        Config,
        {
            "prefix": PREFIX,
            "broker": {"host": broker.host, "port": broker.port},
            "db": str(tmp / "fleet.db"),
            "work_dir": str(tmp / "work"),
            "signing_key": str(key),
            "s3": {"endpoint": s3.endpoint, "access_key": s3.access_key,
                   "secret_key_env": "BENCH_S3_SECRET"},
        },
        "fleet.yaml",
    )  # fmt: skip
    try:
        async with (
            running(fleet_main(config)),
            connect(f"{broker.host}:{broker.port}", prefix=PREFIX, timeout=300) as fleet,
            Probe(broker.host, broker.port) as agents,
            Probe(broker.host, broker.port) as watcher,
        ):
            await eventually(lambda: _answers(fleet))
            sites = [f"n{i:04d}" for i in range(n)]
            for site in sites:
                health = {"agent": {"labels": {"role": "pump"}}}
                body = Status(instance="agent", service="agent", state="online", health=health)
                await agents.publish(
                    Topics(site, PREFIX).status("agent"), body.to_wire(), qos=1, retain=True
                )

            async def all_known() -> bool:
                return len((await fleet.call("node.list"))["nodes"]) == n

            await eventually(all_known)
            await fleet.call("group.create", {"name": "pumps", "selector": "role=pump"})
            await watcher.subscribe(f"{PREFIX}/+/desired")
            yield SimulatedFleet(fleet, agents, watcher, sites)
    finally:
        s3.stop()
        broker.stop()


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with simulated_fleet(n, tmp) as sim:
            fleet, agents, watcher, sites = sim.fleet, sim.agents, sim.watcher, sim.sites
            await setup(fleet, tmp)
            t0 = time.perf_counter()
            result = await fleet.call("deploy", {"flows": ["pump-anomaly@1"], "group": "pumps"})
            t_cmd = time.perf_counter() - t0
            got = await watcher.wait_for(f"{PREFIX}/+/desired", count=n, timeout=300)
            t_all = time.perf_counter() - t0
            dep = result["deployment"]["id"]

            # raw: the same payloads, one retained QoS 1 publish at a time
            t1 = time.perf_counter()
            for d in got:
                await agents.publish(f"{PREFIX}/raw{d['site']}/desired", d, qos=1, retain=True)
            t_raw = time.perf_counter() - t1

            t2 = time.perf_counter()
            for site in sites:
                body2 = ReportedState(site=site, revision=1, deployment=dep, state="applied")
                await agents.publish(
                    Topics(site, PREFIX).reported(), body2.to_wire(), qos=1, retain=True
                )

            async def done() -> bool:
                shown = await fleet.call("deployment.show", {"id": dep})
                return shown["deployment"]["state"] == "succeeded"

            await eventually(done)
            t_reports = time.perf_counter() - t2
            print(f"nodes {n}")
            print(f"deploy command round trip       {t_cmd:.2f} s")
            print(f"all desired states received     {t_all:.2f} s")
            print(
                f"raw: {n} retained QoS 1 publishes {t_raw:.2f} s (fleet/raw {t_all / t_raw:.1f}x)"
            )
            print(f"{n} applied reports → succeeded {t_reports:.2f} s")


async def _answers(fleet: FleetClient) -> bool:
    try:
        await fleet.call("library.list", timeout=0.5)
    except Exception:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    args = p.parse_args()
    asyncio.run(run(args.nodes))


if __name__ == "__main__":
    main()
