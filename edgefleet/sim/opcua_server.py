"""OPC UA server of the simulator (asyncua): a Pump object in namespace `urn:edgefleet:sim`.

Node ids are stable strings, `ns=<idx>;s=Pump.<Name>` (idx is 2 on a fresh server). Measured
values are Doubles whose SourceTimestamp is the simulated sample time. AlarmLamp, PumpStop
(Boolean) and SpeedSetpoint (Double) are writable; `check_writes()` reports what clients wrote
since the last value the simulator put there. `Pump.InjectFault(kind, duration_s)` injects a fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.node import Node
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from shared import clock as clocks

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


@dataclass
class SimSecurity:
    """Security of the simulator's endpoint (default: none, as before).

    `policies` are asyncua SecurityPolicyType names, e.g. "Basic256Sha256_SignAndEncrypt";
    "NoSecurity" keeps an open endpoint beside them. `trusted_clients` (certificate files) makes the
    server refuse any other client certificate; `users` makes it refuse anonymous sessions and
    wrong passwords.
    """

    cert_file: Path
    key_file: Path
    policies: list[str] = field(default_factory=lambda: ["Basic256Sha256_SignAndEncrypt"])
    trusted_clients: list[Path] | None = None
    users: dict[str, str] | None = None


class _Users:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, **_: Any
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class _TrustedClients:
    def __init__(self, der: set[bytes]) -> None:
        self.der = der

    async def __call__(self, cert: Any, app: ua.ApplicationDescription) -> None:
        from asyncua.common.utils import ServiceError
        from cryptography.hazmat.primitives.serialization import Encoding

        if cert.public_bytes(Encoding.DER) not in self.der:
            log.warning("client certificate of %s refused: not trusted", app.ApplicationUri)
            raise ServiceError(StatusCodes.BadCertificateUntrusted)


def node_id(name: str, ns: int = 2) -> str:
    """Node id string of a Pump variable, e.g. node_id("Flow") → 'ns=2;s=Pump.Flow'."""
    return f"ns={ns};s=Pump.{name}"


def _dt(ns: int) -> ua.DateTime:
    return cast(ua.DateTime, datetime.fromtimestamp(ns / 1e9, tz=UTC))


class OpcUaSimServer:
    """asyncua server; a fresh `Server` per start so stop/start on the same port works."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        on_inject: InjectCallback | None = None,
        security: SimSecurity | None = None,
        clock: clocks.Clock | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.clock = clock or clocks.current()
        self.security = security
        self.on_inject = on_inject
        self.ns = 2
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._pushed: dict[str, Any] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/edgefleet/sim"

    async def _secure(self, server: Server) -> None:
        sec = self.security
        if sec is None:
            return
        await server.load_certificate(str(sec.cert_file))
        await server.load_private_key(str(sec.key_file))
        server.set_security_policy([getattr(ua.SecurityPolicyType, p) for p in sec.policies])
        if sec.users is not None:
            server.iserver.user_manager = _Users(sec.users)  # type: ignore[assignment]
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if sec.trusted_clients is not None:
            from cryptography.hazmat.primitives.serialization import Encoding

            der = set()
            for path in sec.trusted_clients:
                cert = await uacrypto.load_certificate(path)
                der.add(cert.public_bytes(Encoding.DER))
            server.set_certificate_validator(_TrustedClients(der))

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgefleet plant simulator")
        await self._secure(server)
        self.ns = await server.register_namespace(NAMESPACE)
        ns = self.ns
        pump = await server.nodes.objects.add_object(f"ns={ns};s=Pump", f"{ns}:Pump")
        self._nodes = {}
        waiting = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
        for key, name in MEASURED.items():
            node = await pump.add_variable(
                node_id(name, ns), f"{ns}:{name}", 0.0, ua.VariantType.Double
            )
            # until the plant serves a value (after a restart, up to one tick): no value yet
            no_data = ua.DataValue(ua.Variant(0.0, ua.VariantType.Double), StatusCode=waiting)
            await server.write_attribute_value(node.nodeid, no_data)
            self._nodes[key] = node
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
        src, now = _dt(ts_ns), _dt(self.clock.now_ns())
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
                ServerTimestamp=_dt(self.clock.now_ns()),
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
