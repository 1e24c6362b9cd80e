"""The actuator against a real broker, the real OPC UA adapter and the simulator's OPC UA server."""

from __future__ import annotations

from typing import Any

from edgefleet.sim.opcua_server import node_id
from tests.actuator.helpers import OPC_LAMP, lamp_action, plant
from tests.helpers import Probe


async def test_the_alarm_lamp_is_lit_and_reset_through_the_opcua_adapter(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    action = lamp_action(write=dict(OPC_LAMP))
    async with plant(base_config, site, probe, adapter="opcua", actions=[action]) as p:
        assert not p.lamp
        batch = await p.send(0.9)
        [acted] = await p.event("acted")
        await p.wait_lamp(True)
        assert acted["result_id"] == batch.ids[0]
        write = acted["write"]
        assert write["source"] == "opc1" and write["signal"] == "alarm_lamp"
        assert write["value"] is True and write["readback"] is True  # a Boolean node
        await p.send(0.7)  # between the thresholds: hold on
        await p.settled()
        assert p.lamp and len(p.events()) == 1
        await p.send(0.4)
        [reset] = await p.event("acted", text="reset: score < 0.6")
        assert reset["write"]["readback"] is False
        await p.wait_lamp(False)


async def test_writes_the_opcua_adapter_or_server_refuses_are_reported_failed(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    not_writable = lamp_action(
        name="flow", write={"source": "opc1", "signal": "flow", "value": 1}, reset=None
    )
    read_only = lamp_action(  # writable in the adapter's config, read-only on the server
        name="running",
        write={"source": "opc1", "node": node_id("Running"), "value": False},
        reset=None,
    )
    lamp = lamp_action(write={"source": "opc1", "node": node_id("AlarmLamp"), "value": True})
    actions = [not_writable, read_only, lamp]
    async with plant(base_config, site, probe, adapter="opcua", actions=actions) as p:
        await p.send(0.9)
        [flow] = await p.event("failed", "flow")
        assert "opc1 refused: no writable signal" in flow["reason"] and "'flow'" in flow["reason"]
        [run] = await p.event("failed", "running")
        assert "opc1 refused" in run["reason"] and "BadUserAccessDenied" in run["reason"]
        assert run["write"]["node"] == node_id("Running") and run["write"]["readback"] is None
        await p.event("acted")  # the other action is not held up by the refused ones
        await p.wait_lamp(True)
        await p.send(0.9)  # still due: tried again, refused again
        await p.event("failed", "running", count=2)
        assert [e["action"] for e in p.events("acted")] == ["lamp"]
