"""The vibration waveform reaches a real broker in batches of 100 samples."""

from __future__ import annotations

from edgefleet.broker import LocalBroker
from edgefleet.sim.plant import PlantSimulator
from edgefleet.sim.vibration import VibrationPublisher, parse_host_port
from tests.helpers import Probe


def test_parse_host_port() -> None:
    assert parse_host_port("broker:1884") == ("broker", 1884)
    assert parse_host_port("broker") == ("broker", 1883)


async def test_waveform_batches(broker: LocalBroker, probe: Probe, site: str) -> None:
    topic = f"{site}/vib/pump1"
    await probe.subscribe(topic)
    async with PlantSimulator(seed=1, modbus=False, opcua=False) as sim:
        vib = VibrationPublisher(sim, broker.host, broker.port, topic)
        await vib.start()
        try:
            msgs = await probe.wait_for(topic, count=3, timeout=10)
        finally:
            await vib.stop()
    first, second = msgs[0], msgs[1]
    assert first["dt_us"] == 1000 and len(first["x"]) == 100
    assert second["ts"] - first["ts"] == 100
    assert (first["ts"] * 1_000_000 - sim.start_ns) % 100_000_000 == 0
