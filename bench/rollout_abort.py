"""A staged rollout at fleet scale: stage advance and abort latency, nodes touched beyond the
canary, against one command round trip measured in the same run.

N simulated nodes (retained `status/agent`, reports published by one client) and the fleet
service in this process. Two deployments, each in stages `10%,100%`:

1. advance: every canary node reports `applied`; measured from the last canary report's
   PUBACK to the first desired state of stage 2 at a subscriber, and to all of stage 2's.
2. abort (`--abort-above 20%`, injected failure rate 30 % of the canary): from the PUBACK of
   the failure report that crosses the threshold to the first revert desired state at the
   subscriber (the abort and its rollback issued), and to every canary node's revert; then the
   nodes beyond the canary that received a desired state of the aborted deployment (goal 0).

The reference: the median round trip of `keys.status` (the lightest command: one query) over
the same broker, i.e. one report-in, publish-out path through the fleet service.

    PYTHONPATH=. .venv/bin/python bench/rollout_abort.py [--nodes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path

from bench.deploy_fanout import eventually, simulated_fleet
from edgefleet.fleet.client import FleetClient
from shared.messages import ReportedState
from shared.topics import Topics
from tests.helpers import Probe
from tests.inference import models

PREFIX = "bench"


async def report(agents: Probe, site: str, revision: int, state: str) -> None:
    body = ReportedState(site=site, revision=revision, state=state)  # type: ignore[arg-type]
    await agents.publish(Topics(site, PREFIX).reported(), body.to_wire(), qos=1, retain=True)


async def flows(fleet: FleetClient, tmp: Path) -> None:
    """pump-anomaly@1 and @2 (another max delay), both on pump-ae@1."""
    await fleet.push(models.isolation_forest(tmp / "a.onnx"), "pump-ae", "model")
    features = "".join(
        f"    - {{signal: plc1/{f}, fill: hold, max_age_ms: 500, name: {f}}}\n"
        for f in models.FEATURES
    )
    for delay in (100, 150):
        text = (
            f"name: pump-anomaly\nalign:\n  period_ms: 100\n  max_delay_ms: {delay}\n"
            f"  features:\n{features}model: {{ref: pump-ae}}\n"
        )
        await fleet.call("flow.push", {"text": text, "filename": "f.yaml"}, timeout=120)


async def round_trip(fleet: FleetClient, rounds: int = 30) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await fleet.call("keys.status")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def run(n: int, fail_rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with simulated_fleet(n, tmp) as sim:
            fleet, agents, watcher, sites = sim.fleet, sim.agents, sim.watcher, sim.sites
            await flows(fleet, tmp)
            rtt_before = await round_trip(fleet)
            staged = {"stages": ["10%", "100%"], "abort_above": "20%"}

            # 1. advance
            first = await fleet.call(
                "deploy",
                {"flows": ["pump-anomaly@1"], "group": "pumps", "strategy": staged},
            )
            canary = [p["site"] for p in first["plan"] if p["stage"] == 0]
            rest = set(sites) - set(canary)
            await watcher.wait_for(f"{PREFIX}/+/desired", count=len(canary), timeout=300)
            for site in canary[:-1]:
                await report(agents, site, 1, "applied")
            t0 = time.perf_counter()
            await report(agents, canary[-1], 1, "applied")
            await watcher.wait_for(f"{PREFIX}/+/desired", lambda d: d["site"] in rest, timeout=300)
            t_advance = time.perf_counter() - t0
            await watcher.wait_for(
                f"{PREFIX}/+/desired", lambda d: d["site"] in rest, count=len(rest),
                timeout=300,
            )  # fmt: skip
            t_stage2 = time.perf_counter() - t0
            for site in sorted(rest):
                await report(agents, site, 1, "applied")

            async def succeeded() -> bool:
                shown = await fleet.call("deployment.show", {"id": first["deployment"]["id"]})
                return bool(shown["deployment"]["state"] == "succeeded")

            await eventually(succeeded)

            # 2. abort: fail_rate of the canary fails, beyond the 20 % threshold
            second = await fleet.call(
                "deploy",
                {"flows": ["pump-anomaly@2"], "group": "pumps", "strategy": staged},
            )
            dep = second["deployment"]["id"]
            await watcher.wait_for(
                f"{PREFIX}/+/desired", lambda d: d["revision"] == 2, count=len(canary),
                timeout=300,
            )  # fmt: skip
            allowed = math.floor(0.2 * len(canary))
            failing = max(allowed + 1, math.ceil(fail_rate * len(canary)))
            for site in canary[:allowed]:
                await report(agents, site, 2, "rolled_back")
            t1 = time.perf_counter()
            await report(agents, canary[allowed], 2, "rolled_back")  # crosses it
            await watcher.wait_for(f"{PREFIX}/+/desired", lambda d: d["revision"] == 3, timeout=300)
            t_abort = time.perf_counter() - t1
            await watcher.wait_for(
                f"{PREFIX}/+/desired", lambda d: d["revision"] == 3, count=len(canary),
                timeout=300,
            )  # fmt: skip
            t_reverted = time.perf_counter() - t1
            for site in canary[allowed + 1 : failing]:
                await report(agents, site, 2, "rolled_back")
            shown = await fleet.call("deployment.show", {"id": dep})
            touched = sorted(
                {
                    d["site"]
                    for d in watcher.decoded(f"{PREFIX}/+/desired")
                    if d["site"] in rest and d.get("deployment") == dep
                }
            )
            rtt_after = await round_trip(fleet)
            rtt = statistics.median([rtt_before, rtt_after])
            print(f"nodes {n}, stages 10%,100% (canary {len(canary)}), abort above 20%")
            print(f"command round trip (keys.status, median) {rtt * 1000:.1f} ms "
              f"(before {rtt_before * 1000:.1f}, after {rtt_after * 1000:.1f})")  # fmt: skip
            print(
                f"stage advance: last canary report → first stage-2 desired state "
                f"{t_advance * 1000:.1f} ms ({t_advance / rtt:.1f}x the round trip); "
                f"all {len(rest)} {t_stage2:.2f} s"
            )
            print(
                f"abort: crossing failure report → first revert desired state "
                f"{t_abort * 1000:.1f} ms ({t_abort / rtt:.1f}x the round trip); "
                f"all {len(canary)} canary nodes reverted {t_reverted:.2f} s"
            )
            print(
                f"injected failures {failing} of {len(canary)}; deployment "
                f"{shown['deployment']['state']}; nodes beyond the canary touched: {len(touched)}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--fail-rate", type=float, default=0.3, help="of the canary, injected")
    args = p.parse_args()
    asyncio.run(run(args.nodes, args.fail_rate))


if __name__ == "__main__":
    main()
