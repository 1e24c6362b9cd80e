"""The adapter's RTU framing over TCP (serial gateways) against the simulator serving RTU frames."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from edgefleet.sim import registers as regmap
from edgefleet.sim.cli import build_parser
from edgefleet.sim.modbus_server import Framer, ModbusSimServer
from edgefleet.sim.plant import PlantSimulator
from services.modbus.config import ModbusConfig
from services.modbus.service import ModbusService
from shared.config import validate
from shared.messages import Quality
from shared.runtime import Runtime
from tests.modbus.test_modbus_adapter import static_points


def config(port: int, framer: str, blocks: list[dict[str, Any]]) -> ModbusConfig:
    data = {
        "site": "s1",
        "instance": "modbus-rtu",
        "source": "plc1",
        "device": {"port": port, "framer": framer, "timeout_s": 0.3, "dead_after_s": 0.5},
        "blocks": blocks,
    }
    return validate(ModbusConfig, data, "test")


def name_of(p: regmap.Point) -> str:
    return p.table[0] + "_" + p.signal.replace("static.", "s_").replace(".", "_")


def static(table: str) -> list[dict[str, Any]]:
    """The static block of unit 1 in `table`, names prefixed by the table (unique per source)."""
    return [{**d, "name": f"{table[0]}_{d['name']}"} for d in static_points(table)]


STATIC_BITS = [
    {"name": f"bit{i}", "address": regmap.STATIC_COIL_BASE + i, "type": "bool"} for i in range(16)
]
TANK = [
    {"name": "tank_level", "address": 0, "scale": 0.001},
    {"name": "tank_level_f32", "address": 1, "type": "float32", "word_order": "little"},
]


async def test_rtu_framed_adapter_reads_every_type_of_two_units_and_writes() -> None:
    async with PlantSimulator(opcua=False, modbus_framer="rtu") as sim:
        assert sim.modbus is not None and sim.modbus.framer == "rtu"
        cfg = config(
            sim.modbus_port or 0,
            "rtu",
            [
                {"table": "input", "points": static("input")},
                {"table": "holding", "points": static("holding")},
                {"table": "holding", "points": [{"name": "sp", "address": 0, "writable": True}]},
                {"table": "discrete", "points": STATIC_BITS},
                {"unit": 2, "table": "input", "points": TANK},
                {"unit": 2, "table": "holding", "points": [{"name": "unmapped", "address": 5}]},
            ],
        )
        poller = ModbusService(cast(Runtime, None), cfg)
        try:
            sim.pause()  # the live unit-2 values stay put between the snapshot and the poll
            tank_raw = int(sim.modbus.images[2].input[0])
            batch = await poller.poll_once()
            sim.resume()
            speed = await poller.writer.write(1, "holding", poller.writer.points["sp"][2], 2100)
        finally:
            await poller.device.close()
    got = dict(zip(batch.signals, batch.value.tolist(), strict=True))
    q = dict(zip(batch.signals, batch.q.tolist(), strict=True))
    got.pop("sp")  # read before the write: whatever the image held
    assert q.pop("unmapped") == Quality.BAD and np.isnan(got.pop("unmapped"))
    assert poller.exceptions == {"0x02": 1}  # the exception answer is decoded from an RTU frame
    assert all(v == Quality.GOOD for v in q.values())
    for table in ("input", "holding"):
        for p in regmap.static_block(1, table):
            if p.dtype == "string":
                assert poller.strings[name_of(p)] == regmap.STATIC_TEXT
            elif p.dtype == "bits":
                assert got[name_of(p)] == regmap.STATIC_BITS
            else:
                want = float(cast(float, p.value))
                assert got[name_of(p)] == pytest.approx(want, rel=1e-7, abs=1e-6), p.signal
    assert [int(got[f"bit{i}"]) for i in range(16)] == [
        (regmap.STATIC_BITS >> i) & 1 for i in range(16)
    ]
    assert got["tank_level"] == pytest.approx(tank_raw * 0.001)
    assert got["tank_level_f32"] == pytest.approx(got["tank_level"], abs=1e-3)
    assert speed == 2100 and sim.state.commands.speed_setpoint_rpm == 2100


async def test_rtu_framed_writes_to_a_second_unit_and_a_coil() -> None:
    async with PlantSimulator(opcua=False, modbus_framer="rtu") as sim:
        cfg = config(
            sim.modbus_port or 0,
            "rtu",
            [
                {"unit": 2, "table": "holding", "points": [{"name": "thr", "address": 0}]},
                {"table": "coil", "points": [{"name": "lamp", "address": 0, "type": "bool"}]},
            ],
        )
        poller = ModbusService(cast(Runtime, None), cfg)
        try:
            thr = await poller.writer.write(2, "holding", poller.writer.points["thr"][2], 3500)
            lamp = await poller.writer.write(1, "coil", poller.writer.points["lamp"][2], 1)
            batch = await poller.poll_once()
        finally:
            await poller.device.close()
    assert (thr, lamp) == (3500, 1.0)
    assert sim.tank_threshold_m == pytest.approx(3.5)
    assert sim.state.commands.alarm_lamp is True
    assert (batch.q == Quality.GOOD).all()
    assert dict(zip(batch.signals, batch.value.tolist(), strict=True)) == {"thr": 3500, "lamp": 1}


@pytest.mark.parametrize(("server", "client"), [("rtu", "tcp"), ("tcp", "rtu")])
async def test_a_framing_mismatch_is_bad_quality_never_wrong_values(
    server: Framer, client: str
) -> None:
    async with PlantSimulator(opcua=False, modbus_framer=server) as sim:
        cfg = config(
            sim.modbus_port or 0,
            client,
            [
                {"table": "input", "points": static_points("input")},
                {"unit": 2, "table": "input", "points": TANK},
            ],
        )
        poller = ModbusService(cast(Runtime, None), cfg)
        try:
            first = await poller.poll_once()
            second = await poller.poll_once()
        finally:
            await poller.device.close()
    for batch in (first, second):
        assert len(batch) == len(poller.signals)
        assert (batch.q == Quality.BAD).all()
        assert np.isnan(batch.value).all()
    assert poller.strings == {}
    assert set(poller.exceptions) == {"timeout"}


def test_framer_option_defaults_to_tcp_and_refuses_others() -> None:
    assert build_parser().parse_args([]).modbus_framer == "tcp"
    assert build_parser().parse_args(["--modbus-framer", "rtu"]).modbus_framer == "rtu"
    assert PlantSimulator(opcua=False).modbus.framer == "tcp"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="framer"):
        ModbusSimServer(framer="ascii")  # type: ignore[arg-type]
