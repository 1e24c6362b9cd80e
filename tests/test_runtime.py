"""The service runtime against a real mosquitto that dies, and services that are killed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.broker import LocalBroker
from services.mqtt_ingest.config import IngestConfig
from services.mqtt_ingest.service import main
from shared import codec
from shared.config import ServiceConfig, SessionConfig, validate
from shared.errors import PayloadError
from shared.mqtt import Received
from shared.runtime import Runtime
from shared.topics import Kind, Topics
from tests.helpers import Probe, running, until


def config(base: dict[str, Any], instance: str = "svc") -> ServiceConfig:
    return validate(ServiceConfig, {**base, "instance": instance}, "test")


async def test_broker_restart_mid_stream(
    broker: LocalBroker, base_config: dict[str, Any], site: str
) -> None:
    topics = Topics(site)
    seen = asyncio.Event()
    rt = Runtime("test", config(base_config))

    async def handle(message: Received) -> None:
        seen.set()

    await rt.subscribe(f"{site}/in/#", handle)
    durable = {"client_id": f"{site}-probe", "clean_start": False, "session_expiry_s": 600}
    async with Probe(broker.host, broker.port, **durable) as probe:
        await probe.subscribe(f"{topics.everything()}")
        await probe.subscribe(f"{site}/out/#")
        server = asyncio.create_task(rt.serve())
        await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "online")

        broker.stop()  # mid-stream: the service keeps publishing into its outage buffer
        await until(lambda: not rt.mqtt.connected)
        for i in range(50):
            assert (await rt.publish(f"{site}/out/x", {"i": i}, qos=1)).queued
        assert not server.done()
        broker.start()

        got = await probe.wait_for(f"{site}/out/#", count=50, timeout=15)
        assert [m["i"] for m in got] == list(range(50))  # drained, in order, nothing lost
        await probe.wait_for(
            topics.status("svc"),
            lambda s: s["state"] == "online" and s["health"]["reconnects"] >= 1,
        )
        await probe.publish(f"{site}/in/a", {"after": "restart"})  # resubscribed by itself
        await asyncio.wait_for(seen.wait(), 10)

        rt.stop.set()
        await asyncio.wait_for(server, 10)
        await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "stopped")


async def test_a_raising_handler_is_reported_and_the_loop_goes_on(
    broker: LocalBroker, base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    topics = Topics(site)
    rt = Runtime("test", config(base_config))
    handled: list[bytes] = []
    fine = asyncio.Event()

    async def handle(message: Received) -> None:
        if message.payload == b"boom":
            raise RuntimeError("kaput")
        if message.payload == b"bad":
            raise PayloadError("expected good, got bad")
        handled.append(message.payload)
        fine.set()

    await rt.subscribe(f"{site}/in/#", handle)
    await probe.subscribe(topics.everything())
    server = asyncio.create_task(rt.serve())
    try:
        await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "online")
        for payload in (b"boom", b"bad", b"fine"):
            await probe.publish_raw(f"{site}/in/x", payload, qos=1)
        [internal] = await probe.wait_for(topics.errors("svc"), lambda e: "kaput" in e["reason"])
        assert internal["topic"] == f"{site}/in/x" and internal["excerpt"] == "boom"
        await probe.wait_for(topics.errors("svc"), lambda e: "got bad" in e["reason"])
        await asyncio.wait_for(fine.wait(), 5)
        assert handled == [b"fine"]
        await probe.wait_for(
            topics.status("svc"),
            lambda s: s["health"]["errors"] == 1 and s["health"]["rejected"] == 1,
        )
    finally:
        rt.stop.set()
        await asyncio.wait_for(server, 10)


def start_ingest(tmp_path: Path, base: dict[str, Any], site: str) -> subprocess.Popen[bytes]:
    cfg = {
        **base,
        "instance": "ingest1",
        "inputs": [
            {"topic": f"{site}-ext/#", "source": "gw", "signals": [{"name": "v", "path": "v"}]}
        ],
    }
    path = tmp_path / "ingest.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "run", "mqtt-ingest", "--config", str(path)],
        stdout=subprocess.DEVNULL,
    )


async def test_killed_service_shows_offline_then_online_and_sigterm_shows_stopped(
    tmp_path: Path, base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    status = Topics(site).status("ingest1")
    await probe.subscribe(status)

    def states() -> list[str]:
        return [s["state"] for s in probe.decoded(status)]

    process = start_ingest(tmp_path, base_config, site)
    try:
        await probe.wait_for(status, lambda s: s["state"] == "online", timeout=20)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        await probe.wait_for(status, lambda s: s["state"] == "offline")  # the last will

        process = start_ingest(tmp_path, base_config, site)
        await probe.wait_for(status, lambda s: s["state"] == "online", count=2, timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        await probe.wait_for(status, lambda s: s["state"] == "stopped")
        assert states()[-1] == "stopped" and "offline" in states()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_broker_killed_mid_stream_the_service_comes_back_by_itself(
    broker: LocalBroker, base_config: dict[str, Any], site: str
) -> None:
    """SIGKILL loses the broker's memory: the service must resubscribe and announce itself."""
    topics = Topics(site)
    cfg = validate(
        IngestConfig,
        {
            **base_config,
            "instance": "ingest1",
            "inputs": [
                {"topic": f"{site}-ext/#", "source": "gw", "signals": [{"name": "v", "path": "v"}]}
            ],
        },
        "test",
    )
    async with running(main(cfg)) as service:
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(topics.everything())
            await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
            await probe.publish(f"{site}-ext/a", {"v": 1}, "json", qos=1)
            await probe.wait_for(topics.raw("gw"))
        broker.kill()
        await asyncio.sleep(0.5)  # the scenario: an outage that outlasts a reconnect attempt
        broker.start()
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(topics.everything())
            await probe.wait_for(
                topics.status("ingest1"),
                lambda s: s["state"] == "online" and s["health"]["reconnects"] >= 1,
                timeout=15,
            )
            await probe.publish(f"{site}-ext/a", {"v": 2}, "json", qos=1)
            # the first batch (QoS 1) is sent again when the kill cut off its PUBACK (at least
            # once, as promised): it may come first; nothing else may
            await probe.wait_for(topics.raw("gw"), lambda r: r["value"].tolist() == [2.0])
            values = [r["value"].tolist() for r in probe.decoded(topics.raw("gw"))]
            assert values in ([[2.0]], [[1.0], [2.0]]), values
        assert not service.done()


