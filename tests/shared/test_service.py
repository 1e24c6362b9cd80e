"""The service skeleton (shared/service.py), the error channel and the typed health, against a
real mosquitto where a broker is involved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgefleet.registry import SERVICES, service_spec
from shared.config import ServiceConfig, SessionConfig, validate
from shared.error_channel import RateLimit
from shared.errors import PayloadError
from shared.health import HealthModel, InferenceHealth, health_of
from shared.messages import Status
from shared.mqtt import Received
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


@pytest.mark.parametrize("outcome", ["returns", "rejects", "fails"])
async def test_manual_ack_acks_what_a_handler_does_not_ack_itself(
    base_config: dict[str, Any], site: str, probe: Probe, outcome: str
) -> None:
    """With manual acks, a message of a handler that does not ack itself is acknowledged once it
    ran, however it ended: it is not delivered again on the next reconnect of the session; a
    handler subscribed with `acks=True` that did not ack gets its message again."""
    topics = Topics(site)
    plain, own = topics.debug_session("s1"), topics.results("f")  # published non-retained
    config = validate(SessionConfig, {**base_config, "instance": "acker"}, "test")
    seen: list[tuple[str, bytes]] = []
    changed = asyncio.Condition()

    async def note(message: Received) -> None:
        async with changed:
            seen.append((message.topic, message.payload))
            changed.notify_all()

    async def handle(message: Received) -> None:
        await note(message)
        if outcome == "rejects":
            raise PayloadError("not a session request")
        if outcome == "fails":
            raise RuntimeError("handler bug")

    async def until_seen(wanted: tuple[str, bytes], times: int = 1) -> None:
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: seen.count(wanted) >= times), 10)

    async def session() -> tuple[Runtime, asyncio.Task[None]]:
        rt = Runtime("acker", config, manual_ack=True)
        await rt.subscribe(topics.debug_sessions(), handle)
        await rt.subscribe(own, note, acks=True)  # never acks: held for the session
        task = asyncio.create_task(rt.serve(handle_signals=False))
        await asyncio.wait_for(rt.mqtt.wait_connected(), 10)
        return rt, task

    rt, task = await session()
    assert (await probe.connection.publish(plain, b"job", qos=1)).ok
    assert (await probe.connection.publish(own, b"result", qos=1)).ok
    # `_dispatch` acks right after the handler returns, before it awaits anything: once the
    # handler noted both, the PUBACK is written ahead of the DISCONNECT the stop sends
    await until_seen((plain, b"job"))
    await until_seen((own, b"result"))
    rt.stop.set()
    await asyncio.wait_for(task, 10)

    rt, task = await session()  # the same client id: the broker resumes the session
    # the broker resends what is in flight for a resumed session before any new message: once
    # the marker arrived, a redelivery of the job would have arrived too
    assert (await probe.connection.publish(plain, b"marker", qos=1)).ok
    await until_seen((plain, b"marker"))
    await until_seen((own, b"result"), times=2)  # not acked by its handler: delivered again
    rt.stop.set()
    await asyncio.wait_for(task, 10)
    assert seen.count((plain, b"job")) == 1


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
