"""OPC UA server of the simulator (asyncua): a Pump object in namespace `urn:edgefleet:sim`.

Node ids are stable strings, `ns=<idx>;s=Pump.<Name>` (idx is 2 on a fresh server). Measured
values are Doubles whose SourceTimestamp is the simulated sample time. AlarmLamp, PumpStop
(Boolean) and SpeedSetpoint (Double) are writable; `check_writes()` reports what clients wrote
since the last value the simulator put there. `Pump.InjectFault(kind, duration_s)` injects a fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server

log = logging.getLogger(__name__)

NAMESPACE = "urn:edgefleet:sim"
MEASURED = {
    "suction_pressure": "SuctionPressure",
    "discharge_pressure": "DischargePressure",
    "flow": "Flow",
    "speed": "Speed",
    "motor_current": "MotorCurrent",
    "vibration": "Vibration",
    "bearing_temperature": "BearingTemperature",
    "fluid_temperature": "FluidTemperature",
    "tank_level": "TankLevel",
}
WRITABLE = {
    "alarm_lamp": ("AlarmLamp", ua.VariantType.Boolean, False),
    "pump_stop": ("PumpStop", ua.VariantType.Boolean, False),
    "speed_setpoint": ("SpeedSetpoint", ua.VariantType.Double, 2950.0),
}
STATE = {
    "running": ("Running", ua.VariantType.Boolean, True),
    "active_faults": ("ActiveFaults", ua.VariantType.String, ""),
}
InjectCallback = Callable[[str, float], None]


def node_id(name: str, ns: int = 2) -> str:
    """Node id string of a Pump variable, e.g. node_id("Flow") → 'ns=2;s=Pump.Flow'."""
    return f"ns={ns};s=Pump.{name}"


def _dt(ns: int) -> ua.DateTime:
    return cast(ua.DateTime, datetime.fromtimestamp(ns / 1e9, tz=UTC))


class OpcUaSimServer:
    """asyncua server; a fresh `Server` per start so stop/start on the same port works."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 4840, on_inject: InjectCallback | None = None
    ) -> None:
        self.host, self.port = host, port
        self.on_inject = on_inject
        self.ns = 2
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._pushed: dict[str, Any] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/edgefleet/sim"

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgefleet plant simulator")
        self.ns = await server.register_namespace(NAMESPACE)
        ns = self.ns
        pump = await server.nodes.objects.add_object(f"ns={ns};s=Pump", f"{ns}:Pump")
        self._nodes = {}
        for key, name in MEASURED.items():
            self._nodes[key] = await pump.add_variable(
                node_id(name, ns), f"{ns}:{name}", 0.0, ua.VariantType.Double
            )
        for key, (name, vtype, initial) in {**WRITABLE, **STATE}.items():
            node = await pump.add_variable(node_id(name, ns), f"{ns}:{name}", initial, vtype)
            if key in WRITABLE:
                await node.set_writable()
            self._nodes[key] = node
            self._pushed[key] = initial
        await pump.add_method(
            node_id("InjectFault", ns),
            f"{ns}:InjectFault",
            self._inject,
            [ua.VariantType.String, ua.VariantType.Double],
            [ua.VariantType.Boolean],
        )
        await server.start()
        self._server = server
        log.info("opcua server listening on %s", self.endpoint)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()
            log.info("opcua server on port %d stopped", self.port)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def _inject(
        self, _parent: ua.NodeId, kind: ua.Variant, duration: ua.Variant
    ) -> list[ua.Variant]:
        ok = True
        try:
            if self.on_inject is not None:
                self.on_inject(str(kind.Value), float(duration.Value))
        except ValueError as exc:
            log.warning("InjectFault refused: %s", exc)
            ok = False
        return [ua.Variant(ok, ua.VariantType.Boolean)]

    async def publish(self, values: dict[str, float], ts_ns: int) -> None:
        """Write measured values with the simulated time as SourceTimestamp."""
        if self._server is None:
            return
        src, now = _dt(ts_ns), _dt(time.time_ns())
        for key, value in values.items():
            node = self._nodes.get(key)
            if node is None or key not in MEASURED:
                continue
            dv = ua.DataValue(
                ua.Variant(float(value), ua.VariantType.Double),
                SourceTimestamp=src,
                ServerTimestamp=now,
            )
            await self._server.write_attribute_value(node.nodeid, dv)

    async def set_state(self, values: dict[str, Any], ts_ns: int) -> None:
        """Write writable/state nodes (commands, running, faults) when they changed."""
        if self._server is None:
            return
        for key, value in values.items():
            if key not in self._nodes or self._pushed.get(key) == value:
                continue
            vtype = (WRITABLE.get(key) or STATE[key])[1]
            dv = ua.DataValue(
                ua.Variant(value, vtype),
                SourceTimestamp=_dt(ts_ns),
                ServerTimestamp=_dt(time.time_ns()),
            )
            await self._server.write_attribute_value(self._nodes[key].nodeid, dv)
            self._pushed[key] = value

    def check_writes(self) -> dict[str, Any]:
        """Values clients wrote to writable nodes since the simulator last set them."""
        if self._server is None:
            return {}
        changed: dict[str, Any] = {}
        for key in WRITABLE:
            value = self._server.read_attribute_value(self._nodes[key].nodeid).Value
            current = value.Value if value is not None else None
            if current != self._pushed.get(key):
                changed[key] = current
                self._pushed[key] = current
        return changed
