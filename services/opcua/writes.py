"""Write requests on `ef/{site}/cmd/{source}`: write a node through the adapter's session, read
it back, answer on the request's response topic with its correlation data.

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
from shared import codec
from shared.errors import PayloadError
from shared.messages import WriteRequest, WriteResponse
from shared.mqtt import Received
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
            raise PayloadError(f"value {value!r} is not an integer, the node is {vtype.name}")
        return int(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    raise PayloadError(f"cannot write a number to a node of type {vtype.name}")


class Writer:
    def __init__(self, rt: Runtime, config: OpcUaConfig, session: Session) -> None:
        self.rt, self.config, self.session = rt, config, session
        self.by_name = {s.name: i for i, s in enumerate(config.signals) if s.writable}
        self.by_node = {s.node: i for i, s in enumerate(config.signals) if s.writable}
        self.count = 0

    def _target(self, target: dict[str, Any]) -> int:
        if "signal" in target:
            found = self.by_name.get(str(target["signal"]))
        elif "node" in target:
            found = self.by_node.get(str(target["node"]))
        else:
            raise PayloadError("target needs {signal} or {node}")
        if found is None:
            raise PayloadError(f"no writable signal {target} in {self.config.source}")
        return found

    async def write(self, index: int, value: float | int | bool) -> Any:
        """Write, then read back; returns the value read back."""
        session = self.session
        if session.client is None or not session.health.connected:
            raise PayloadError(f"no session to {self.config.endpoint} right now")
        node_id = session.node_ids.get(index)
        if node_id is None:
            raise PayloadError(f"node of {session.signals[index]} is not resolved on the server")
        node = session.client.get_node(node_id)
        timeout = self.config.watchdog.request_timeout_s
        vtype = await asyncio.wait_for(node.read_data_type_as_variant_type(), timeout)
        variant = ua.Variant(convert(value, vtype), vtype)
        await asyncio.wait_for(node.write_value(ua.DataValue(variant)), timeout)
        return await asyncio.wait_for(node.read_value(), timeout)

    async def handle(self, message: Received) -> None:
        request = WriteRequest.from_wire(codec.decode(message.payload, message.content_type))
        try:
            readback = await self.write(self._target(request.target), request.value)
            if not isinstance(readback, (bool, int, float)):
                readback = None
            response = WriteResponse(request_id=request.request_id, ok=True, readback=readback)
            self.count += 1
        except (PayloadError, UaError, OSError, TimeoutError, ConnectionError) as exc:
            log.warning("write %s to %s refused: %s", request.request_id, request.target, exc)
            response = WriteResponse(request_id=request.request_id, ok=False, error=str(exc))
        if message.response_topic:
            await self.rt.publish(
                message.response_topic, response, qos=1, correlation_data=message.correlation_data
            )
