"""Helpers for OPC UA adapter tests: a config with shrunk timings, a record of what the simulator
served."""

from __future__ import annotations

from typing import Any

from edgefleet.sim.plant import PlantSimulator
from services.opcua.config import OpcUaConfig
from shared.config import validate

FAST_WATCHDOG = {
    "request_timeout_s": 2.0,
    "keepalive_s": 0.3,
    "dead_after_keepalives": 3,
    "stall_after_s": 1.5,
    "check_s": 0.1,
    "retry_nodes_s": 0.5,
    "reconnect_initial_s": 0.1,
    "reconnect_max_s": 0.5,
}


def make_config(
    base: dict[str, Any], endpoint: str, signals: list[dict[str, Any]], **extra: Any
) -> OpcUaConfig:
    data = {
        **base,
        "instance": "opcua-sim",
        "source": "opc1",
        "endpoint": endpoint,
        "publishing_ms": 50,
        "sampling_ms": 50,
        "signals": signals,
        "watchdog": FAST_WATCHDOG,
        **extra,
    }
    return validate(OpcUaConfig, data, "test")


class Served:
    """Every (source time ns → values) the simulator put on its OPC UA nodes."""

    def __init__(self, sim: PlantSimulator) -> None:
        self.by_t: dict[int, dict[str, float]] = {}
        sim.tick_hooks.append(self._hook)

    def _hook(self, sim: PlantSimulator, values: dict[str, float]) -> None:
        self.by_t[sim.time_ns(sim.state.t)] = dict(values)

    def note_now(self, sim: PlantSimulator) -> None:
        self.by_t[sim.time_ns(sim.state.t)] = dict(sim.values)