async def test_a_stop_right_after_online_still_says_stopped(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    """SIGTERM can come before the connection is marked ready (online's PUBACK pending)."""
    topics = Topics(site)
    await probe.subscribe(topics.status("svc"))
    rt = Runtime("test", config(base_config))

    async def stop_at_once() -> None:  # runs after `online` went out, before the ready flag
        rt.stop.set()
        await asyncio.sleep(0.5)  # still connecting when the stop is handled

    rt.mqtt.on_connect(stop_at_once)
    await asyncio.wait_for(rt.serve(), 10)
    await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "stopped")


async def test_a_loop_that_loses_its_cancel_still_ends_and_says_stopped(
    base_config: dict[str, Any], site: str, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    """Python 3.11's `asyncio.wait_for` returns the answer when the stop's cancel lands as it
    comes (a Modbus poll loop's read did): the loop goes on polling, and one cancel alone left
    the service running for ever after its SIGTERM."""
    topics = Topics(site)
    await probe.subscribe(topics.status("svc"))
    rt = Runtime("test", config(base_config))
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    rounds_after_stop = 0

    async def poll_loop() -> None:
        nonlocal answer, rounds_after_stop
        while True:
            await asyncio.wait_for(answer, 30)  # a device's read, as pymodbus waits for it
            answer = asyncio.get_running_loop().create_future()
            rounds_after_stop += rt.stop.is_set()

    async def answer_comes() -> None:  # the runtime cancels the loops right after its hooks
        answer.set_result(1)

    rt.on_stop(answer_comes)
    server = asyncio.create_task(rt.serve({"poll_loop": poll_loop}))
    await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "online")
    rt.stop.set()
    await asyncio.wait_for(server, 10)
    await probe.wait_for(topics.status("svc"), lambda s: s["state"] == "stopped")
    if sys.version_info < (3, 12):  # 3.12's wait_for keeps the cancel
        assert rounds_after_stop == 1  # the first cancel was lost, as in the poll loop
        assert "poll_loop still runs" in caplog.text


async def test_a_session_service_gets_what_came_while_it_was_away(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    """The aligner, inference and the forwarder (`SessionConfig`) keep a persistent session: QoS
    1 input published while the instance is down (a restart, a broker it has not reconnected
    to yet) waits for it; a clean session (a plain ServiceConfig) loses it. The broker-kill
    fault scenario lost ~3 samples per kill before the data-path consumers kept sessions."""
    topics = Topics(site)
    await probe.subscribe(topics.all_of(Kind.STATUS))
    session = validate(SessionConfig, {**base_config, "instance": "with-session"}, "test")
    got: dict[str, list[Any]] = {}
    for cfg in (session, config(base_config, "clean")):
        name, topic, status = cfg.instance, f"{site}/in/{cfg.instance}", topics.status(cfg.instance)
        got[name] = []
        for run in range(2):
            rt = Runtime("test", cfg)

            async def handle(message: Received, name: str = name) -> None:
                got[name].append(codec.decode(message.payload, message.content_type)["i"])

            await rt.subscribe(topic, handle)
            serving = asyncio.create_task(rt.serve(handle_signals=False))
            seen = len(probe.decoded(status))
            await probe.wait_for(status, lambda s: s["state"] == "online", count=seen + 1)
            if run == 1:  # back: a marker published now arrives after what waited, if anything
                await probe.publish(topic, {"i": "marker"}, qos=1)
                await until(lambda: "marker" in got[name])  # noqa: B023 (awaited here)
            rt.stop.set()
            await asyncio.wait_for(serving, 10)
            if run == 0:  # the instance is gone: only a session holds these for it
                for i in range(3):
                    await probe.publish(topic, {"i": i}, qos=1)
    assert got == {"with-session": [0, 1, 2, "marker"], "clean": ["marker"]}
