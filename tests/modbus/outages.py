"""A Modbus device that stops answering (every request taken and dropped: the adapter times
out) or disappears (the simulator's server stopped, then started again on the same port), while
the adapter polls two of its units. Shared by the Modbus tests and the fault suite."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.sim.modbus_server import ModbusSimServer
from edgefleet.sim.plant import PlantSimulator
from services.modbus.service import main
from shared import clock
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.modbus.exceptions import adapter_config, all_good, wrong_values

Kind = Literal["timeout", "gone"]
INSTANCE = "modbus-exc"


@dataclass
class Outage:
    kind: Kind
    down_s: float
    reason: str = ""  # the report on the errors topic
    counted: int = 0  # growth of the status' `timeout` count
    bad: int = 0  # bad-quality readings published while it was out
    back_s: float = 0.0  # from the device answering again to the first all-good batch


@dataclass
class OutageRun:
    outages: list[Outage] = field(default_factory=list)
    wrong: int = 0  # readings published with a value the device did not give (goal 0)
    batches: int = 0


def says(kind: Kind, e: dict[str, Any]) -> bool:
    """A report of this kind of outage: a device gone may still time out a request first."""
    return "no answer" in e["reason"] or (kind == "gone" and "cannot connect" in e["reason"])


def timeouts(s: dict[str, Any]) -> int:
    return int(s["health"]["modbus"]["errors"].get("timeout", 0))


async def _outage(
    probe: Probe, topics: Topics, server: ModbusSimServer, kind: Kind, down_s: float
) -> Outage:
    """One outage, each figure from what came after it began (a report the rate limiter held
    back, or a status, from the one before is not this one's)."""
    raw, errors, status = topics.raw("plc1"), topics.errors(INSTANCE), topics.status(INSTANCE)
    run = Outage(kind, down_s)
    begun = clock.now_ns()
    start = len(probe.decoded(raw))
    counted = max((timeouts(s) for s in probe.decoded(status)), default=0)
    if kind == "timeout":
        server.mute()
    else:
        await server.stop()

    def bad_after() -> bool:
        return any(bool((b["q"] != 0).any()) for b in probe.decoded(raw)[start:])

    await probe.wait_until(bad_after, timeout=30)
    reports = await probe.wait_for(errors, lambda e: e["t"] > begun and says(kind, e))
    run.reason = reports[0]["reason"]
    *_, last = await probe.wait_for(status, lambda s: s["t"] > begun and timeouts(s) > counted)
    run.counted = timeouts(last) - counted
    await asyncio.sleep(down_s)  # the outage itself: a drawn length, not a wait
    if kind == "timeout":
        server.unmute()
    else:
        await server.start()
    back, back_ns = time.monotonic(), clock.now_ns()

    def answers_again() -> bool:  # read after it returned: an answer from before does not count
        return any(all_good(b) and b["t"].min() > back_ns for b in probe.decoded(raw)[start:])

    await probe.wait_until(answers_again, timeout=60)
    run.back_s = time.monotonic() - back
    for batch in probe.decoded(raw)[start:]:
        if batch["t"].max() <= back_ns:
            run.bad += int((batch["q"] != 0).sum())
    return run


async def run_outages(
    base: dict[str, Any], site: str, probe: Probe, outages: list[tuple[Kind, float]]
) -> OutageRun:
    topics = Topics(site)
    raw = topics.raw("plc1")
    await probe.subscribe(topics.everything())
    out = OutageRun()
    async with PlantSimulator(opcua=False) as sim:
        server = sim.modbus
        assert server is not None
        async with running(main(adapter_config(base, site, sim.modbus_port or 0))):
            await probe.wait_for(raw, all_good)
            for kind, down_s in outages:
                out.outages.append(await _outage(probe, topics, server, kind, down_s))
    batches = probe.decoded(raw)
    out.batches = len(batches)
    out.wrong = sum(wrong_values(b) for b in batches)
    return out
