"""Write requests on `ef/{site}/cmd/{source}` (shared/requests.py serves them): write a node
through the adapter's session, read it back, answer with the value read back.

Target: `{signal: NAME}` or `{node: "ns=2;s=..."}`, naming a signal marked `writable`. The value
is converted to the node's own data type (read from the server) before it is written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncua import ua
from asyncua.ua.uaerrors import UaError

from services.opcua.config import OpcUaConfig
from services.opcua.session import Session
from shared.errors import Refused
from shared.messages import NodeTarget, SignalTarget, WriteRequest, WriteTarget
from shared.requests import Readback, RequestServer, serve_writes
from shared.runtime import Runtime

log = logging.getLogger(__name__)

_INTS = {
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}


def convert(value: float | int | bool, vtype: ua.VariantType) -> Any:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in _INTS:
        if float(value) != int(value):
            raise Refused(f"value {value!r} is not an integer, the node is {vtype.name}")
        return int(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    raise Refused(f"cannot write a number to a node of type {vtype.name}")


class Writer:
    def __init__(self, rt: Runtime, config: OpcUaConfig, session: Session) -> None:
        self.rt, self.config, self.session = rt, config, session
        self.by_name = {s.name: i for i, s in enumerate(config.signals) if s.writable}
        self.by_node = {s.node: i for i, s in enumerate(config.signals) if s.writable}
        self.server: RequestServer[WriteRequest] | None = None

    async def start(self) -> None:
        self.server = await serve_writes(
            self.rt, self.rt.topics.cmd(self.config.source), self.handle
        )

    @property
    def count(self) -> int:
        return self.server.stats.served if self.server else 0

    def _target(self, target: WriteTarget) -> int:
        if isinstance(target, SignalTarget):
            found = self.by_name.get(target.signal)
        elif isinstance(target, NodeTarget):
            found = self.by_node.get(target.node)
        else:
            raise Refused("target needs {signal} or {node}")
        if found is None:
            raise Refused(f"no writable signal {target.model_dump()} in {self.config.source}")
        return found

    async def write(self, index: int, value: float | int | bool) -> Any:
        """Write, then read back; returns the value read back."""
        session = self.session
        if session.client is None or not session.health.connected:
            raise Refused(f"no session to {self.config.endpoint} right now")
        node_id = session.node_ids.get(index)
        if node_id is None:
            raise Refused(f"node of {session.signals[index]} is not resolved on the server")
        node = session.client.get_node(node_id)
        timeout = self.config.watchdog.request_timeout_s
        vtype = await asyncio.wait_for(node.read_data_type_as_variant_type(), timeout)
        variant = ua.Variant(convert(value, vtype), vtype)
        await asyncio.wait_for(node.write_value(ua.DataValue(variant)), timeout)
        return await asyncio.wait_for(node.read_value(), timeout)

    async def handle(self, request: WriteRequest) -> Readback:
        try:
            readback = await self.write(self._target(request.target), request.value)
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise Refused(str(exc) or type(exc).__name__) from None
        return readback if isinstance(readback, (bool, int, float)) else None
