"""A real pymodbus client against the simulator's Modbus TCP server."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from edgefleet.sim import registers as regmap
from edgefleet.sim.plant import PlantSimulator
from shared.clock import ManualClock
from tests.helpers import manual

FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def decode(regs: list[int], dtype: str, byte_order: str, word_order: str) -> float | int:
    """Independent of the simulator's encoder: undo the orders, then struct-unpack big-endian."""
    words = list(regs)
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    value: float | int = struct.unpack(">" + FORMATS[dtype], raw)[0]
    return value


def decode_string(regs: list[int], byte_order: str) -> str:
    raw = b"".join(w.to_bytes(2, "big" if byte_order == "big" else "little") for w in regs)
    return raw.rstrip(b"\0").decode("ascii")


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[PlantSimulator]:
    # a manual clock: the simulator ticks only when a test advances it
    async with PlantSimulator(seed=5, opcua=False, clock=ManualClock()) as s:
        yield s


@pytest_asyncio.fixture
async def client(sim: PlantSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port or 0, timeout=0.5, retries=0)
    assert await c.connect()
    yield c
    c.close()


async def read(c: AsyncModbusTcpClient, p: regmap.Point) -> list[int]:
    if p.table == "holding":
        r = await c.read_holding_registers(p.address, count=p.width, device_id=p.unit)
    else:
        r = await c.read_input_registers(p.address, count=p.width, device_id=p.unit)
    assert not r.isError(), r
    return list(r.registers)


@pytest.mark.asyncio
@pytest.mark.parametrize("table", ["holding", "input"])
async def test_static_block_every_type_and_order(client: AsyncModbusTcpClient, table: str) -> None:
    checked = 0
    for p in regmap.static_block(1, table):
        regs = await read(client, p)
        if p.dtype in FORMATS:
            raw = decode(regs, p.dtype, p.byte_order, p.word_order)
            if p.dtype.endswith("int64"):
                assert raw == p.value, p.signal  # exact: no float on the way
            value = raw * p.scale + p.offset
            assert value == pytest.approx(p.value, abs=p.scale / 2), p.signal
        elif p.dtype == "bits":
            assert regs == [regmap.STATIC_BITS]
        else:
            assert decode_string(regs, p.byte_order) == regmap.STATIC_TEXT, p.signal
        checked += 1
    assert checked == 33


@pytest.mark.asyncio
async def test_live_values_decode_to_what_the_physics_gave(
    sim: PlantSimulator, client: AsyncModbusTcpClient
) -> None:
    await manual(sim.clock).advance(0.3)  # three ticks; nothing changes until the next advance
    for p in regmap.points(1, "input"):
        if p.signal not in sim.values:
            continue
        regs = await read(client, p)
        value = decode(regs, p.dtype, p.byte_order, p.word_order) * p.scale + p.offset
        tol = (
            p.scale / 2 + 1e-9 if p.dtype not in ("float32",) else 1e-4 * abs(sim.values[p.signal])
        )
        assert value == pytest.approx(sim.values[p.signal], abs=tol), (p.address, p.signal)
    serial = next(p for p in regmap.points(1, "input") if p.signal == "serial")
    assert decode_string(await read(client, serial), "big") == regmap.SERIAL
    status = (await client.read_input_registers(8, count=1, device_id=1)).registers[0]
    assert status & 1  # running
    r = await client.read_discrete_inputs(0, count=7, device_id=1)
    assert r.bits[0] is True and r.bits[6] is False
    level = await client.read_input_registers(0, count=1, device_id=2)
    assert level.registers[0] / 1000 == pytest.approx(sim.values["tank_level"], abs=0.001)


@pytest.mark.asyncio
async def test_stop_coil_stops_the_pump_and_alarm_lamp_reads_back(
    sim: PlantSimulator, client: AsyncModbusTcpClient
) -> None:
    assert not (await client.write_coil(0, True, device_id=1)).isError()
    assert (await client.read_coils(0, count=2, device_id=1)).bits[:2] == [True, False]
    assert sim.state.commands.alarm_lamp is True
    await client.write_coil(1, True, device_id=1)
    await manual(sim.clock).advance(4.0)  # the pump runs down in simulated time
    flow = (await client.read_input_registers(2, count=2, device_id=1)).registers
    assert flow[0] < 5 and flow[1] < 10  # flow ×10, current ×10
    di = await client.read_discrete_inputs(0, count=2, device_id=1)
    assert di.bits[:2] == [False, True]  # not running, stop commanded


@pytest.mark.asyncio
async def test_setpoint_register_is_writable_but_measurements_are_not(
    sim: PlantSimulator, client: AsyncModbusTcpClient
) -> None:
    assert not (await client.write_register(0, 2000, device_id=1)).isError()
    assert (await client.read_holding_registers(0, count=1, device_id=1)).registers == [2000]
    assert sim.state.commands.speed_setpoint_rpm == 2000
    refused = await client.write_register(100, 1, device_id=1)
    assert refused.isError() and refused.exception_code == 2


@pytest.mark.asyncio
async def test_exception_codes(sim: PlantSimulator, client: AsyncModbusTcpClient) -> None:
    unmapped = await client.read_holding_registers(2, count=1, device_id=1)
    assert unmapped.isError() and unmapped.exception_code == 2  # illegal data address
    past_end = await client.read_input_registers(60, count=10, device_id=1)
    assert past_end.isError() and past_end.exception_code == 2
    no_unit = await client.read_input_registers(0, count=1, device_id=9)
    assert no_unit.isError() and no_unit.exception_code == 0x0B
    assert sim.modbus is not None
    sim.modbus.fail_with(6)
    busy = await client.read_input_registers(0, count=1, device_id=1)
    assert busy.isError() and busy.exception_code == 6
    sim.modbus.fail_with(None)
    assert not (await client.read_input_registers(0, count=1, device_id=1)).isError()
    for code in range(1, 12):  # every code 01-0B from one unit; the other answers as before
        sim.modbus.fail_with(code, unit=2)
        failed = await client.read_input_registers(0, count=1, device_id=2)
        assert failed.isError() and failed.exception_code == code, code
        assert not (await client.read_input_registers(0, count=1, device_id=1)).isError()
    sim.modbus.fail_with(None, unit=2)
    assert not (await client.read_input_registers(0, count=1, device_id=2)).isError()


@pytest.mark.asyncio
async def test_mute_times_out_then_recovers_and_restart_on_same_port(
    sim: PlantSimulator, client: AsyncModbusTcpClient
) -> None:
    assert sim.modbus is not None
    sim.modbus.mute()
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0, count=1, device_id=1)
    sim.modbus.unmute()
    await sim.modbus.stop()
    await sim.modbus.start()
    c2 = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus.port, timeout=0.5, retries=0)
    assert await c2.connect()
    assert not (await c2.read_input_registers(0, count=1, device_id=1)).isError()
    c2.close()
