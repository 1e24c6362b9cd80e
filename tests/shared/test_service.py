"""The service skeleton (shared/service.py), the error channel and the typed health, against a
real mosquitto where a broker is involved."""

from __future__ import annotations

import asyncio
from typing import Any

from edgefleet.registry import SERVICES, service_spec
from shared.config import ServiceConfig, validate
from shared.error_channel import RateLimit
from shared.health import HealthModel, InferenceHealth, health_of
from shared.messages import Status
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.topics import Topics
from tests.helpers import Probe


class TickHealth(HealthModel):
    ticks: int


class Ticker(Service[ServiceConfig]):
    health_section = "ticker"

    def __init__(self, rt: Runtime, config: ServiceConfig) -> None:
        super().__init__(rt, config)
        self.ticks = 0
        self.names: list[str] = []
        self.ticked = asyncio.Event()
        self.closed = False

    async def start(self) -> None:
        self.rt.reject("rejected before the connection runs")  # sent once serving

    def loops(self) -> dict[str, Loop]:
        return {"tick_loop": self.tick_loop, "second_loop": self.tick_loop}

    async def tick_loop(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.names.append(task.get_name())
        self.ticks += 1
        if self.ticks == 2:
            self.ticked.set()
        await asyncio.Event().wait()  # runs until cancelled

    def health(self) -> TickHealth:
        return TickHealth(ticks=self.ticks)

    async def close(self) -> None:
        self.closed = True


async def test_run_names_the_loops_reports_health_and_closes(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    topics = Topics(site)
    config = validate(ServiceConfig, {**base_config, "instance": "ticker"}, "test")
    await probe.subscribe(topics.everything())
    built: list[Ticker] = []

    def build(rt: Runtime) -> Ticker:
        built.append(Ticker(rt, config))
        return built[0]

    task = asyncio.create_task(run("ticker", config, build))
    [report] = await probe.wait_for(topics.errors("ticker"))
    assert report["reason"] == "rejected before the connection runs"
    ticker = built[0]
    await asyncio.wait_for(ticker.ticked.wait(), 10)
    assert sorted(ticker.names) == ["second_loop", "tick_loop"]  # named, not patched
    ticker.rt.announce_soon()
    [status] = await probe.wait_for(
        topics.status("ticker"), lambda s: s["health"].get("ticker", {}).get("ticks") == 2
    )
    health = health_of(Status.from_wire(status))
    assert health.rejected == 1
    section = health.section("ticker", TickHealth)
    assert section is not None and section.ticks == 2
    ticker.rt.stop.set()
    await asyncio.wait_for(task, 10)
    assert ticker.closed
    await probe.wait_for(topics.status("ticker"), lambda s: s["state"] == "stopped")


def test_rate_limit_passes_the_first_then_one_per_interval_with_the_count() -> None:
    now = [0.0]
    limit: RateLimit[str] = RateLimit(5.0, clock=lambda: now[0])
    assert limit.hit("a") == 1  # the first at once
    assert limit.hit("a") == 0 and limit.hit("a") == 0  # held back, counted
    assert limit.hit("b") == 1  # another kind is not held back by the first
    assert limit.due() == []
    now[0] = 5.0
    assert limit.due() == [("a", 2)]  # what was held back, with its count
    assert limit.hit("a") == 0
    limit.forget(lambda key: key == "a")
    assert limit.hit("a") == 1  # forgotten: passes at once


def test_inference_health_is_read_leniently_from_a_status() -> None:
    def status(health: dict[str, Any]) -> Status:
        return Status(instance="inference-f", service="inference", state="online", health=health)

    good = status({"received": 3, "inference": {"model": {"sha256": "ab" * 32}, "new_key": 1}})
    inference = InferenceHealth.of(good)
    assert inference is not None and inference.model.sha256 == "ab" * 32
    assert InferenceHealth.of(status({"received": 3})) is None
    assert InferenceHealth.of(status({"inference": {"model": "not a mapping"}})) is None
    assert health_of(status({"received": "many"})).received == 0  # does not fit: empty


def test_every_registered_service_has_its_spec() -> None:
    for name in SERVICES:
        spec = service_spec(name)
        assert isinstance(spec, ServiceSpec) and spec.name == name
        assert issubclass(spec.config, ServiceConfig)
