"""A plant for actuator tests: the simulator, the real Modbus or OPC UA adapter, the actuator, a
probe that plays the inference instance (its retained status and its results)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.sim.opcua_server import node_id
from edgefleet.sim.plant import PlantSimulator
from services.actuator.config import ActuatorConfig
from services.actuator.service import main as actuator_main
from services.modbus.config import ModbusConfig
from services.modbus.service import main as modbus_main
from services.opcua.config import OpcUaConfig
from services.opcua.service import main as opcua_main
from shared.config import validate
from shared.messages import ActuatorCommand, ModelRef, ResultBatch, Status, now_ns
from shared.topics import Topics
from tests.helpers import Probe, running, until

FLOW = "pump"
SHA = "ab" * 32
OTHER_SHA = "cd" * 32
PERIOD_NS = 100_000_000
LAMP = {"source": "plc1", "table": "coil", "address": 0, "value": True}
OPC_LAMP = {"source": "opc1", "signal": "alarm_lamp", "value": True}


def lamp_action(**over: Any) -> dict[str, Any]:
    action: dict[str, Any] = {
        "name": "lamp",
        "when": "score > 0.8",
        "for_samples": 1,
        "write": dict(LAMP),
        "reset": {"when": "score < 0.6", "value": False},
        "cooldown_s": 0,
        "max_writes_per_minute": 100,
    }
    action.update(over)
    return action


def actuator_config(base: dict[str, Any], **over: Any) -> ActuatorConfig:
    data: dict[str, Any] = {
        **base,
        "instance": "actuator-pump",
        "flow": FLOW,
        "enabled": True,
        "watchdog_s": 60,
        "repeat_event_s": 0,
        "write_timeout_s": 2,
        "actions": [lamp_action()],
    }
    data.update(over)
    data = {k: v for k, v in data.items() if v is not None}  # None: leave the key out
    return validate(ActuatorConfig, data, "test")


def modbus_config(base: dict[str, Any], port: int) -> ModbusConfig:
    points = [
        {"name": "alarm_lamp", "address": 0, "type": "bool", "writable": True},
        {"name": "pump_stop", "address": 1, "type": "bool", "writable": True},
    ]
    data = {
        **base,
        "instance": "modbus-plc1",
        "source": "plc1",
        "device": {"port": port, "timeout_s": 0.5},
        "poll_ms": 1000,
        "blocks": [
            {"table": "coil", "points": points},
            {"table": "holding", "points": [{"name": "speed_setpoint", "address": 0}]},
        ],
    }
    return validate(ModbusConfig, data, "test")


def opcua_config(base: dict[str, Any], endpoint: str) -> OpcUaConfig:
    """The simulator's pump over OPC UA: the alarm lamp writable; `running` marked writable here
    though the server's node is read-only (the server refuses the write); `flow` read-only."""
    signals = [
        {"name": "flow", "node": node_id("Flow")},
        {"name": "alarm_lamp", "node": node_id("AlarmLamp"), "writable": True},
        {"name": "running", "node": node_id("Running"), "writable": True},
    ]
    data = {
        **base,
        "instance": "opcua-opc1",
        "source": "opc1",
        "endpoint": endpoint,
        "publishing_ms": 100,
        "sampling_ms": 100,
        "signals": signals,
        "watchdog": {"request_timeout_s": 1.0, "stall_after_s": None},
    }
    return validate(OpcUaConfig, data, "test")


