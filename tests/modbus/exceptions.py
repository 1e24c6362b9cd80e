"""One unit of the simulator's Modbus server (1) answers an exception code while another (2)
answers as before; the adapter polls both. Shared by the Modbus tests and the fault suite."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgefleet.sim.plant import PlantSimulator
from services.modbus.config import ModbusConfig
from services.modbus.service import main
from shared.config import validate
from shared.messages import Quality
from shared.topics import Topics
from tests.helpers import Probe, running

STATIC = -12345  # the simulator's constant at holding 100 of unit 1 (int16)
SIGNALS = ["constant", "level"]  # unit 1 holding 100 (made to fail), unit 2 input 0


@dataclass
class CodeRun:
    """What the adapter did while unit 1 answered one exception code."""

    code: int
    reason: str = ""  # the report on the errors topic
    counted: int = 0  # the status' count of this code
    other_good: int = 0  # good readings of unit 2 meanwhile
    failed_bad: int = 0  # bad readings of unit 1 meanwhile


@dataclass
class ExceptionRun:
    runs: list[CodeRun] = field(default_factory=list)
    wrong: int = 0  # readings published with a value that is not the device's (goal 0)
    batches: int = 0


def adapter_config(base: dict[str, Any], site: str, port: int) -> ModbusConfig:
    blocks = [
        {
            "unit": 1,
            "table": "holding",
            "points": [{"name": "constant", "address": 100, "type": "int16"}],
        },
        {"unit": 2, "table": "input", "points": [{"name": "level", "address": 0}]},
    ]
    data = {
        **base,
        "site": site,
        "instance": "modbus-exc",
        "source": "plc1",
        "device": {"port": port, "timeout_s": 0.5, "dead_after_s": 5},
        "poll_ms": 50,
        "blocks": blocks,
    }
    return validate(ModbusConfig, data, "test")


def all_good(batch: dict[str, Any]) -> bool:
    return bool(len(batch["q"]) == len(SIGNALS) and (batch["q"] == Quality.GOOD).all())


def wrong_values(batch: dict[str, Any]) -> int:
    """Readings that carry a value the device did not give: a bad one with a number, or a good
    constant that is not the constant."""
    out = 0
    for sig, value, q in zip(batch["sig"], batch["value"], batch["q"], strict=True):
        name = batch["signals"][sig]
        if q != Quality.GOOD:
            out += not math.isnan(value)
        elif name == "constant":
            out += value != STATIC
    return out


async def run_codes(
    base: dict[str, Any], site: str, probe: Probe, codes: list[int]
) -> ExceptionRun:
    topics = Topics(site)
    raw, errors, status = (
        topics.raw("plc1"),
        topics.errors("modbus-exc"),
        topics.status("modbus-exc"),
    )
    await probe.subscribe(topics.everything())
    out = ExceptionRun()
    async with PlantSimulator(opcua=False) as sim:
        assert sim.modbus is not None
        async with running(main(adapter_config(base, site, sim.modbus_port or 0))):
            await probe.wait_for(raw, all_good)
            for code in codes:
                run = CodeRun(code)
                key = f"0x{code:02X}"
                start = len(probe.decoded(raw))
                sim.modbus.fail_with(code, unit=1)

                # newer than what earlier rounds left: one more report, a higher count
                def says(e: dict[str, Any], k: str = key) -> bool:
                    return f"exception {k}" in e["reason"]

                before = sum(1 for e in probe.decoded(errors) if says(e))
                reports = await probe.wait_for(errors, says, count=before + 1)
                run.reason = reports[-1]["reason"]
                counted = max(
                    (s["health"]["modbus"]["errors"].get(key, 0) for s in probe.decoded(status)),
                    default=0,
                )

                def grew(s: dict[str, Any], k: str = key, c: int = counted) -> bool:
                    return bool(s["health"]["modbus"]["errors"].get(k, 0) > c)

                *_, last = await probe.wait_for(status, grew)
                run.counted = last["health"]["modbus"]["errors"][key] - counted
                sim.modbus.fail_with(None, unit=1)
                mark = len(probe.decoded(raw))

                def answers_again(m: int = mark) -> bool:
                    return any(all_good(b) for b in probe.decoded(raw)[m:])

                await probe.wait_until(answers_again)
                for batch in probe.decoded(raw)[start:mark]:
                    for sig, q in zip(batch["sig"], batch["q"], strict=True):
                        good = q == Quality.GOOD
                        if batch["signals"][sig] == "level":
                            run.other_good += good
                        else:
                            run.failed_bad += not good
                out.runs.append(run)
    batches = probe.decoded(raw)
    out.batches = len(batches)
    out.wrong = sum(wrong_values(b) for b in batches)
    return out
