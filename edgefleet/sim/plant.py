"""PlantSimulator: the pump model run in real time behind Modbus TCP and OPC UA servers.

Every 100 ms of wall time the simulator takes writes from both protocols, reads the model (or
the replay), puts the signals that are due at this tick into the Modbus image and the OPC UA
nodes, then steps the model. Simulated time t maps to wall time start_ns + t; if the loop falls
behind (or after a pause) it steps over the missed ticks without serving them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.sim import registers as regmap
from edgefleet.sim.faults import write_labels
from edgefleet.sim.modbus_server import Framer, ModbusSimServer
from edgefleet.sim.opcua_server import OpcUaSimServer, SimSecurity
from edgefleet.sim.pump import TICK_S, Fault, PumpModel, PumpParams, PumpState, due, tank_level
from edgefleet.sim.replay import Replay
from shared import clock as clocks

log = logging.getLogger(__name__)
TICK_NS = int(TICK_S * 1e9)
TickHook = Callable[["PlantSimulator", dict[str, float]], Any]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class PlantSimulator:
    """The simulated station. Use `async with PlantSimulator(...) as sim:` or start()/stop().

    Port 0 picks a free port; the chosen ports are in `modbus_port` / `opcua_port`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: Iterable[Fault] = (),
        modbus: bool = True,
        opcua: bool = True,
        host: str = "127.0.0.1",
        modbus_port: int = 0,
        modbus_framer: Framer = "tcp",
        opcua_port: int = 0,
        replay: Replay | None = None,
        start_ns: int | None = None,
        opcua_security: SimSecurity | None = None,
        clock: clocks.Clock | None = None,
        params: PumpParams | None = None,  # another pump (the fleet demo's stations differ)
    ) -> None:
        self.clock = clock or clocks.current()  # a test passes a ManualClock to drive the ticks
        self.model = PumpModel(seed, tuple(faults), params)
        self.state: PumpState = self.model.initial_state()
        self.replay = replay
        self.host = host
        now = self.clock.now_ns()
        self.start_ns = start_ns if start_ns is not None else now // TICK_NS * TICK_NS
        self.values: dict[str, float] = {}
        self.tank_threshold_m = 3.8
        self.tick_hooks: list[TickHook] = []
        self.modbus = (
            ModbusSimServer(
                host, modbus_port or free_port(host), self._on_modbus_write, modbus_framer
            )
            if modbus
            else None
        )
        self.opcua = (
            OpcUaSimServer(
                host, opcua_port or free_port(host), self.inject, opcua_security, self.clock
            )
            if opcua
            else None
        )
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._task: asyncio.Task[None] | None = None
        self._by_signal: dict[str, list[regmap.Point]] = {}
        for p in regmap.POINTS:
            if p.value is None and not p.writable:
                self._by_signal.setdefault(p.signal, []).append(p)

    # ---- public API -----------------------------------------------------------------------
    @property
    def modbus_port(self) -> int | None:
        return self.modbus.port if self.modbus else None

    @property
    def opcua_port(self) -> int | None:
        return self.opcua.port if self.opcua else None

    @property
    def opcua_endpoint(self) -> str | None:
        return self.opcua.endpoint if self.opcua else None

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    @property
    def faults(self) -> tuple[Fault, ...]:
        """Scheduled and injected faults (for labels)."""
        return self.state.faults

    def time_ns(self, t: float) -> int:
        """Wall time (ns since epoch) of simulated second `t`."""
        return self.start_ns + round(t * 1e9)

    async def start(self) -> None:
        """Serve the current state at once, then start the servers and the tick loop."""
        self._serve(self.state, all_signals=True)
        if self.modbus:
            await self.modbus.start()
        if self.opcua:
            await self.opcua.start()
            await self._serve_opcua(self.state, self.values, list(self.values))
        self._task = asyncio.create_task(self._tick_loop(), name="sim_tick_loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.opcua:
            await self.opcua.stop()
        if self.modbus:
            await self.modbus.stop()

    async def __aenter__(self) -> PlantSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def pause(self) -> None:
        """Stop updating values; connections stay open (a silent stall)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def inject(self, kind: str, duration_s: float) -> None:
        """Start a fault now, lasting `duration_s` simulated seconds."""
        self.state = self.model.inject(self.state, kind, duration_s)
        log.info("fault %s injected at t=%.1f s for %.1f s", kind, self.state.t, duration_s)

    def clear_faults(self) -> None:
        self.state = self.model.clear_faults(self.state)

    def set_commands(self, **changes: Any) -> None:
        """Change commands directly: stop=, alarm_lamp=, speed_setpoint_rpm=."""
        self.state = replace(self.state, commands=replace(self.state.commands, **changes))

    def write_labels(self, path: str | Path) -> int:
        return write_labels(path, self.state.faults, self.start_ns)

    # ---- tick loop ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await self._resumed.wait()
            wall_tick = (self.clock.now_ns() - self.start_ns) // TICK_NS
            if wall_tick > self.state.tick + 1:  # behind (paused, slow): skip to now
                self.state = self.model.step(self.state, wall_tick - self.state.tick)
            delay = (self.time_ns(self.state.t) - self.clock.now_ns()) / 1e9
            if delay > 0:
                await self.clock.sleep(delay)
            if self.paused:
                continue
            await self._tick()

    async def _tick(self) -> None:
        if self.opcua is not None:
            self._on_opcua_writes(self.opcua.check_writes())
        names = self._serve(self.state)
        if self.opcua is not None:
            await self._serve_opcua(self.state, self.values, names)
        for hook in self.tick_hooks:
            result = hook(self, self.values)
            if asyncio.iscoroutine(result):
                await result
        self.state = self.model.step(self.state)

    def _derived(self, s: PumpState, values: dict[str, float]) -> dict[str, Any]:
        faults = s.active_faults()
        running = s.speed_rpm > 0.0
        flags = [
            running,
            s.commands.stop,
            s.commands.alarm_lamp,
            "cavitation" in faults,
            "bearing_wear" in faults,
            "blocked_valve" in faults,
            bool(faults),
        ]
        cmd = s.commands
        return {
            "status": regmap.encode_bits(flags),
            "status_bits": flags,
            "run_seconds": s.run_ticks // 10,
            "volume_litres": int(s.volume_l),
            "sim_time_ms": s.tick * 100,
            "speed_setpoint": cmd.speed_setpoint_rpm,
            "control": regmap.encode_bits([cmd.stop, cmd.alarm_lamp]),
            "alarm_lamp": cmd.alarm_lamp,
            "pump_stop": cmd.stop,
            "tank_high_threshold": self.tank_threshold_m,
            "tank_high": values.get("tank_level", 0.0) > self.tank_threshold_m,
        }

    def _serve(self, s: PumpState, all_signals: bool = False) -> list[str]:
        """Compute this tick's values and write them into the Modbus image; return due names."""
        values = self.model.read(s)
        values["tank_level"] = tank_level(self.model.seed, s.tick)
        if self.replay is not None:
            values.update(self.replay.values_at(s.t))
        names = list(values) if all_signals else [*due(s.tick), "tank_level"]
        for name in names:
            self.values[name] = values[name]
        if self.modbus is None:
            return names
        derived = self._derived(s, self.values)
        for name in names:
            for p in self._by_signal.get(name, ()):
                self.modbus.images[p.unit].put(p, values[name])
        for name in ("status", "run_seconds", "volume_litres", "sim_time_ms"):
            for p in self._by_signal[name]:
                self.modbus.images[p.unit].put(p, derived[name])
        for p in regmap.POINTS:
            if p.writable or p.signal == "tank_high":
                self.modbus.images[p.unit].put(p, derived[p.signal])
        di = self.modbus.images[1].discrete
        di[: len(regmap.STATUS_BITS)] = derived["status_bits"]
        return names

    async def _serve_opcua(self, s: PumpState, values: dict[str, float], names: list[str]) -> None:
        assert self.opcua is not None
        ts = self.time_ns(s.t)
        await self.opcua.publish({n: values[n] for n in names}, ts)
        await self.opcua.set_state(
            {
                "alarm_lamp": s.commands.alarm_lamp,
                "pump_stop": s.commands.stop,
                "speed_setpoint": float(s.commands.speed_setpoint_rpm),
                "running": s.speed_rpm > 0.0,
                "active_faults": ",".join(s.active_faults()),
            },
            ts,
        )

    # ---- writes from clients --------------------------------------------------------------
    def _on_modbus_write(self, unit: int, table: str, address: int, values: list[int]) -> None:
        for i, raw in enumerate(values):
            addr = address + i
            if unit == 1 and table == "coil" and addr == 0:
                self.set_commands(alarm_lamp=bool(raw))
            elif unit == 1 and table == "coil" and addr == 1:
                self.set_commands(stop=bool(raw))
            elif unit == 1 and table == "holding" and addr == 0:
                self.set_commands(speed_setpoint_rpm=float(raw))
            elif unit == 1 and table == "holding" and addr == 1:
                self.set_commands(stop=bool(raw & 1), alarm_lamp=bool(raw & 2))
            elif unit == 2 and table == "holding" and addr == 0:
                self.tank_threshold_m = raw / 1000.0
        log.info("modbus write unit %d %s %d: %s", unit, table, address, values)

    def _on_opcua_writes(self, changed: dict[str, Any]) -> None:
        if "alarm_lamp" in changed:
            self.set_commands(alarm_lamp=bool(changed["alarm_lamp"]))
        if "pump_stop" in changed:
            self.set_commands(stop=bool(changed["pump_stop"]))
        if "speed_setpoint" in changed:
            self.set_commands(speed_setpoint_rpm=float(changed["speed_setpoint"]))
        if changed:
            log.info("opcua write: %s", changed)
