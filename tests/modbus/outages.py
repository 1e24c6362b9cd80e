"""A Modbus device that stops answering (every request taken and dropped: the adapter times
out) or disappears (the simulator's server stopped, then started again on the same port), while
the adapter polls two of its units. Shared by the Modbus tests and the fault suite."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.sim.plant import PlantSimulator
from services.modbus.service import main
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


def says_no_answer(e: dict[str, Any]) -> bool:
    return "no answer" in e["reason"] or "cannot connect" in e["reason"]


async def run_outages(
    base: dict[str, Any], site: str, probe: Probe, outages: list[tuple[Kind, float]]
) -> OutageRun:
    topics = Topics(site)
    raw, errors, status = topics.raw("plc1"), topics.errors(INSTANCE), topics.status(INSTANCE)
    await probe.subscribe(topics.everything())
    out = OutageRun()
    async with PlantSimulator(opcua=False) as sim:
        server = sim.modbus
        assert server is not None
        async with running(main(adapter_config(base, site, sim.modbus_port or 0))):
            await probe.wait_for(raw, all_good)
            for kind, down_s in outages:
                run = Outage(kind, down_s)
                start = len(probe.decoded(raw))
                before = len([e for e in probe.decoded(errors) if says_no_answer(e)])
                counted = max(
                    (s["health"]["modbus"]["errors"].get("timeout", 0)
                     for s in probe.decoded(status)), default=0,
                )  # fmt: skip
                if kind == "timeout":
                    server.mute()
                else:
                    await server.stop()
                reports = await probe.wait_for(errors, says_no_answer, count=before + 1)
                run.reason = reports[-1]["reason"]

                def grew(s: dict[str, Any], c: int = counted) -> bool:
                    return bool(s["health"]["modbus"]["errors"].get("timeout", 0) > c)

                *_, last = await probe.wait_for(status, grew)
                run.counted = last["health"]["modbus"]["errors"]["timeout"] - counted
                await asyncio.sleep(down_s)  # the outage itself: a drawn length, not a wait
                if kind == "timeout":
                    server.unmute()
                else:
                    await server.start()
                back = time.monotonic()
                mark = len(probe.decoded(raw))

                def answers_again(m: int = mark) -> bool:
                    return any(all_good(b) for b in probe.decoded(raw)[m:])

                await probe.wait_until(answers_again, timeout=60)
                run.back_s = time.monotonic() - back
                for batch in probe.decoded(raw)[start:mark]:
                    run.bad += int((batch["q"] != 0).sum())
                out.outages.append(run)
    batches = probe.decoded(raw)
    out.batches = len(batches)
    out.wrong = sum(wrong_values(b) for b in batches)
    return out
