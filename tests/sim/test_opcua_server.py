"""A real asyncua client against the simulator's OPC UA server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from asyncua.client.client import Client

from edgefleet.sim.opcua_server import MEASURED, node_id
from edgefleet.sim.plant import PlantSimulator
from shared.clock import ManualClock
from tests.helpers import manual, until


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[PlantSimulator]:
    """The simulator on a manual clock: it ticks only when a test advances it."""
    async with PlantSimulator(seed=9, modbus=False, clock=ManualClock()) as s:
        yield s


@pytest_asyncio.fixture
async def live_sim() -> AsyncIterator[PlantSimulator]:
    """The simulator on the system clock, for what a real-time subscription sees."""
    async with PlantSimulator(seed=9, modbus=False) as s:
        yield s


@pytest.mark.asyncio
async def test_read_nodes_with_simulated_source_timestamps(sim: PlantSimulator) -> None:
    assert sim.opcua_endpoint is not None
    async with Client(sim.opcua_endpoint, timeout=5) as c:
        assert await c.get_namespace_index("urn:edgefleet:sim") == 2
        await manual(sim.clock).advance(0.3)  # three ticks; nothing changes until the next advance
        for key, name in MEASURED.items():
            dv = await c.get_node(node_id(name)).read_data_value()
            assert dv.Value is not None and dv.SourceTimestamp is not None
            assert dv.Value.Value == pytest.approx(sim.values[key]), name
            ts_ns = int(dv.SourceTimestamp.timestamp() * 1e9)
            assert (ts_ns - sim.start_ns) % 100_000_000 < 1_000  # on the 100 ms grid
            # served since the start (a slow start delays the 2 Hz and 1 Hz signals' next update)
            assert sim.start_ns <= ts_ns <= sim.clock.now_ns()
        assert await c.get_node(node_id("Running")).read_value() is True


@pytest.mark.asyncio
async def test_write_alarm_lamp_and_pump_stop(sim: PlantSimulator) -> None:
    assert sim.opcua_endpoint is not None
    async with Client(sim.opcua_endpoint, timeout=5) as c:
        await c.get_node(node_id("AlarmLamp")).write_value(True)
        await c.get_node(node_id("PumpStop")).write_value(True)
        await manual(sim.clock).advance(0.1)  # the simulator takes writes at its next tick
        assert sim.state.commands.alarm_lamp and sim.state.commands.stop
        await manual(sim.clock).advance(3.5)  # the pump runs down in simulated time
        assert await c.get_node(node_id("Flow")).read_value() < 1.0
        assert await c.get_node(node_id("Running")).read_value() is False
        assert await c.get_node(node_id("AlarmLamp")).read_value() is True


@pytest.mark.asyncio
async def test_inject_fault_method(sim: PlantSimulator) -> None:
    assert sim.opcua_endpoint is not None
    async with Client(sim.opcua_endpoint, timeout=5) as c:
        pump = c.get_node("ns=2;s=Pump")
        assert await pump.call_method("2:InjectFault", "cavitation", 30.0) is True
        assert await pump.call_method("2:InjectFault", "meltdown", 30.0) is False
        await manual(sim.clock).advance(0.3)
        assert await c.get_node(node_id("ActiveFaults")).read_value() == "cavitation"
        assert await c.get_node(node_id("SuctionPressure")).read_value() < 0.6


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.count += 1


@pytest.mark.asyncio
async def test_pause_is_a_silent_stall_and_server_restarts_on_same_port(
    live_sim: PlantSimulator,
) -> None:
    sim = live_sim
    assert sim.opcua is not None and sim.opcua_endpoint is not None
    async with Client(sim.opcua_endpoint, timeout=5) as c:
        changes = Changes()
        sub = await c.create_subscription(50, changes)
        await sub.subscribe_data_change(c.get_node(node_id("Flow")))
        await until(lambda: changes.count >= 3)
        sim.pause()
        await asyncio.sleep(0.2)  # the scenario: a notification already on its way may land
        before = changes.count
        await asyncio.sleep(0.6)  # the scenario: a stall of 12 publishing intervals
        assert changes.count == before  # no data, connection still open
        assert await c.get_node(node_id("Speed")).read_value() > 0
        sim.resume()
        await until(lambda: changes.count > before)
    port = sim.opcua_port
    await sim.opcua.stop()
    await sim.opcua.start()
    tick = sim.state.tick
    assert sim.opcua_port == port
    async with Client(sim.opcua_endpoint, timeout=5) as c:
        await until(lambda: sim.state.tick > tick)  # the new server has values from a tick on
        assert await c.get_node(node_id("Flow")).read_value() > 50
