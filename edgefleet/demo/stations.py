"""The fleet demo's pump stations: each a plant simulator (its own seed and a slightly different
pump) and a site of its own (`edgefleet up`'s supervisor: a local mosquitto bridged to the
cloud broker, the Modbus adapter, the actuator, the forwarder and the agent), labelled by plant
and role. Flows come from the fleet, never from site.yaml."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import free_port
from edgefleet.demo.single import modbus_source
from edgefleet.sim import PlantSimulator
from edgefleet.sim.pump import PumpParams
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from shared.signing import PublicKey

BASE = PumpParams()


@dataclass(frozen=True)
class Station:
    """One pump station of the story."""

    site: str
    plant: str
    seed: int
    params: PumpParams = field(default_factory=PumpParams)
    late: bool = False  # offline when the story starts, comes online later

    @property
    def labels(self) -> dict[str, str]:
        return {"plant": self.plant, "role": "pump"}


def pump(bearing_tau_s: float, fluid_tau_s: float, cavitation_drop_bar: float) -> PumpParams:
    """A pump a little different from the next: how fast its bearing and its fluid warm up, how
    hard cavitation hits it. Their steady state is the same, so a model trained at one station
    calls the others' normal operation normal (a different head or tank pressure would not be:
    the example model has learnt one station's operating point)."""
    return replace(
        BASE,
        bearing_tau_s=bearing_tau_s,
        fluid_tau_s=fluid_tau_s,
        cavitation_suction_drop_bar=cavitation_drop_bar,
    )


# Sorted by site id: the first is the canary of a staged rollout (the fleet's site order).
FLEET = (
    Station("pump-a1", "north", 11, pump(60, 300, 0.85)),
    Station("pump-a2", "north", 12, pump(75, 280, 0.80)),
    Station("pump-b1", "south", 13, pump(50, 320, 0.90)),
    Station("pump-b2", "south", 14, pump(65, 310, 0.75), late=True),
)
# The fast form (2-core CI): the canary, one other, the late one.
FAST_FLEET = (FLEET[0], FLEET[2], FLEET[3])


def site_file(
    root: Path, station: Station, modbus_port: int, cloud_port: int, key: PublicKey, gate_s: float
) -> Path:
    """site.yaml of one station: its own broker (bridged to the cloud), its PLC, no flows."""
    data: dict[str, Any] = {
        "site": station.site,
        "labels": station.labels,
        "broker": {"host": "127.0.0.1", "port": free_port(), "start_local": True},
        "timings": {"status_interval_s": 1},
        "sources": [modbus_source(modbus_port)],
        "flows": [],  # the fleet deploys them
        "actuator": {"enabled": True},  # the alarm lamp may be written
        "forwarder": {"queue_dir": "forwarder"},
        "supervisor": {"restart_initial_s": 0.5, "restart_max_s": 5.0, "stop_timeout_s": 10},
        "fleet": {
            "broker": {"host": "127.0.0.1", "port": cloud_port},
            "trusted_keys": [key.text()],
            "health_timeout_s": gate_s,
            "inspect_timeout_s": 60,
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class RunningStation:
    """A station's simulator and site, started and stopped by the story (`start`, `stop`);
    `close` stops whatever still runs."""

    def __init__(self, station: Station, root: Path) -> None:
        self.station, self.root = station, root / station.site
        self.sim = PlantSimulator(seed=station.seed, opcua=False, params=station.params)
        self.site: SiteSupervisor | None = None
        self.path: Path | None = None

    @property
    def name(self) -> str:
        return self.station.site

    @property
    def port(self) -> int:
        """The station's own broker."""
        assert self.path is not None
        return int(yaml.safe_load(self.path.read_text())["broker"]["port"])

    async def start_sim(self) -> None:
        await self.sim.start()

    def configure(self, cloud_port: int, key: PublicKey, gate_s: float) -> None:
        assert self.sim.modbus_port is not None
        self.path = site_file(
            self.root, self.station, self.sim.modbus_port, cloud_port, key, gate_s
        )

    async def start(self, on_status: Any) -> None:
        """The site up (its broker, services and agent), every service online."""
        assert self.path is not None
        self.site = SiteSupervisor(load_site(self.path), self.root / "work", on_status=on_status)
        try:
            await self.site.start()
            await self.site.wait_online(timeout=120)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        site, self.site = self.site, None
        if site is not None:
            await site.stop()

    async def close(self) -> None:
        try:
            await self.stop()
        finally:
            with contextlib.suppress(Exception):
                await self.sim.stop()


def quiet(change: StatusChange) -> bool:
    """A status change not worth a line: the routine ones of starting and stopping."""
    routine = change.state == "terminated" and change.detail.endswith("exit code 0")
    return change.state in ("online", "starting", "stopped", "reaped") or routine
