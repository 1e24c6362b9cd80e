"""The OPC UA adapter against the simulator's OPC UA server and a real broker."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np

from edgefleet.sim.opcua_server import node_id
from edgefleet.sim.plant import PlantSimulator
from services.opcua.service import main
from shared.messages import Quality
from shared.topics import Topics
from tests.helpers import Probe, running, until
from tests.opcua.conftest import Served, make_config

SIGNALS: list[dict[str, Any]] = [
    {"name": "flow", "node": node_id("Flow")},
    {"name": "speed", "node": "nsu=urn:edgefleet:sim;s=Pump.Speed"},
    {"name": "suction", "node": node_id("SuctionPressure"), "sampling_ms": 100},
    {"name": "bearing_temp", "node": node_id("BearingTemperature"), "sampling_ms": 500},
]
KEYS = {
    "flow": "flow",
    "speed": "speed",
    "suction": "suction_pressure",
    "bearing_temp": "bearing_temperature",
}


def readings(batches: list[dict[str, Any]]) -> list[tuple[str, int, float, int]]:
    out = []
    for b in batches:
        for t, s, v, q in zip(b["t"], b["sig"], b["value"], b["q"], strict=True):
            out.append((b["signals"][int(s)], int(t), float(v), int(q)))
    return out


def check_good_were_served(rows: list[tuple[str, int, float, int]], served: Served) -> int:
    """Every good reading is a value the simulator served at that source time."""
    n = 0
    for name, t, v, q in rows:
        if q != Quality.GOOD:
            assert math.isnan(v) or q == Quality.UNCERTAIN
            continue
        assert t in served.by_t, f"{name} at {t}: the simulator served nothing at that time"
        assert v == served.by_t[t][KEYS[name]], f"{name} at {t}"
        n += 1
    return n


async def test_values_and_timestamps_are_what_the_server_served(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with PlantSimulator(seed=3, modbus=False) as sim:
        served = Served(sim)
        served.note_now(sim)
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", SIGNALS)
        async with running(main(cfg)):
            await probe.wait_for(topics.raw("opc1"), count=15, timeout=15)
            status = (
                await probe.wait_for(
                    topics.status("opcua-sim"), lambda s: s["health"]["opcua"]["readings"] > 20
                )
            )[-1]
    batches = probe.decoded(topics.raw("opc1"))
    rows = readings(batches)
    assert check_good_were_served(rows, served) >= 40
    assert {r[0] for r in rows} == set(KEYS)
    assert all(q == Quality.GOOD for *_, q in rows)
    assert max(len(b["t"]) for b in batches) >= 2  # gathered per publish, not one per value
    flows = sorted(t for name, t, _, _ in rows if name == "flow")
    assert len(set(np.diff(flows).tolist()) - {100_000_000}) <= 2  # 10 Hz, nothing lost
    assert all(abs(b["received"] - max(b["t"])) < 2e9 for b in batches)
    # each publish says how far the subscription is complete: its PublishTime less the slowest
    # sampling interval (500 ms here), so an unchanged signal does not hold the aligner back
    assert all(abs(b["complete"] - max(b["t"])) < 2e9 for b in batches)
    assert sum(b["complete"] <= b["received"] for b in batches) >= len(batches) - 1
    opcua = status["health"]["opcua"]
    assert opcua["connected"] and opcua["state"] == "connected" and opcua["failed_nodes"] == {}
    # the server's clock against ours: the simulator's source times trail the wall clock a little
    assert abs(status["health"]["clock_skew_ms"]["opc1"]) < 2000


async def test_server_restart_data_resumes_by_itself(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with PlantSimulator(seed=4, modbus=False) as sim:
        assert sim.opcua is not None
        served = Served(sim)
        served.note_now(sim)
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", SIGNALS)
        async with running(main(cfg)):
            await probe.wait_for(topics.raw("opc1"), count=5, timeout=15)
            await sim.opcua.stop()
            await probe.wait_for(topics.raw("opc1"), lambda b: bool((b["q"] == 2).all()))
            await asyncio.sleep(1.0)  # the scenario: the server stays down a while
            n = len(probe.received(topics.raw("opc1")))
            await sim.opcua.start()
            restarted = time.monotonic()  # the server listens again

            # a good batch beyond those seen before the stop (the server served only bad since)
            def good(b: Any) -> bool:
                return bool(b["q"][0] == 0)

            good_before = len([b for b in probe.decoded(topics.raw("opc1")) if good(b)])
            await probe.wait_for(topics.raw("opc1"), good, count=good_before + 1, timeout=10)
            assert len(probe.received(topics.raw("opc1"))) > n
            resumed_s = time.monotonic() - restarted
            status = (
                await probe.wait_for(
                    topics.status("opcua-sim"), lambda s: s["health"]["opcua"]["sessions"] >= 2
                )
            )[-1]
            errors = await probe.wait_for(topics.errors("opcua-sim"))
    print(f"resumed {resumed_s:.2f} s after the restart; reported: {errors[0]['reason']}")
    assert errors[0]["reason"].startswith(f"session to {cfg.endpoint}: ")
    assert resumed_s < 5
    rows = readings(probe.decoded(topics.raw("opc1")))
    check_good_were_served(rows, served)
    assert status["health"]["opcua"]["connected"]


async def test_silent_stall_is_noticed_and_reported(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with PlantSimulator(seed=5, modbus=False) as sim:
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", SIGNALS)
        async with running(main(cfg)):
            await probe.wait_for(topics.raw("opc1"), count=3, timeout=15)
            sim.pause()
            paused = time.monotonic()
            [err] = await probe.wait_for(
                topics.errors("opcua-sim"), lambda e: "stalled" in e["reason"], timeout=10
            )
            noticed_s = time.monotonic() - paused
            await probe.wait_for(topics.raw("opc1"), lambda b: bool((b["q"] == 2).all()))
            await probe.wait_for(
                topics.status("opcua-sim"), lambda s: s["health"]["opcua"]["state"] == "stalled"
            )
            sim.resume()
            n = len(probe.received(topics.raw("opc1")))
            await probe.wait_for(
                topics.status("opcua-sim"),
                lambda s: (
                    s["health"]["opcua"]["state"] == "connected"
                    and s["health"]["opcua"]["stalls"] >= 1
                ),
                timeout=10,
            )
            assert any((b["q"] == 0).any() for b in probe.decoded(topics.raw("opc1"))[n:])
    print(f"stall noticed after {noticed_s:.2f} s: {err['reason']}")
    assert noticed_s < 4


async def test_missing_node_is_reported_and_others_flow(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    signals = [*SIGNALS[:2], {"name": "ghost", "node": "ns=2;s=Pump.NoSuchThing"}]
    async with PlantSimulator(seed=6, modbus=False) as sim:
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", signals)
        async with running(main(cfg)):
            [err] = await probe.wait_for(
                topics.errors("opcua-sim"), lambda e: "ghost" in e["reason"]
            )
            assert "BadNodeIdUnknown" in err["reason"]
            await probe.wait_for(topics.raw("opc1"), lambda b: 0 in b["sig"] and b["q"][0] == 0)
            status = (
                await probe.wait_for(
                    topics.status("opcua-sim"),
                    lambda s: (
                        s["health"]["opcua"]["readings"] > 10
                        and "ghost" in s["health"]["opcua"]["failed_nodes"]
                    ),
                )
            )[-1]
    rows = readings(probe.decoded(topics.raw("opc1")))
    ghost = [r for r in rows if r[0] == "ghost"]
    assert ghost and all(q == Quality.BAD and math.isnan(v) for _, _, v, q in ghost)
    assert any(r[0] == "flow" and r[3] == Quality.GOOD for r in rows)
    assert status["health"]["opcua"]["connected"]


async def test_write_request_is_answered_with_the_read_back(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    reply = f"{site}/reply/test"
    await probe.subscribe(reply)
    await probe.subscribe(topics.status("opcua-sim"))
    signals = [
        SIGNALS[0],
        {"name": "setpoint", "node": node_id("SpeedSetpoint"), "writable": True},
        {"name": "lamp", "node": node_id("AlarmLamp"), "writable": True},
    ]
    async with PlantSimulator(seed=7, modbus=False) as sim:
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", signals)
        async with running(main(cfg)):
            await probe.wait_for(
                topics.status("opcua-sim"), lambda s: s["health"]["opcua"]["connected"]
            )
            for rid, target, value in [
                ("r1", {"signal": "setpoint"}, 2100),
                ("r2", {"node": node_id("AlarmLamp")}, True),
                ("r3", {"signal": "flow"}, 1),
            ]:
                await probe.write_request(topics.cmd("opc1"), rid, target, value, reply)
            answers = await probe.wait_for(reply, count=3)
            await until(  # the simulator takes writes at its next tick
                lambda: (
                    sim.state.commands.speed_setpoint_rpm == 2100 and sim.state.commands.alarm_lamp
                )
            )
        assert sim.state.commands.speed_setpoint_rpm == 2100
        assert sim.state.commands.alarm_lamp is True
    by_id = {a["request_id"]: a for a in answers}
    assert by_id["r1"]["ok"] and by_id["r1"]["readback"] == 2100.0
    assert by_id["r2"]["ok"] and by_id["r2"]["readback"] is True
    assert not by_id["r3"]["ok"] and "flow" in by_id["r3"]["error"]
    assert {m.correlation_data for m in probe.received(reply)} == {b"r1", b"r2", b"r3"}
