"""`edgefleet opcua browse` against the simulator, as a user runs it."""

from __future__ import annotations

import asyncio
import sys

import yaml

from edgefleet.sim.plant import PlantSimulator


async def edgefleet(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgefleet.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_browse_lists_nodes_types_and_access_and_writes_a_signal_list() -> None:
    async with PlantSimulator(modbus=False) as sim:
        endpoint = sim.opcua_endpoint or ""
        code, out, err = await edgefleet("opcua", "browse", endpoint)
        assert code == 0, err
        lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        assert lines["ns=2;s=Pump"][1:] == ["2:Pump", "Object"]
        assert lines["ns=2;s=Pump.Flow"][1:] == ["2:Flow", "Variable", "Double", "read"]
        assert lines["ns=2;s=Pump.AlarmLamp"][2:] == ["Variable", "Boolean", "read/write"]
        assert lines["ns=2;s=Pump.ActiveFaults"][3] == "String"
        assert "i=2253" not in lines  # the Server object is left out unless --all
        code, out, err = await edgefleet("opcua", "browse", endpoint, "ns=2;s=Pump", "--signals")
        assert code == 0, err
        signals = yaml.safe_load(out)["signals"]
        by_name = {s["name"]: s for s in signals}
        assert by_name["Flow"] == {"name": "Flow", "node": "ns=2;s=Pump.Flow"}
        assert by_name["SpeedSetpoint"]["writable"] is True
        assert "ActiveFaults" not in by_name and "ns=2;s=Pump.ActiveFaults" in out
        code, _, err = await edgefleet("opcua", "browse", "opc.tcp://127.0.0.1:1/none")
        assert code == 3 and "opc.tcp://127.0.0.1:1/none" in err  # cannot reach it
