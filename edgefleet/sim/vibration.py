"""The 1 kHz vibration waveform, published over MQTT the way an accelerometer gateway would.

Every tick (100 ms) one JSON message on a configurable topic (a foreign system's topic, not an
`ef/` one): {"ts": <ms epoch of the first sample>, "dt_us": 1000, "x": [100 floats, mm/s]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from edgefleet.sim.plant import PlantSimulator
from edgefleet.sim.pump import TICK_S
from shared import codec
from shared.mqtt import BrokerSettings, MqttConnection

log = logging.getLogger(__name__)
RATE_HZ = 1000.0


def parse_host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    return host or "127.0.0.1", int(port) if port else default_port


class VibrationPublisher:
    """Publishes a waveform batch per simulator tick; its connection reconnects by itself."""

    def __init__(self, sim: PlantSimulator, host: str, port: int, topic: str) -> None:
        self.sim, self.topic = sim, topic
        self.connection = MqttConnection(
            BrokerSettings(host=host, port=port, client_id=f"edgefleet-sim-vib-{port}")
        )
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    def message(self) -> dict[str, Any]:
        state = self.sim.state
        n = round(RATE_HZ * TICK_S)
        x = self.sim.model.vibration_waveform(state, n, RATE_HZ)
        return {
            "ts": self.sim.time_ns(state.t) // 1_000_000,
            "dt_us": round(1e6 / RATE_HZ),
            "x": [round(float(v), 4) for v in x],
        }

    async def on_tick(self, _sim: PlantSimulator, _values: dict[str, float]) -> None:
        if not self.connection.connected:
            return  # a gateway does not buffer a live waveform while the broker is away
        payload, content_type = codec.encode(self.message(), "json")
        result = await self.connection.publish(self.topic, payload, content_type=content_type)
        if result.ok:
            self.published += 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self.connection.run(), name="vib_mqtt_loop")
        self.sim.tick_hooks.append(self.on_tick)

    async def stop(self) -> None:
        if self.on_tick in self.sim.tick_hooks:
            self.sim.tick_hooks.remove(self.on_tick)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