class Results:
    """Results of the flow with fresh, strictly increasing sample times."""

    def __init__(self) -> None:
        self.t = now_ns() - 10 * PERIOD_NS

    def batch(
        self, sha: str = SHA, t: list[int] | None = None, **outputs: list[float]
    ) -> ResultBatch:
        n = len(next(iter(outputs.values())))
        if t is None:
            self.t = max(self.t + PERIOD_NS, now_ns() - n * PERIOD_NS)
            t = [self.t + k * PERIOD_NS // n for k in range(n)]
            self.t = t[-1]
        cols = {k: np.asarray(v, np.float64) for k, v in outputs.items()}
        return ResultBatch(
            FLOW, ModelRef("ae", "3", sha), np.asarray(t, np.int64), cols, np.zeros(n, np.float32)
        )


@dataclass
class Plant:
    sim: PlantSimulator
    probe: Probe
    topics: Topics
    results: Results
    barriers: int = 0

    async def status(self, state: str = "online", sha: str = SHA) -> None:
        body = Status(
            instance=f"inference-{FLOW}",
            service="inference",
            state=state,  # type: ignore[arg-type]
            health={"inference": {"model": {"name": "ae", "version": "3", "sha256": sha}}},
        )
        await self.probe.publish(
            self.topics.status(f"inference-{FLOW}"), body.to_wire(), qos=1, retain=True
        )

    async def send(self, *scores: float, sha: str = SHA, **outputs: list[float]) -> ResultBatch:
        batch = self.results.batch(sha, None, **({"score": list(scores)} if scores else outputs))
        await self.publish(batch)
        return batch

    async def publish(self, batch: ResultBatch) -> None:
        await self.probe.publish(self.topics.results(FLOW), batch.to_wire(), qos=1)

    async def settled(self) -> None:
        """Until the actuator has decided every result sent so far: a command queued behind
        them (for no action, so refused without effect) has been answered."""
        self.barriers += 1
        rid = f"settled-{self.barriers}"
        reply = self.topics.reply("test")
        body = ActuatorCommand(request_id=rid, op="release", action="(none)")
        await self.probe.publish(
            self.topics.cmd("actuator-pump"),
            body.to_wire(),
            qos=1,
            response_topic=reply,
            correlation_data=rid.encode(),
        )
        [answer] = await self.probe.wait_for(reply, lambda r: r["request_id"] == rid)
        assert not answer["ok"] and "no action '(none)'" in answer["error"]

    async def event(
        self,
        decision: str,
        action: str = "lamp",
        text: str = "",
        count: int = 1,
        timeout: float = 5,
    ) -> list[dict[str, Any]]:
        def match(e: dict[str, Any]) -> bool:
            return e["decision"] == decision and e["action"] == action and text in e["reason"]

        return await self.probe.wait_for(
            self.topics.events(FLOW), match, count=count, timeout=timeout
        )

    def events(self, decision: str | None = None) -> list[dict[str, Any]]:
        found = self.probe.decoded(self.topics.events(FLOW))
        return [e for e in found if decision is None or e["decision"] == decision]

    @property
    def lamp(self) -> bool:
        return bool(self.sim.state.commands.alarm_lamp)

    async def wait_lamp(self, on: bool, timeout: float = 2) -> None:
        """Until the simulator's lamp is `on` (it takes OPC UA writes at its next tick)."""
        await until(lambda: self.lamp == on, timeout)


@contextlib.asynccontextmanager
async def _adapter(
    base: dict[str, Any], probe: Probe, topics: Topics, adapter: str
) -> AsyncIterator[PlantSimulator]:
    """The simulator and the adapter that owns it, online (OPC UA: its session connected)."""
    if adapter == "modbus":
        async with (
            PlantSimulator(opcua=False) as sim,
            running(modbus_main(modbus_config(base, sim.modbus_port or 0))),
        ):
            await probe.wait_for(topics.status("modbus-plc1"), lambda s: s["state"] == "online")
            yield sim
        return
    async with (
        PlantSimulator(modbus=False) as sim,
        running(opcua_main(opcua_config(base, sim.opcua_endpoint or ""))),
    ):
        await probe.wait_for(
            topics.status("opcua-opc1"),
            lambda s: s["state"] == "online" and s["health"]["opcua"]["connected"],
        )
        yield sim


@contextlib.asynccontextmanager
async def plant(
    base: dict[str, Any],
    site: str,
    probe: Probe,
    actuator: bool = True,
    adapter: str = "modbus",
    **over: Any,
) -> AsyncIterator[Plant]:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with _adapter(base, probe, topics, adapter) as sim:
        p = Plant(sim, probe, topics, Results())
        await p.status()
        if not actuator:
            yield p
            return
        async with running(actuator_main(actuator_config(base, **over))):
            await probe.wait_for(topics.status("actuator-pump"), lambda s: s["state"] == "online")
            yield p
