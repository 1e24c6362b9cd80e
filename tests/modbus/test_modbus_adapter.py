"""The Modbus adapter against the simulator's Modbus server and a real broker."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from edgefleet.sim import registers as regmap
from edgefleet.sim.plant import PlantSimulator, free_port
from services.modbus.config import ModbusConfig, PointConfig
from services.modbus.decode import encode_value, plan
from services.modbus.service import ModbusService, main
from shared import clock
from shared.clock import ManualClock
from shared.config import validate
from shared.errors import ConfigError, PayloadError
from shared.messages import Quality
from shared.runtime import Runtime
from shared.topics import Topics
from tests.helpers import Probe, running


def static_points(table: str) -> list[dict[str, Any]]:
    out = []
    for p in regmap.static_block(1, table):
        d: dict[str, Any] = {
            "name": p.signal.replace("static.", "s_").replace(".", "_"),
            "address": p.address,
            "scale": p.scale,
            "offset": p.offset,
            "byte_order": p.byte_order,
            "word_order": p.word_order,
        }
        if p.dtype == "string":
            d.update(type="string", length=p.length)
        elif p.dtype == "bits":
            d.update(type="uint16")
        else:
            d.update(type=p.dtype)
        out.append(d)
    return out


def config(
    port: int, blocks: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> ModbusConfig:
    data = {
        "site": "s1",
        "instance": "modbus-sim",
        "source": "plc1",
        "device": {"port": port, "timeout_s": 0.3, "dead_after_s": 0.5},
        "poll_ms": 100,
        "blocks": blocks,
        **(extra or {}),
    }
    return validate(ModbusConfig, data, "test")


@pytest.mark.parametrize("table", ["holding", "input"])
async def test_every_type_and_order_decodes_to_what_the_simulator_served(table: str) -> None:
    async with PlantSimulator(opcua=False) as sim:
        cfg = config(sim.modbus_port or 0, [{"table": table, "points": static_points(table)}])
        assert len(plan(cfg)) == 1  # contiguous: one request
        poller = ModbusService(cast(Runtime, None), cfg)
        batch = await poller.poll_once()
        await poller.device.close()
    got = dict(zip(batch.signals, batch.value.tolist(), strict=True))
    assert (batch.q == Quality.GOOD).all()
    for p in regmap.static_block(1, table):
        name = p.signal.replace("static.", "s_").replace(".", "_")
        if p.dtype == "string":
            assert poller.strings[name] == regmap.STATIC_TEXT
        elif p.dtype == "bits":
            assert got[name] == regmap.STATIC_BITS
        else:
            assert got[name] == pytest.approx(float(cast(float, p.value)), rel=1e-7, abs=1e-6)


def test_modicon_numbers_and_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"blocks\.0.*Modicon.*use 0"):
        config(502, [{"table": "holding", "points": [{"name": "x", "address": 40001}]}])
    with pytest.raises(ConfigError, match=r"blocks\.0\.points\.0\.scael: unknown key"):
        config(502, [{"table": "holding", "points": [{"name": "x", "address": 1, "scael": 2}]}])
    with pytest.raises(ConfigError, match=r"device\.port"):
        config(0, [{"table": "coil", "points": [{"name": "x", "address": 1, "type": "bool"}]}])


def test_requests_respect_protocol_limits() -> None:
    pts = [{"name": f"r{i}", "address": i} for i in range(300)]
    bits = [{"name": f"b{i}", "address": i, "type": "bool"} for i in range(2500)]
    cfg = config(502, [{"table": "input", "points": pts}, {"table": "coil", "points": bits}])
    counts = [(r.table, r.count) for r in plan(cfg)]
    assert counts == [("input", 125), ("input", 125), ("input", 50), ("coil", 2000), ("coil", 500)]


async def test_bad_quality_on_silence_and_exceptions_then_recovery(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with PlantSimulator(opcua=False) as sim:
        assert sim.modbus is not None
        cfg = config(
            sim.modbus_port or 0,
            [
                {
                    "table": "input",
                    "points": [
                        {"name": "flow", "address": 2, "scale": 0.1},
                        {"name": "flow_f32", "address": 10, "type": "float32"},
                    ],
                },
                {"table": "holding", "points": [{"name": "unmapped", "address": 2}]},
            ],
            {**base_config, "site": site},
        )
        async with running(main(cfg)):

            def good(b: dict[str, Any]) -> bool:
                return bool(len(b["q"]) == 3 and b["q"][0] == 0 and b["q"][2] == 2)

            first = (await probe.wait_for(topics.raw("plc1"), good))[0]
            # two requests, possibly a simulator tick apart: equal within the flow noise
            assert first["value"][0] == pytest.approx(first["value"][1], abs=2.5)
            assert np.isnan(first["value"][2])  # illegal data address: bad, never a value
            sim.modbus.mute()
            await probe.wait_for(topics.raw("plc1"), lambda b: bool((b["q"] == 2).all()))
            await probe.wait_for(
                topics.status("modbus-sim"),
                lambda s: s["health"]["modbus"]["device_down"] is True,
            )
            sim.modbus.unmute()
            n = len(probe.received(topics.raw("plc1")))
            good_so_far = sum(1 for b in probe.decoded(topics.raw("plc1")) if good(b))
            await probe.wait_for(topics.raw("plc1"), good, count=good_so_far + 1, timeout=10)
            assert len(probe.received(topics.raw("plc1"))) > n
            *_, status = await probe.wait_for(
                topics.status("modbus-sim"),
                lambda s: (
                    s["health"]["modbus"]["device_down"] is False
                    and "0x02" in s["health"]["modbus"]["errors"]
                ),
            )
            assert status["state"] == "online"


async def test_write_request_is_answered_with_the_read_back(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    reply = f"{site}/reply/test"
    await probe.subscribe(reply)
    async with PlantSimulator(opcua=False) as sim:
        cfg = config(
            sim.modbus_port or 0,
            [
                {
                    "table": "holding",
                    "points": [{"name": "speed_setpoint", "address": 0, "writable": True}],
                },
                {
                    "table": "coil",
                    "points": [
                        {"name": "alarm_lamp", "address": 0, "type": "bool", "writable": True}
                    ],
                },
            ],
            {**base_config, "site": site, "instance": "modbus-w"},
        )
        async with running(main(cfg)):
            await probe.subscribe(topics.status("modbus-w"))
            await probe.wait_for(topics.status("modbus-w"), lambda s: s["state"] == "online")
            for rid, target, value in [
                ("r1", {"point": "speed_setpoint"}, 2100),
                ("r2", {"point": "alarm_lamp"}, True),
                ("r3", {"point": "nope"}, 1),
            ]:
                await probe.write_request(topics.cmd("plc1"), rid, target, value, reply)
            answers = await probe.wait_for(reply, count=3)
        assert sim.state.commands.speed_setpoint_rpm == 2100
        assert sim.state.commands.alarm_lamp is True
    by_id = {a["request_id"]: a for a in answers}
    assert by_id["r1"]["ok"] and by_id["r1"]["readback"] == 2100
    assert by_id["r2"]["ok"] and by_id["r2"]["readback"] == 1.0
    assert not by_id["r3"]["ok"] and "nope" in by_id["r3"]["error"]
    assert {m.correlation_data for m in probe.received(reply)} == {b"r1", b"r2", b"r3"}


def test_a_write_the_register_type_cannot_hold_is_refused_not_clipped() -> None:
    def point(kind: str, scale: float = 1.0) -> PointConfig:
        return PointConfig.model_validate({"name": "p", "address": 0, "type": kind, "scale": scale})

    assert encode_value(point("uint16"), 65535) == [65535]
    assert encode_value(point("int16", 0.01), -12.34) == [(-1234) & 0xFFFF]
    with pytest.raises(PayloadError, match=r"40000 in registers, outside int16 \[-32768, 32767\]"):
        encode_value(point("int16", 0.01), 400)
    with pytest.raises(PayloadError, match="outside uint16"):
        encode_value(point("uint16"), -1)
    with pytest.raises(PayloadError, match="does not fit a float32"):
        encode_value(point("float32"), 1e39)
    with pytest.raises(PayloadError, match="cannot write nan"):
        encode_value(point("float64"), float("nan"))


async def test_a_device_that_refuses_connections_is_retried_after_a_capped_backoff() -> None:
    port = free_port()
    cfg = config(port, [{"table": "input", "points": [{"name": "flow", "address": 2}]}])
    cfg.device.reconnect_s, cfg.device.reconnect_max_s = 0.2, 0.4
    poller = ModbusService(cast(Runtime, None), cfg)
    with clock.use(ManualClock()) as c:
        assert isinstance(c, ManualClock)
        for _ in range(50):  # one simulated second of polls every 20 ms: nothing listens
            batch = await poller.poll_once()
            assert batch.q.tolist() == [Quality.BAD]
            await c.advance(0.02)
        # delays of 0.1-0.2, 0.2, 0.2-0.4, ... s: a handful of tries, not one per poll
        assert 2 <= poller.device.connects <= 8, poller.device.connects
        async with PlantSimulator(opcua=False, modbus_port=port):
            await c.advance(0.4)  # past the longest delay
            batch = await poller.poll_once()
            assert batch.q.tolist() == [Quality.GOOD] and poller.device.backoff.attempts == 0
    await poller.device.close()
